/* The MoE transformer of MODEL.md, shared by train_moe and generate_moe: its
 * configuration, its parameters (one flat buffer, a table of named tensors),
 * checkpoint loading and saving, and the forward pass of one layer. Every
 * piece of arithmetic is a cudann call; this code only lays out buffers. */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "cudann.h"

/* Exits with the library's message when a cudann call fails. */
#define CHECK(call) check_call((call), #call, __FILE__, __LINE__)
void check_call(int32_t code, const char *what, const char *file, int line);

/* Prints "program: message" on stderr and exits with status 1. */
void die(const char *fmt, ...);

/* A command-line number: exits with a message naming `flag` unless `text` is
 * entirely a finite number. */
double parse_number(const char *flag, const char *text);

/* Memory that is released only at exit (examples hold everything for the
 * program's life). Exits with a message when it cannot be had. */
void *xcalloc(size_t count, size_t size);

/* Library memory (cudann_malloc: device memory on a GPU, host memory without
 * one), zeroed; like xcalloc otherwise. The model, its gradients, optimizer
 * state and activations live there, so on a GPU no call copies operands. */
void *dalloc(size_t count, size_t size);

/* Copies `bytes` between program memory and library memory (either way),
 * complete on return. */
void copy_bytes(void *dst, const void *src, size_t bytes);

typedef struct {
    int vocab, hidden, layers, heads, kv_heads, head_dim, ffn, experts, top_k, max_seq;
    float rope_base, rms_eps, aux_alpha;
} Config;

/* Reads config.json's fields (MODEL.md) and checks they make a model. */
Config config_load(const char *path);

/* One named tensor inside the flat parameter buffer. */
typedef struct {
    char name[80];
    int ndim;
    int64_t shape[2];
    int64_t offset, size;
} Tensor;

/* Indices into the tensor table of one layer's tensors. */
typedef struct {
    int attn_norm, wq, wk, wv, wo, ffn_norm, router;
    int *gate, *up, *down; /* one per expert */
} LayerTensors;

typedef struct {
    Config c;
    Tensor *tensors;
    int n_tensors;
    int64_t n_params;
    int embed, norm, lm_head;
    LayerTensors *layer;
    int dtype;         /* of params: CUDANN_F32 (training), or F16/BF16 weights for inference */
    void *params;      /* library memory */
    float *norm_wide;  /* [hidden]: a half-precision norm weight as float, for cuda_rmsnorm */
    float *freqs;      /* RoPE angles [max_seq, head_dim / 2], library memory */
} Model;

/* Builds the tensor table of MODEL.md for `c`, with room for the parameters
 * in `dtype` (no weights yet). */
Model model_layout(Config c, int dtype);
/* The parameters of tensor `t` inside a float32 buffer laid out like
 * `params` (float32 models, gradients, optimizer state). */
float *tensor_in(const Model *m, float *flat, int t);
/* Tensor `t` of the model's weights, of type m->dtype. */
const void *weight(const Model *m, int t);
/* A norm weight as float32: the weights themselves, or (half-precision
 * models) converted into m->norm_wide, valid until the next call. */
const float *norm_weight(const Model *m, int t);
/* Loads weights from a safetensors file: every tensor of the table must be
 * there with the configuration's shape, stored as F32, F16 or BF16; each is
 * converted to the model's type (rounded to nearest even). */
void model_load(Model *m, const char *path);
/* Fresh weights: normal(0, 0.02), norm weights 1 (a seeded generator). */
void model_init(Model *m, uint64_t seed);
/* Writes a flat buffer (weights or gradients) under the tensors' names. */
void model_save(const Model *m, const float *flat, const char *path);
/* Fills the RoPE angle table. */
void model_rope(Model *m);

/* One layer's activations for T tokens, kept for the backward pass, in
 * library memory; `aux` points at the layer's aux loss (one float there), and
 * `offsets` at the experts' row offsets, which the grouped products read
 * where they run. */
typedef struct {
    float *x_in, *a, *q, *k, *v, *o, *lse, *x_mid, *m;
    float *router_logits, *probs, *weights, *f_counts, *p_means, *aux;
    int32_t *experts, *order, *offsets;
    float *xs, *gate, *up, *h, *y, *moe_out;
} LayerActs;

LayerActs acts_alloc(const Config *c, int tokens);

/* C[m, n] = op(A)·op(B) + beta C, row-major float32 (cudann_gemm_ex), with
 * op(X) = Xᵀ when trans_x is 1; ld* are the stored row lengths. */
void matmul(int trans_a, int trans_b, int m, int n, int k, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* Elements between consecutive experts' tensors of one kind (`per_expert[e]`
 * their indices): the layout keeps each expert's gate, up and down together,
 * so the step is the same for every expert. */
int64_t expert_stride(const Model *m, const int *per_expert);
/* A grouped product over the experts (cudann_gemm_grouped, float32):
 * `inner` 0: rows offsets[e]..offsets[e+1] of C = op(A) op(B_e) + beta C;
 * 1: C_e = op(A)[:, rows of e] op(B)[rows of e, :] + beta C_e. */
void matmul_experts(int trans_a, int trans_b, int inner, int m, int n, int k, const float *A, int lda, int64_t stride_a, const float *B, int ldb,
                    int64_t stride_b, float beta, float *C, int ldc, int64_t stride_c, const int32_t *offsets, int experts);

/* Keys and values of one layer for decoding: [1, max_seq, kv_heads, head_dim],
 * library memory. */
typedef struct {
    float *k, *v;
} KvCache;

/* One decoder layer over `batch` rows of `seq` tokens at positions
 * pos0 .. pos0 + seq - 1: from acts->x_in to x_out. With a cache (batch 1),
 * the new keys and values are written at pos0 and attention reads the cache;
 * without one, attention reads this call's keys and values (training). */
void layer_forward(const Model *m, int l, LayerActs *acts, float *x_out, int batch, int seq, int pos0, KvCache *cache);

/* Final RMSNorm and the LM head over `rows` rows of x: logits [rows, vocab]. */
void head_forward(const Model *m, const float *x, float *xf, float *logits, int rows);

#endif
