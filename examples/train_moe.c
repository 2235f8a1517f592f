/* train_moe: trains the MoE transformer of MODEL.md with cudann alone.
 *
 *   train_moe (--model DIR | --config config.json --seed N) --data tokens.bin
 *             --batch B --seq S --steps N --lr LR
 *             [--beta1 0.9] [--beta2 0.95] [--eps 1e-8] [--weight-decay 0.0]
 *             [--clip 1.0] [--log FILE] [--grads FILE] [--save DIR]
 *             [--ranks N --rank R --nccl-id FILE]
 *
 * Each step: forward (keeping every layer's activations), the gradients of
 * loss = cross-entropy + the layers' aux losses with respect to every tensor,
 * global gradient clipping, AdamW. All arithmetic is cudann calls.
 *
 * Data parallel (--ranks N, one process per GPU): rank R takes sequences
 * R*B/N .. (R+1)*B/N - 1 of each step's batch of B; the ranks average their
 * gradients (one all-reduce over the gradient buffer, before clipping) and
 * their routing statistics (so the aux loss is the whole batch's), so every
 * rank takes the step one process would take on the whole batch. Rank 0 writes
 * the communicator id to --nccl-id FILE (which must not exist yet); the others
 * wait for it. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "moe_model.h"

const char *program_name = "train_moe";

typedef struct {
    const char *model, *config, *data, *log, *grads, *save, *nccl_id;
    long long seed;
    int batch, seq, steps, has_seed, ranks, rank;
    float lr, beta1, beta2, eps, weight_decay, clip;
} Args;

static void usage(void) {
    die("usage: train_moe (--model DIR | --config config.json --seed N) --data tokens.bin --batch B --seq S --steps N --lr LR "
        "[--beta1 0.9] [--beta2 0.95] [--eps 1e-8] [--weight-decay 0.0] [--clip 1.0] [--log FILE] [--grads FILE] [--save DIR] "
        "[--ranks N --rank R --nccl-id FILE]");
}

static int positive(const char *flag, const char *text) {
    double v = parse_number(flag, text);
    if (v != floor(v) || v < 1 || v > 1 << 30) die("%s must be a positive integer (got '%s')", flag, text);
    return (int)v;
}

static Args parse(int argc, char **argv) {
    Args a = {.seed = 0, .ranks = 1, .rank = 0, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.0f, .clip = 1.0f, .lr = NAN};
    for (int i = 1; i < argc; i += 2) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value) die("%s needs a value", flag);
        if (!strcmp(flag, "--model")) a.model = value;
        else if (!strcmp(flag, "--config")) a.config = value;
        else if (!strcmp(flag, "--seed")) a.seed = (long long)parse_number(flag, value), a.has_seed = 1;
        else if (!strcmp(flag, "--data")) a.data = value;
        else if (!strcmp(flag, "--batch")) a.batch = positive(flag, value);
        else if (!strcmp(flag, "--seq")) a.seq = positive(flag, value);
        else if (!strcmp(flag, "--steps")) a.steps = positive(flag, value);
        else if (!strcmp(flag, "--lr")) a.lr = (float)parse_number(flag, value);
        else if (!strcmp(flag, "--beta1")) a.beta1 = (float)parse_number(flag, value);
        else if (!strcmp(flag, "--beta2")) a.beta2 = (float)parse_number(flag, value);
        else if (!strcmp(flag, "--eps")) a.eps = (float)parse_number(flag, value);
        else if (!strcmp(flag, "--weight-decay")) a.weight_decay = (float)parse_number(flag, value);
        else if (!strcmp(flag, "--clip")) a.clip = (float)parse_number(flag, value);
        else if (!strcmp(flag, "--log")) a.log = value;
        else if (!strcmp(flag, "--grads")) a.grads = value;
        else if (!strcmp(flag, "--save")) a.save = value;
        else if (!strcmp(flag, "--ranks")) a.ranks = positive(flag, value);
        else if (!strcmp(flag, "--rank")) a.rank = (int)parse_number(flag, value);
        else if (!strcmp(flag, "--nccl-id")) a.nccl_id = value;
        else die("unknown option '%s'", flag);
    }
    if (!a.model == !(a.config && a.has_seed) || (a.model && (a.config || a.has_seed))) usage();
    if (!a.data || !a.batch || !a.seq || !a.steps || isnan(a.lr)) usage();
    if (!(a.clip > 0)) die("--clip must be > 0");
    if (a.rank < 0 || a.rank >= a.ranks) die("--rank must be in [0, --ranks = %d) (got %d)", a.ranks, a.rank);
    if (a.batch % a.ranks) die("--batch %d must be a multiple of --ranks %d (each rank takes an equal share)", a.batch, a.ranks);
    if (a.ranks > 1 && !a.nccl_id) die("--ranks %d needs --nccl-id FILE (rank 0 writes the communicator id there)", a.ranks);
    return a;
}

/* The token file: little-endian int32 ids, each checked against the vocabulary. */
static int32_t *load_tokens(const char *path, int vocab, int64_t *count) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open %s", path);
    if (fseek(f, 0, SEEK_END) != 0) die("cannot read %s", path);
    long bytes = ftell(f);
    rewind(f);
    if (bytes < 0 || bytes % 4) die("%s is not a file of int32 token ids (%ld bytes)", path, bytes);
    int32_t *tokens = xcalloc((size_t)bytes / 4, sizeof(int32_t));
    if (fread(tokens, 1, (size_t)bytes, f) != (size_t)bytes) die("cannot read %s", path);
    fclose(f);
    *count = bytes / 4;
    for (int64_t i = 0; i < *count; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab) die("%s: token %d at position %lld is outside the vocabulary [0, %d)", path, tokens[i], (long long)i, vocab);
    return tokens;
}

