/* generate_moe: generates tokens from a MoE checkpoint of MODEL.md with
 * cudann alone.
 *
 *   generate_moe --model DIR --prompt "ids..." --max-new N [--temperature T]
 *                [--top-k K] [--top-p P] [--seed S] [--logits FILE]
 *                [--dtype f32|bf16|f16] [--batch B]
 *
 * One forward pass over the prompt fills each layer's KV cache; then every new
 * token is one decoding step against the cache. Temperature 0 (the default)
 * is greedy. --dtype is the type the weights are held and read in (the
 * checkpoint's tensors, F32, F16 or BF16, are converted on load);
 * activations, the KV cache and the logits stay float32. Prints the prompt and the generated ids on one line; --logits
 * writes each step's logits row (float32, little-endian) for checking.
 * --batch B decodes B copies of the prompt together (a throughput measure:
 * each row draws the same tokens; row 0 is printed). The decoding speed goes
 * to stderr. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe_model.h"

const char *program_name = "generate_moe";

typedef struct {
    const char *model, *prompt, *logits;
    int max_new, top_k, dtype, batch;
    float temperature, top_p;
    unsigned long long seed;
} Args;

static int parse_dtype(const char *text) {
    if (!strcmp(text, "f32")) return CUDANN_F32;
    if (!strcmp(text, "bf16")) return CUDANN_BF16;
    if (!strcmp(text, "f16")) return CUDANN_F16;
    die("--dtype must be f32, bf16 or f16 (got '%s')", text);
    return -1;
}

static Args parse(int argc, char **argv) {
    Args a = {.max_new = -1, .top_k = 0, .temperature = 0.0f, .top_p = 1.0f, .seed = 0, .dtype = CUDANN_F32, .batch = 1};
    for (int i = 1; i < argc; i += 2) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value) die("%s needs a value", flag);
        if (!strcmp(flag, "--model")) a.model = value;
        else if (!strcmp(flag, "--prompt")) a.prompt = value;
        else if (!strcmp(flag, "--logits")) a.logits = value;
        else if (!strcmp(flag, "--max-new")) a.max_new = (int)parse_number(flag, value);
        else if (!strcmp(flag, "--temperature")) a.temperature = (float)parse_number(flag, value);
        else if (!strcmp(flag, "--top-k")) a.top_k = (int)parse_number(flag, value);
        else if (!strcmp(flag, "--top-p")) a.top_p = (float)parse_number(flag, value);
        else if (!strcmp(flag, "--seed")) a.seed = (unsigned long long)parse_number(flag, value);
        else if (!strcmp(flag, "--dtype")) a.dtype = parse_dtype(value);
        else if (!strcmp(flag, "--batch")) a.batch = (int)parse_number(flag, value);
        else die("unknown option '%s'", flag);
    }
    if (!a.model || !a.prompt || a.max_new < 0)
        die("usage: generate_moe --model DIR --prompt \"ids...\" --max-new N [--temperature T] [--top-k K] [--top-p P] [--seed S] [--logits FILE] [--dtype f32|bf16|f16]");
    if (a.temperature < 0) die("--temperature must be >= 0");
    if (a.batch < 1 || a.batch > 4096) die("--batch must be in [1, 4096]");
    if (a.top_k < 0) die("--top-k must be >= 1");
    if (!(a.top_p > 0 && a.top_p <= 1)) die("--top-p must be in (0, 1]");
    if (a.top_k > 0 && a.top_p < 1) die("choose one of --top-k and --top-p");
    return a;
}

/* The prompt's ids, each in [0, vocab). */
static int32_t *parse_prompt(const char *text, int vocab, int *count) {
    int32_t *ids = xcalloc(strlen(text) / 2 + 1, sizeof(int32_t));
    int n = 0;
    for (const char *p = text;;) {
        while (*p == ' ' || *p == ',' || *p == '\t') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long id = strtol(p, &end, 10);
        if (end == p || errno) die("--prompt: '%s' is not a list of token ids", text);
        if (id < 0 || id >= vocab) die("--prompt: token %ld is outside the vocabulary [0, %d)", id, vocab);
        ids[n++] = (int32_t)id;
        p = end;
    }
    if (n == 0) die("--prompt holds no token ids");
    *count = n;
    return ids;
}

/* The next token of each of `rows` logits rows into `tokens`, with the seeds
 * `seeds` (all library memory, so the sampler reads and writes where logits
 * live). */
static void choose(const Args *a, const float *logits, int rows, int vocab, int32_t *tokens, const uint64_t *seeds) {
    if (a->temperature == 0.0f) CHECK(cuda_argmax(logits, tokens, rows, vocab, NULL));
    else if (a->top_k > 0) CHECK(cuda_topk_sample(logits, tokens, seeds, rows, vocab, a->top_k, a->temperature, NULL));
    else if (a->top_p < 1.0f) CHECK(cuda_topp_sample(logits, tokens, seeds, rows, vocab, a->top_p, a->temperature, NULL));
    else CHECK(cuda_sample(logits, tokens, seeds, rows, vocab, a->temperature, NULL));
}

