/* The MoE transformer of MODEL.md: configuration, parameters, checkpoints and
 * the forward pass of a layer, through cudann alone (see moe_model.h). */
#include "moe_model.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char *program_name; /* set by each program's main */

void die(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "%s: ", program_name);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    exit(1);
}

void check_call(int32_t code, const char *what, const char *file, int line) {
    if (code != CUDANN_SUCCESS) die("%s:%d: %s returned %d: %s", file, line, what, code, cudann_last_error());
}

double parse_number(const char *flag, const char *text) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno || !isfinite(v)) die("%s: not a number: '%s'", flag, text);
    return v;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) die("out of memory (%zu x %zu bytes)", count, size);
    return p;
}

void *dalloc(size_t count, size_t size) {
    void *p = NULL;
    int64_t bytes = (int64_t)(count ? count : 1) * (int64_t)(size ? size : 1);
    if (cudann_malloc(&p, bytes) != CUDANN_SUCCESS) die("cannot allocate %lld bytes: %s", (long long)bytes, cudann_last_error());
    CHECK(cudann_memset(p, 0, bytes, NULL));
    return p;
}

void copy_bytes(void *dst, const void *src, size_t bytes) {
    CHECK(cudann_memcpy(dst, src, (int64_t)bytes, NULL));
    CHECK(cudann_stream_synchronize(NULL));
}