/* Gradient buffers of the backward pass, for T tokens. */
typedef struct {
    float *d_x, *d_prev, *d_x_mid, *tmp, *d_y, *d_w, *d_h, *d_gate, *d_up, *d_xs, *d_m;
    float *d_router, *d_probs, *d_router_aux, *d_o, *d_q, *d_k, *d_v, *d_a;
} Grads;

static Grads grads_alloc(const Config *c, int tokens) {
    size_t T = (size_t)tokens, D = (size_t)c->hidden, E = (size_t)c->experts, K = (size_t)c->top_k, F = (size_t)c->ffn;
    size_t q_dim = (size_t)c->heads * (size_t)c->head_dim, kv_dim = (size_t)c->kv_heads * (size_t)c->head_dim;
    Grads g = {
        .d_x = dalloc(T * D, 4), .d_prev = dalloc(T * D, 4), .d_x_mid = dalloc(T * D, 4), .tmp = dalloc(T * D, 4),
        .d_y = dalloc(T * K * D, 4), .d_w = dalloc(T * K, 4), .d_h = dalloc(T * K * F, 4), .d_gate = dalloc(T * K * F, 4),
        .d_up = dalloc(T * K * F, 4), .d_xs = dalloc(T * K * D, 4), .d_m = dalloc(T * D, 4), .d_router = dalloc(T * E, 4),
        .d_probs = dalloc(T * E, 4), .d_router_aux = dalloc(T * E, 4), .d_o = dalloc(T * q_dim, 4), .d_q = dalloc(T * q_dim, 4),
        .d_k = dalloc(T * kv_dim, 4), .d_v = dalloc(T * kv_dim, 4), .d_a = dalloc(T * D, 4),
    };
    return g;
}

/* The gradients of one layer: from g->d_x (w.r.t. its output) to g->d_prev
 * (w.r.t. its input), the weight gradients into `grad` (a flat buffer laid out
 * like the parameters, zeroed before the step). */
