/* A small C program that uses libcudann through its header: a tiny forward
 * pass (RMSNorm -> GEMM -> SiLU -> softmax), a sampled token, and an error. */
#include <stdio.h>
#include "cudann.h"

static void print_row(const char *name, const float *x, int n) {
    printf("%-9s", name);
    for (int i = 0; i < n; i++) printf(" %8.4f", x[i]);
    printf("\n");
}

int main(void) {
    enum { HIDDEN = 4, VOCAB = 6 };
    float x[HIDDEN] = {0.5f, -1.0f, 2.0f, 0.25f};
    float gain[HIDDEN] = {1.0f, 1.0f, 1.0f, 1.0f};
    float w[HIDDEN * VOCAB];
    for (int i = 0; i < HIDDEN * VOCAB; i++) w[i] = (float)((i * 7) % 11 - 5) / 5.0f;
    float normed[HIDDEN], logits[VOCAB], act[VOCAB], probs[VOCAB];
    int32_t token = -1;
    uint64_t seed = 42;

    printf("cudann %s\n", cudann_version());
    print_row("input", x, HIDDEN);
    if (cuda_rmsnorm(x, gain, normed, 1, HIDDEN, 1e-6f, NULL) != CUDANN_SUCCESS) return 1;
    print_row("rmsnorm", normed, HIDDEN);
    if (cuda_gemm(normed, w, logits, 1, VOCAB, HIDDEN, 1.0f, 0.0f, NULL) != CUDANN_SUCCESS) return 1;
    print_row("gemm", logits, VOCAB);
    if (cuda_silu(logits, act, VOCAB, NULL) != CUDANN_SUCCESS) return 1;
    print_row("silu", act, VOCAB);
    if (cuda_softmax(logits, probs, 1, VOCAB, NULL) != CUDANN_SUCCESS) return 1;
    print_row("softmax", probs, VOCAB);
    if (cuda_topk_sample(logits, &token, &seed, 1, VOCAB, 3, 0.8f, NULL) != CUDANN_SUCCESS) return 1;
    printf("top-3 sample (seed 42): token %d\n", token);

    int32_t rc = cuda_topk_sample(logits, &token, &seed, 1, VOCAB, 0, 0.8f, NULL);
    printf("k = 0 -> return %d, \"%s\"\n", rc, cudann_last_error());
    return rc == CUDANN_INVALID_VALUE ? 0 : 1;
}