/* The whole of a small text file, NUL-terminated. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open %s", path);
    char *text = xcalloc(1 << 16, 1);
    size_t n = fread(text, 1, (1 << 16) - 1, f);
    int too_long = !feof(f);
    fclose(f);
    if (too_long) die("%s is longer than 64 KiB: not a config.json", path);
    text[n] = '\0';
    return text;
}

/* The number after "key": in a flat JSON object; exits when it is missing. */
static double json_number(const char *text, const char *path, const char *key) {
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    const char *at = strstr(text, quoted);
    if (!at) die("%s: missing \"%s\"", path, key);
    at += strlen(quoted);
    while (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r') at++;
    if (*at++ != ':') die("%s: \"%s\" has no value", path, key);
    char *end;
    double value = strtod(at, &end);
    if (end == at) die("%s: \"%s\" is not a number", path, key);
    return value;
}

static int json_int(const char *text, const char *path, const char *key) {
    double v = json_number(text, path, key);
    if (v != floor(v) || v < 1 || v > 1 << 30) die("%s: \"%s\" must be a positive integer (got %g)", path, key, v);
    return (int)v;
}

Config config_load(const char *path) {
    char *text = read_text(path);
    Config c = {
        .vocab = json_int(text, path, "vocab_size"),
        .hidden = json_int(text, path, "hidden_dim"),
        .layers = json_int(text, path, "n_layers"),
        .heads = json_int(text, path, "n_heads"),
        .kv_heads = json_int(text, path, "n_kv_heads"),
        .head_dim = json_int(text, path, "head_dim"),
        .ffn = json_int(text, path, "ffn_dim"),
        .experts = json_int(text, path, "n_experts"),
        .top_k = json_int(text, path, "top_k_experts"),
        .max_seq = json_int(text, path, "max_seq_len"),
        .rope_base = (float)json_number(text, path, "rope_base"),
        .rms_eps = (float)json_number(text, path, "rms_eps"),
        .aux_alpha = (float)json_number(text, path, "aux_loss_alpha"),
    };
    free(text);
    if (c.heads % c.kv_heads) die("%s: n_kv_heads (%d) must divide n_heads (%d)", path, c.kv_heads, c.heads);
    if (c.head_dim % 2) die("%s: head_dim (%d) must be even (RoPE rotates pairs)", path, c.head_dim);
    if (c.top_k > c.experts) die("%s: top_k_experts (%d) exceeds n_experts (%d)", path, c.top_k, c.experts);
    if (!(c.rope_base > 0) || !(c.rms_eps >= 0)) die("%s: rope_base must be > 0 and rms_eps >= 0", path);
    return c;
}

/* Appends a tensor to the table; returns its index. */
static int add_tensor(Model *m, const char *name, int64_t rows, int64_t cols) {
    Tensor *t = &m->tensors[m->n_tensors];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->size = rows * (cols ? cols : 1);
    t->offset = m->n_params;
    m->n_params += t->size;
    return m->n_tensors++;
}

/* Bytes of one element of a floating-point type. */
static size_t element_size(int dtype) { return dtype == CUDANN_F32 ? 4 : 2; }

Model model_layout(Config c, int dtype) {
    Model m = {.c = c, .dtype = dtype};
    int per_layer = 7 + 3 * c.experts;
    m.tensors = xcalloc((size_t)(3 + c.layers * per_layer), sizeof(Tensor));
    m.layer = xcalloc((size_t)c.layers, sizeof(LayerTensors));
    int64_t D = c.hidden, q_dim = (int64_t)c.heads * c.head_dim, kv_dim = (int64_t)c.kv_heads * c.head_dim;
    char name[80];
    m.embed = add_tensor(&m, "embed.weight", c.vocab, D);
    for (int l = 0; l < c.layers; l++) {
        LayerTensors *L = &m.layer[l];
#define LAYER_TENSOR(field, suffix, rows, cols)                       \
    snprintf(name, sizeof name, "layers.%d.%s", l, suffix); \
    L->field = add_tensor(&m, name, rows, cols)
        LAYER_TENSOR(attn_norm, "attn_norm.weight", D, 0);
        LAYER_TENSOR(wq, "attn.wq.weight", q_dim, D);
        LAYER_TENSOR(wk, "attn.wk.weight", kv_dim, D);
        LAYER_TENSOR(wv, "attn.wv.weight", kv_dim, D);
        LAYER_TENSOR(wo, "attn.wo.weight", D, q_dim);
        LAYER_TENSOR(ffn_norm, "ffn_norm.weight", D, 0);
        LAYER_TENSOR(router, "moe.router.weight", c.experts, D);
#undef LAYER_TENSOR
        L->gate = xcalloc((size_t)c.experts, sizeof(int));
        L->up = xcalloc((size_t)c.experts, sizeof(int));
        L->down = xcalloc((size_t)c.experts, sizeof(int));
        for (int e = 0; e < c.experts; e++) {
            snprintf(name, sizeof name, "layers.%d.moe.experts.%d.gate.weight", l, e);
            L->gate[e] = add_tensor(&m, name, c.ffn, D);
            snprintf(name, sizeof name, "layers.%d.moe.experts.%d.up.weight", l, e);
            L->up[e] = add_tensor(&m, name, c.ffn, D);
            snprintf(name, sizeof name, "layers.%d.moe.experts.%d.down.weight", l, e);
            L->down[e] = add_tensor(&m, name, D, c.ffn);
        }
    }
    m.norm = add_tensor(&m, "norm.weight", D, 0);
    m.lm_head = add_tensor(&m, "lm_head.weight", c.vocab, D);
    m.params = dalloc((size_t)m.n_params, element_size(dtype));
    m.norm_wide = dtype == CUDANN_F32 ? NULL : dalloc((size_t)D, sizeof(float));
    m.freqs = dalloc((size_t)c.max_seq * (size_t)(c.head_dim / 2), sizeof(float));
    return m;
}

float *tensor_in(const Model *m, float *flat, int t) { return flat + m->tensors[t].offset; }

const void *weight(const Model *m, int t) { return (const char *)m->params + (size_t)m->tensors[t].offset * element_size(m->dtype); }

const float *norm_weight(const Model *m, int t) {
    if (m->dtype == CUDANN_F32) return weight(m, t);
    CHECK(cudann_convert(weight(m, t), m->dtype, m->norm_wide, CUDANN_F32, m->tensors[t].size, NULL));
    return m->norm_wide;
}

/* "[a, b]" of a shape, for messages. */
static const char *shape_text(char *buf, size_t size, int ndim, const int64_t *shape) {
    if (ndim == 1) snprintf(buf, size, "[%lld]", (long long)shape[0]);
    else if (ndim == 2) snprintf(buf, size, "[%lld, %lld]", (long long)shape[0], (long long)shape[1]);
    else snprintf(buf, size, "(%d dimensions)", ndim);
    return buf;
}

void model_load(Model *m, const char *path) {
    size_t size = element_size(m->dtype);
    char *host = malloc((size_t)m->n_params * size);
    if (!host) die("out of memory (%lld parameters)", (long long)m->n_params);
    CudannSafetensors *file = NULL;
    if (cudann_safetensors_open(path, &file) != CUDANN_SUCCESS) die("%s", cudann_last_error());
    int64_t count = 0;
    CHECK(cudann_safetensors_count(file, &count));
    if (count != m->n_tensors) die("%s holds %lld tensors; the config describes %d (does config.json match it?)", path, (long long)count, m->n_tensors);
    for (int i = 0; i < m->n_tensors; i++) {
        const Tensor *t = &m->tensors[i];
        int dtype = -1, ndim = 0;
        int64_t shape[8];
        if (cudann_safetensors_info(file, t->name, &dtype, &ndim, shape, 8) != CUDANN_SUCCESS) die("%s: %s", path, cudann_last_error());
        char got[64], want[64];
        if (dtype != CUDANN_F32 && dtype != CUDANN_F16 && dtype != CUDANN_BF16) die("%s: tensor %s is not F32, F16 or BF16", path, t->name);
        if (ndim != t->ndim || shape[0] != t->shape[0] || (ndim == 2 && shape[1] != t->shape[1]))
            die("%s: tensor %s has shape %s; the config wants %s", path, t->name, shape_text(got, sizeof got, ndim, shape),
                shape_text(want, sizeof want, t->ndim, t->shape));
        /* Read as stored, then converted into the model's type. */
        void *stored = xcalloc((size_t)t->size, element_size(dtype));
        CHECK(cudann_safetensors_read(file, t->name, dtype, stored, t->size, NULL));
        CHECK(cudann_convert(stored, dtype, host + (size_t)t->offset * size, m->dtype, t->size, NULL));
        free(stored);
    }
    CHECK(cudann_safetensors_close(file));
    copy_bytes(m->params, host, (size_t)m->n_params * size);
    free(host);
}

/* SplitMix64 and Box-Muller: the weights' initial draw. */
static uint64_t splitmix(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double normal(uint64_t *state) {
    double u = ((double)(splitmix(state) >> 11) + 0.5) / 9007199254740992.0;
    double v = (double)(splitmix(state) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

void model_init(Model *m, uint64_t seed) {
    float *host = malloc((size_t)m->n_params * sizeof(float));
    if (!host) die("out of memory (%lld parameters)", (long long)m->n_params);
    uint64_t state = seed;
    for (int i = 0; i < m->n_tensors; i++) {
        const Tensor *t = &m->tensors[i];
        float *p = host + t->offset;
        for (int64_t j = 0; j < t->size; j++) p[j] = t->ndim == 1 ? 1.0f : (float)(0.02 * normal(&state));
    }
    copy_bytes(m->params, host, (size_t)m->n_params * sizeof(float));
    free(host);
}

void model_save(const Model *m, const float *flat, const char *path) {
    float *host = malloc((size_t)m->n_params * sizeof(float));
    if (!host) die("out of memory (%lld parameters)", (long long)m->n_params);
    copy_bytes(host, flat, (size_t)m->n_params * sizeof(float));
    CudannSafetensorsWriter *writer = NULL;
    CHECK(cudann_safetensors_writer_create(&writer));
    for (int i = 0; i < m->n_tensors; i++) {
        const Tensor *t = &m->tensors[i];
        CHECK(cudann_safetensors_writer_add(writer, t->name, CUDANN_F32, t->ndim, t->shape, host + t->offset, NULL));
    }
    if (cudann_safetensors_writer_save(writer, path) != CUDANN_SUCCESS) die("%s", cudann_last_error());
    CHECK(cudann_safetensors_writer_free(writer));
    free(host);
}

void model_rope(Model *m) { CHECK(cuda_rope_freqs(m->freqs, m->c.max_seq, m->c.head_dim, m->c.rope_base, 1.0f, NULL)); }

LayerActs acts_alloc(const Config *c, int tokens) {
    size_t T = (size_t)tokens, D = (size_t)c->hidden, E = (size_t)c->experts, K = (size_t)c->top_k, F = (size_t)c->ffn;
    size_t q_dim = (size_t)c->heads * (size_t)c->head_dim, kv_dim = (size_t)c->kv_heads * (size_t)c->head_dim;
    LayerActs a = {
        .x_in = dalloc(T * D, sizeof(float)), .a = dalloc(T * D, sizeof(float)),
        .q = dalloc(T * q_dim, sizeof(float)), .k = dalloc(T * kv_dim, sizeof(float)), .v = dalloc(T * kv_dim, sizeof(float)),
        .o = dalloc(T * q_dim, sizeof(float)), .lse = dalloc(T * (size_t)c->heads, sizeof(float)),
        .x_mid = dalloc(T * D, sizeof(float)), .m = dalloc(T * D, sizeof(float)),
        .router_logits = dalloc(T * E, sizeof(float)), .probs = dalloc(T * E, sizeof(float)),
        .weights = dalloc(T * K, sizeof(float)), .f_counts = dalloc(E, sizeof(float)), .p_means = dalloc(E, sizeof(float)),
        .experts = dalloc(T * K, sizeof(int32_t)), .order = dalloc(T * K, sizeof(int32_t)), .offsets = dalloc(E + 1, sizeof(int32_t)),
        .xs = dalloc(T * K * D, sizeof(float)), .gate = dalloc(T * K * F, sizeof(float)), .up = dalloc(T * K * F, sizeof(float)),
        .h = dalloc(T * K * F, sizeof(float)), .y = dalloc(T * K * D, sizeof(float)), .moe_out = dalloc(T * D, sizeof(float)),
        .aux = dalloc(1, sizeof(float)),
    };
    return a;
}

void matmul(int trans_a, int trans_b, int m, int n, int k, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    CHECK(cudann_gemm_ex(trans_a, trans_b, m, n, k, 1.0f, A, CUDANN_F32, lda, 0, B, CUDANN_F32, ldb, 0, beta, C, CUDANN_F32, ldc, 0, 1, NULL));
}

int64_t expert_stride(const Model *m, const int *per_expert) {
    return m->c.experts > 1 ? m->tensors[per_expert[1]].offset - m->tensors[per_expert[0]].offset : 0;
}

void matmul_experts(int trans_a, int trans_b, int inner, int m, int n, int k, const float *A, int lda, int64_t stride_a, const float *B, int ldb,
                    int64_t stride_b, float beta, float *C, int ldc, int64_t stride_c, const int32_t *offsets, int experts) {
    CHECK(cudann_gemm_grouped(trans_a, trans_b, inner, m, n, k, 1.0f, A, CUDANN_F32, lda, stride_a, B, CUDANN_F32, ldb, stride_b, beta, C, CUDANN_F32,
                              ldc, stride_c, offsets, experts, NULL));
}

/* y[rows, n] = x · W_eᵀ on each expert e's rows of x (`offsets`, as dispatch
 * wrote them), W_e the expert's tensor `w[e]` ([n, k], of type m->dtype). */
static void experts_linear(const Model *m, const float *x, const int *w, float *y, const int32_t *offsets, int rows, int n, int k) {
    CHECK(cudann_gemm_grouped(0, 1, 0, rows, n, k, 1.0f, x, CUDANN_F32, k, 0, weight(m, w[0]), m->dtype, k, expert_stride(m, w), 0.0f, y, CUDANN_F32, n, 0,
                              offsets, m->c.experts, NULL));
}

/* y[rows, n] = x[rows, k] · W[n, k]ᵀ: a linear layer with the model's weights
 * `t` ([out, in], of type m->dtype; accumulated in float32). */
static void linear(const Model *m, const float *x, int t, float *y, int rows, int n, int k) {
    CHECK(cudann_gemm_ex(0, 1, rows, n, k, 1.0f, x, CUDANN_F32, k, 0, weight(m, t), m->dtype, k, 0, 0.0f, y, CUDANN_F32, n, 0, 1, NULL));
}

void layer_forward(const Model *m, int l, LayerActs *a, float *x_out, int batch, int seq, int pos0, KvCache *cache) {
    const Config *c = &m->c;
    const LayerTensors *L = &m->layer[l];
    int T = batch * seq, D = c->hidden, H = c->heads, G = c->kv_heads, h = c->head_dim, E = c->experts, K = c->top_k, F = c->ffn;
    float scale = 1.0f / sqrtf((float)h);

    /* Attention block. */
    CHECK(cuda_rmsnorm(a->x_in, norm_weight(m, L->attn_norm), a->a, T, D, c->rms_eps, NULL));
    linear(m, a->a, L->wq, a->q, T, H * h, D);
    linear(m, a->a, L->wk, a->k, T, G * h, D);
    linear(m, a->a, L->wv, a->v, T, G * h, D);
    CHECK(cuda_rope_qk(a->q, a->k, m->freqs, a->q, a->k, batch, seq, H, G, h, pos0, NULL));
    if (cache) {
        CHECK(cudann_kv_cache_write(a->k, a->v, cache->k, cache->v, batch, seq, c->max_seq, G, h, pos0, CUDANN_F32, NULL));
        CHECK(cudann_attention_forward(a->q, cache->k, cache->v, NULL, a->o, a->lse, batch, seq, pos0 + seq, c->max_seq, H, G, h, pos0, 1, scale,
                                       CUDANN_F32, NULL));
    } else {
        CHECK(cudann_attention_forward(a->q, a->k, a->v, NULL, a->o, a->lse, batch, seq, seq, seq, H, G, h, 0, 1, scale, CUDANN_F32, NULL));
    }
    linear(m, a->o, L->wo, a->x_mid, T, D, H * h);
    CHECK(cuda_add(a->x_mid, a->x_in, a->x_mid, (int64_t)T * D, NULL));

    /* Router: probabilities, the top-k with renormalised weights, the aux loss. */
    CHECK(cuda_rmsnorm(a->x_mid, norm_weight(m, L->ffn_norm), a->m, T, D, c->rms_eps, NULL));
    linear(m, a->m, L->router, a->router_logits, T, E, D);
    CHECK(cuda_softmax(a->router_logits, a->probs, T, E, NULL));
    CHECK(cuda_softmax_topk(a->router_logits, a->weights, a->experts, T, E, K, NULL));
    CHECK(cuda_aux_loss_forward(a->probs, a->experts, a->aux, a->f_counts, a->p_means, T, E, K, c->aux_alpha, NULL));

    /* Experts: rows grouped by expert, one grouped product per weight kind (the
     * row offsets stay in library memory: no round trip to the host). */
    CHECK(cudann_moe_dispatch(a->m, a->experts, a->xs, a->order, a->offsets, T, D, E, K, NULL));
    experts_linear(m, a->xs, L->gate, a->gate, a->offsets, T * K, F, D);
    experts_linear(m, a->xs, L->up, a->up, a->offsets, T * K, F, D);
    CHECK(cudann_swiglu(a->gate, a->up, a->h, (int64_t)T * K * F, CUDANN_F32, NULL));
    experts_linear(m, a->h, L->down, a->y, a->offsets, T * K, D, F);
    CHECK(cudann_moe_combine(a->y, a->weights, a->order, a->moe_out, T, D, K, NULL));
    CHECK(cuda_add(a->x_mid, a->moe_out, x_out, (int64_t)T * D, NULL));
}

void head_forward(const Model *m, const float *x, float *xf, float *logits, int rows) {
    CHECK(cuda_rmsnorm(x, norm_weight(m, m->norm), xf, rows, m->c.hidden, m->c.rms_eps, NULL));
    linear(m, xf, m->lm_head, logits, rows, m->c.vocab, m->c.hidden);
}