static void layer_backward(const Model *m, int l, const LayerActs *a, Grads *g, float *grad, int batch, int seq) {
    const Config *c = &m->c;
    const LayerTensors *L = &m->layer[l];
    float *P = m->params;
    int T = batch * seq, D = c->hidden, H = c->heads, G = c->kv_heads, h = c->head_dim, E = c->experts, K = c->top_k, F = c->ffn;
    int QD = H * h, KD = G * h;

    /* Experts, in reverse: combine, down, SwiGLU, gate and up, dispatch. */
    CHECK(cudann_moe_combine_backward(g->d_x, a->y, a->weights, a->order, g->d_y, g->d_w, T, D, K, NULL));
    /* Per-expert products over each expert's rows (a->offsets, in library
     * memory): weight gradients k-grouped, an expert with no rows getting 0. */
    int TK = T * K;
    int64_t s_down = expert_stride(m, L->down), s_gate = expert_stride(m, L->gate), s_up = expert_stride(m, L->up);
    matmul_experts(1, 0, 1, D, F, TK, g->d_y, D, 0, a->h, F, 0, 0.0f, tensor_in(m, grad, L->down[0]), F, s_down, a->offsets, E);
    matmul_experts(0, 0, 0, TK, F, D, g->d_y, D, 0, tensor_in(m, P, L->down[0]), F, s_down, 0.0f, g->d_h, F, 0, a->offsets, E);
    CHECK(cudann_swiglu_backward(g->d_h, a->gate, a->up, g->d_gate, g->d_up, (int64_t)TK * F, NULL));
    matmul_experts(1, 0, 1, F, D, TK, g->d_gate, F, 0, a->xs, D, 0, 0.0f, tensor_in(m, grad, L->gate[0]), D, s_gate, a->offsets, E);
    matmul_experts(1, 0, 1, F, D, TK, g->d_up, F, 0, a->xs, D, 0, 0.0f, tensor_in(m, grad, L->up[0]), D, s_up, a->offsets, E);
    matmul_experts(0, 0, 0, TK, D, F, g->d_gate, F, 0, tensor_in(m, P, L->gate[0]), D, s_gate, 0.0f, g->d_xs, D, 0, a->offsets, E);
    matmul_experts(0, 0, 0, TK, D, F, g->d_up, F, 0, tensor_in(m, P, L->up[0]), D, s_up, 1.0f, g->d_xs, D, 0, a->offsets, E);
    CHECK(cudann_moe_dispatch_backward(g->d_xs, a->order, g->d_m, T, D, K, NULL));

    /* Router: through the renormalised top-k weights, and through the
     * probabilities' means in the aux loss (f_counts constant). */
    CHECK(cudann_moe_router_backward(a->weights, a->experts, g->d_w, g->d_router, T, E, K, NULL));
    CHECK(cudann_aux_loss_backward(a->f_counts, g->d_probs, T, E, c->aux_alpha, 1.0f, NULL));
    CHECK(cudann_softmax_backward(g->d_probs, a->probs, g->d_router_aux, T, E, NULL));
    CHECK(cuda_add(g->d_router, g->d_router_aux, g->d_router, (int64_t)T * E, NULL));
    matmul(1, 0, E, D, T, g->d_router, E, a->m, D, 0.0f, tensor_in(m, grad, L->router), D);
    matmul(0, 0, T, D, E, g->d_router, E, tensor_in(m, P, L->router), D, 1.0f, g->d_m, D);

    /* FFN norm and the residual around the MoE block. */
    CHECK(cudann_rmsnorm_backward(g->d_m, a->x_mid, tensor_in(m, P, L->ffn_norm), g->tmp, tensor_in(m, grad, L->ffn_norm), T, D, c->rms_eps, NULL));
    CHECK(cuda_add(g->d_x, g->tmp, g->d_x_mid, (int64_t)T * D, NULL));

    /* Attention: output projection, attention, RoPE, q/k/v projections. */
    matmul(1, 0, D, QD, T, g->d_x_mid, D, a->o, QD, 0.0f, tensor_in(m, grad, L->wo), QD);
    matmul(0, 0, T, QD, D, g->d_x_mid, D, tensor_in(m, P, L->wo), QD, 0.0f, g->d_o, QD);
    CHECK(cudann_attention_backward(g->d_o, a->q, a->k, a->v, NULL, a->o, a->lse, g->d_q, g->d_k, g->d_v, batch, seq, seq, H, G, h, 0, 1,
                                    1.0f / sqrtf((float)h), NULL));
    CHECK(cudann_rope_backward(g->d_q, g->d_k, m->freqs, g->d_q, g->d_k, batch, seq, H, G, h, 0, NULL));
    matmul(1, 0, QD, D, T, g->d_q, QD, a->a, D, 0.0f, tensor_in(m, grad, L->wq), D);
    matmul(1, 0, KD, D, T, g->d_k, KD, a->a, D, 0.0f, tensor_in(m, grad, L->wk), D);
    matmul(1, 0, KD, D, T, g->d_v, KD, a->a, D, 0.0f, tensor_in(m, grad, L->wv), D);
    matmul(0, 0, T, D, QD, g->d_q, QD, tensor_in(m, P, L->wq), D, 0.0f, g->d_a, D);
    matmul(0, 0, T, D, KD, g->d_k, KD, tensor_in(m, P, L->wk), D, 1.0f, g->d_a, D);
    matmul(0, 0, T, D, KD, g->d_v, KD, tensor_in(m, P, L->wv), D, 1.0f, g->d_a, D);

    /* Attention norm and the residual around the attention block. */
    CHECK(cudann_rmsnorm_backward(g->d_a, a->x_in, tensor_in(m, P, L->attn_norm), g->tmp, tensor_in(m, grad, L->attn_norm), T, D, c->rms_eps, NULL));
    CHECK(cuda_add(g->d_x_mid, g->tmp, g->d_prev, (int64_t)T * D, NULL));
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Copies a small text file (config.json into a saved checkpoint). */
static void copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
    if (!in || !out) die("cannot copy %s to %s", from, to);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) die("cannot write %s", to);
    fclose(in);
    if (fclose(out)) die("cannot write %s", to);
}