/* Runs `count` tokens of each of `batch` rows at positions pos0.. through
 * every layer (each writing its cache), then the head on each row's last
 * one: logits [batch, vocab]. */
static void forward(const Model *m, const int32_t *ids, int batch, int count, int pos0, LayerActs *acts, float *x_next, KvCache *caches, float *xf,
                    float *logits) {
    const Config *c = &m->c;
    int64_t tokens = (int64_t)batch * count;
    /* The rows in the weights' type (into acts->a, free until the first
     * layer's norm), widened into the residual stream. */
    CHECK(cudann_embedding(ids, weight(m, m->embed), acts->a, tokens, c->vocab, c->hidden, m->dtype, NULL));
    CHECK(cudann_convert(acts->a, m->dtype, acts->x_in, CUDANN_F32, tokens * c->hidden, NULL));
    for (int l = 0; l < c->layers; l++) {
        layer_forward(m, l, acts, x_next, batch, count, pos0, &caches[l]);
        float *swap = acts->x_in; /* this layer's output is the next one's input */
        acts->x_in = x_next;
        x_next = swap;
    }
    if (count == 1) {
        head_forward(m, acts->x_in, xf, logits, batch);
        return;
    }
    for (int b = 0; b < batch; b++)
        head_forward(m, acts->x_in + ((size_t)b * count + count - 1) * c->hidden, xf + (size_t)b * c->hidden, logits + (size_t)b * c->vocab, 1);
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    Args args = parse(argc, argv);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", args.model);
    Config c = config_load(path);
    Model m = model_layout(c, args.dtype);
    snprintf(path, sizeof path, "%s/model.safetensors", args.model);
    model_load(&m, path);
    model_rope(&m);
    int n_prompt;
    int32_t *prompt = parse_prompt(args.prompt, c.vocab, &n_prompt);
    if (n_prompt + args.max_new > c.max_seq) die("prompt (%d) + --max-new (%d) exceeds max_seq_len (%d)", n_prompt, args.max_new, c.max_seq);

    FILE *dump = args.logits ? fopen(args.logits, "wb") : NULL;
    if (args.logits && !dump) die("cannot write %s", args.logits);
    /* The caches, activations and logits live in library memory (the GPU's,
     * when there is one): only token ids, seeds (and dumped logits) cross. */
    size_t B = (size_t)args.batch, kv = B * (size_t)c.max_seq * (size_t)(c.kv_heads * c.head_dim);
    KvCache *caches = xcalloc((size_t)c.layers, sizeof(KvCache));
    for (int l = 0; l < c.layers; l++) caches[l] = (KvCache){dalloc(kv, 4), dalloc(kv, 4)};
    LayerActs acts = acts_alloc(&c, args.batch * n_prompt);
    float *x_next = dalloc(B * n_prompt * c.hidden, 4), *xf = dalloc(B * c.hidden, 4), *logits = dalloc(B * c.vocab, 4);
    float *host_logits = dump ? xcalloc((size_t)c.vocab, 4) : NULL;
    int32_t *ids = dalloc(B * n_prompt, 4), *host_ids = xcalloc(B * n_prompt, 4);
    uint64_t *seeds = dalloc(B, sizeof(uint64_t)), *host_seeds = xcalloc(B, sizeof(uint64_t));
    for (size_t b = 0; b < B; b++) memcpy(host_ids + b * n_prompt, prompt, (size_t)n_prompt * 4);
    copy_bytes(ids, host_ids, B * n_prompt * 4);

    for (int i = 0; i < n_prompt; i++) printf("%s%d", i ? " " : "", prompt[i]);
    forward(&m, ids, args.batch, n_prompt, 0, &acts, x_next, caches, xf, logits);
    double start = 0;
    for (int step = 0; step < args.max_new; step++) {
        if (dump) {
            copy_bytes(host_logits, logits, (size_t)c.vocab * 4);
            if (fwrite(host_logits, 4, (size_t)c.vocab, dump) != (size_t)c.vocab) die("cannot write %s", args.logits);
        }
        for (size_t b = 0; b < B; b++) host_seeds[b] = args.seed + (uint64_t)step;
        copy_bytes(seeds, host_seeds, B * sizeof(uint64_t));
        choose(&args, logits, args.batch, c.vocab, ids, seeds);
        int32_t token;
        copy_bytes(&token, ids, sizeof token);
        printf(" %d", token);
        fflush(stdout);
        if (step == 0) start = seconds(); /* the prompt's pass is done: its token is here */
        if (step + 1 < args.max_new) forward(&m, ids, args.batch, 1, n_prompt + step, &acts, x_next, caches, xf, logits);
    }
    printf("\n");
    if (args.max_new > 1) {
        double ms = 1e3 * (seconds() - start);
        fprintf(stderr, "generate_moe: %d decoding steps x %d rows in %.1f ms: %.0f tokens/s\n", args.max_new - 1, args.batch, ms,
                1e3 * (args.max_new - 1) * args.batch / ms);
    }
    if (dump && fclose(dump)) die("cannot write %s", args.logits);
    return 0;
}