/* The communicator of the run's ranks (one rank: no file, no NCCL). Rank 0
 * makes the id and publishes it atomically (a temporary file renamed); the
 * other ranks wait up to two minutes for it. Each rank of a multi-GPU machine
 * runs on GPU rank % count. */
static void *join_ranks(const Args *a) {
    unsigned char id[CUDANN_COMM_ID_BYTES];
    if (a->ranks > 1) {
        int count = 0;
        CHECK(cudann_device_count(&count));
        if (count > 1) CHECK(cudann_set_device(a->rank % count));
    }
    if (a->ranks == 1 || a->rank == 0) {
        CHECK(cudann_comm_id(id));
    }
    if (a->ranks > 1 && a->rank == 0) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", a->nccl_id);
        struct stat st;
        if (stat(a->nccl_id, &st) == 0) die("%s exists (left from another run?): remove it first", a->nccl_id);
        FILE *f = fopen(tmp, "wb");
        if (!f || fwrite(id, 1, sizeof id, f) != sizeof id || fclose(f) || rename(tmp, a->nccl_id)) die("cannot write %s", a->nccl_id);
    } else if (a->ranks > 1) {
        FILE *f = NULL;
        for (int tries = 0; !f && tries < 1200; tries++) {
            f = fopen(a->nccl_id, "rb");
            if (!f) nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL);
        }
        if (!f) die("rank %d: %s did not appear in two minutes (is rank 0 running?)", a->rank, a->nccl_id);
        if (fread(id, 1, sizeof id, f) != sizeof id) die("%s is not a communicator id (%d bytes)", a->nccl_id, CUDANN_COMM_ID_BYTES);
        fclose(f);
    }
    void *comm = NULL;
    CHECK(cudann_comm_init(&comm, a->ranks, a->rank, id));
    return comm;
}

int main(int argc, char **argv) {
    Args args = parse(argc, argv);
    void *comm = join_ranks(&args);
    char path[4096];
    const char *config_path = args.config;
    if (args.model) snprintf(path, sizeof path, "%s/config.json", args.model), config_path = path;
    char config_copy[4096];
    snprintf(config_copy, sizeof config_copy, "%s", config_path);
    Config c = config_load(config_path);
    if (args.seq > c.max_seq) die("--seq %d exceeds the model's max_seq_len %d", args.seq, c.max_seq);
    Model m = model_layout(c, CUDANN_F32);
    if (args.model) {
        snprintf(path, sizeof path, "%s/model.safetensors", args.model);
        model_load(&m, path);
    } else {
        model_init(&m, (uint64_t)args.seed);
    }
    /* Every rank starts from rank 0's weights. */
    CHECK(cudann_broadcast(m.params, m.params, m.n_params, 0, comm, NULL));
    model_rope(&m);
    int64_t n_tokens;
    int32_t *tokens = load_tokens(args.data, c.vocab, &n_tokens);
    if (n_tokens <= args.seq) die("%s holds %lld tokens; --seq %d needs more than that", args.data, (long long)n_tokens, args.seq);

    /* This rank's share of each step's batch: sequences first_seq .. first_seq + B - 1. */
    int B = args.batch / args.ranks, S = args.seq, T = B * S, D = c.hidden, V = c.vocab, E = c.experts;
    int64_t first_seq = (int64_t)args.rank * B;
    /* Everything a step touches lives in library memory (the GPU's, when there
     * is one): only the batch's token ids go in and the losses come out. */
    LayerActs *acts = xcalloc((size_t)c.layers, sizeof(LayerActs));
    for (int l = 0; l < c.layers; l++) acts[l] = acts_alloc(&c, T);
    Grads g = grads_alloc(&c, T);
    float *x_final = dalloc((size_t)T * D, 4), *xf = dalloc((size_t)T * D, 4), *d_xf = dalloc((size_t)T * D, 4);
    float *logits = dalloc((size_t)T * V, 4), *log_probs = dalloc((size_t)T * V, 4), *d_logits = dalloc((size_t)T * V, 4);
    float *grad = dalloc((size_t)m.n_params, 4), *adam_m = dalloc((size_t)m.n_params, 4), *adam_v = dalloc((size_t)m.n_params, 4);
    float *partial = dalloc((size_t)(m.n_params + 255) / 256, 4);
    int32_t *batch = xcalloc(2 * (size_t)T, 4), *ids = dalloc(2 * (size_t)T, 4), *targets = ids + T;
    /* The step's scalars, fetched together: ce, |g|, then each layer's aux loss. */
    size_t n_scalars = 2 + (size_t)c.layers;
    float *scalars = dalloc(n_scalars, 4), *host_scalars = xcalloc(n_scalars, 4);
    for (int l = 0; l < c.layers; l++) acts[l].aux = scalars + 2 + l;
    FILE *log = args.log ? fopen(args.log, "w") : NULL;
    if (args.log && !log) die("cannot write %s", args.log);
    fprintf(stderr, "train_moe: %lld parameters, %d x %d tokens a step (rank %d of %d: %d sequences), %lld tokens of data\n", (long long)m.n_params,
            args.batch, S, args.rank, args.ranks, B, (long long)n_tokens);

    for (int step = 0; step < args.steps; step++) {
        double start = now_ms();
        for (int b = 0; b < B; b++) {
            int64_t o = (((int64_t)step * args.batch + first_seq + b) * S) % (n_tokens - S);
            memcpy(batch + (size_t)b * S, tokens + o, (size_t)S * 4);
            memcpy(batch + T + (size_t)b * S, tokens + o + 1, (size_t)S * 4);
        }
        copy_bytes(ids, batch, 2 * (size_t)T * 4);
        /* Forward. */
        CHECK(cudann_embedding(ids, tensor_in(&m, m.params, m.embed), acts[0].x_in, T, V, D, CUDANN_F32, NULL));
        for (int l = 0; l < c.layers; l++) layer_forward(&m, l, &acts[l], l + 1 < c.layers ? acts[l + 1].x_in : x_final, B, S, 0, NULL);
        head_forward(&m, x_final, xf, logits, T);
        CHECK(cuda_cross_entropy_forward(logits, targets, scalars, log_probs, T, V, NULL));
        if (args.ranks > 1) {
            /* The whole batch's losses: the mean cross-entropy over the ranks,
             * and each layer's aux loss from the routing statistics averaged
             * over the ranks (its backward then uses those). */
            CHECK(cudann_all_reduce(scalars, scalars, 1, CUDANN_AVG, comm, NULL));
            for (int l = 0; l < c.layers; l++) {
                CHECK(cudann_all_reduce(acts[l].f_counts, acts[l].f_counts, E, CUDANN_AVG, comm, NULL));
                CHECK(cudann_all_reduce(acts[l].p_means, acts[l].p_means, E, CUDANN_AVG, comm, NULL));
                CHECK(cudann_gemm_ex(0, 0, 1, 1, E, c.aux_alpha * (float)E, acts[l].f_counts, CUDANN_F32, E, 0, acts[l].p_means, CUDANN_F32, 1, 0, 0.0f,
                                     acts[l].aux, CUDANN_F32, 1, 0, 1, NULL));
            }
        }

        /* Backward: every target is a real token, so the mean is over T. */
        CHECK(cuda_zero_grad(grad, m.n_params, NULL));
        CHECK(cuda_cross_entropy_backward(log_probs, targets, d_logits, T, V, 1.0f / (float)T, NULL));
        matmul(1, 0, V, D, T, d_logits, V, xf, D, 0.0f, tensor_in(&m, grad, m.lm_head), D);
        matmul(0, 0, T, D, V, d_logits, V, tensor_in(&m, m.params, m.lm_head), D, 0.0f, d_xf, D);
        CHECK(cudann_rmsnorm_backward(d_xf, x_final, tensor_in(&m, m.params, m.norm), g.d_x, tensor_in(&m, grad, m.norm), T, D, c.rms_eps, NULL));
        for (int l = c.layers - 1; l >= 0; l--) {
            layer_backward(&m, l, &acts[l], &g, grad, B, S);
            float *swap = g.d_x;
            g.d_x = g.d_prev;
            g.d_prev = swap;
        }
        CHECK(cudann_embedding_backward(ids, g.d_x, tensor_in(&m, grad, m.embed), T, V, D, NULL));
        if (step == 0 && args.grads) model_save(&m, grad, args.grads);

        /* Update: the gradient of the whole batch is the mean of the ranks' (equal shares). */
        CHECK(cudann_all_reduce(grad, grad, m.n_params, CUDANN_AVG, comm, NULL));
        CHECK(cuda_grad_clip(grad, partial, scalars + 1, args.clip, m.n_params, NULL));
        CHECK(cuda_adamw_step(m.params, grad, adam_m, adam_v, args.lr, args.beta1, args.beta2, args.eps, args.weight_decay, step + 1, m.n_params, NULL));
        copy_bytes(host_scalars, scalars, n_scalars * 4);
        float ce = host_scalars[0], grad_norm = host_scalars[1], aux = 0.0f;
        for (int l = 0; l < c.layers; l++) aux += host_scalars[2 + l];
        double ms = now_ms() - start;
        if (log) {
            fprintf(log, "{\"step\": %d, \"loss\": %.9g, \"ce\": %.9g, \"aux\": %.9g, \"grad_norm\": %.9g, \"ms\": %.3f}\n", step + 1, (double)(ce + aux),
                    (double)ce, (double)aux, (double)grad_norm, ms);
            fflush(log);
        }
        fprintf(stderr, "step %d/%d  loss %.5f  ce %.5f  aux %.5f  |g| %.4f  %.1f ms\n", step + 1, args.steps, (double)(ce + aux), (double)ce, (double)aux,
                (double)grad_norm, ms);
    }
    if (log && fclose(log)) die("cannot write %s", args.log);
    CHECK(cudann_comm_destroy(comm));
    if (args.save) {
        if (mkdir(args.save, 0755) != 0 && errno != EEXIST) die("cannot create %s", args.save);
        snprintf(path, sizeof path, "%s/config.json", args.save);
        if (strcmp(path, config_copy) != 0) copy_file(config_copy, path);
        snprintf(path, sizeof path, "%s/model.safetensors", args.save);
        model_save(&m, m.params, path);
        fprintf(stderr, "train_moe: saved %s\n", args.save);
    }
    return 0;
}
