/* C11 consumer of cudann.h: calls a representative set of entry points and
 * checks the values against double-precision references (refcheck.h). */
#include <stdlib.h>

#include "cudann.h"
#include "refcheck.h"

static float *floats(int64_t n) { return malloc((size_t)n * sizeof(float)); }
static double *doubles(int64_t n) { return malloc((size_t)n * sizeof(double)); }

static void test_silu_add(void) {
  enum { N = 4097 };
  float *x = floats(N), *y = floats(N), *z = floats(N);
  double *want = doubles(N);
  fill(x, N, 1, 8.0);
  check(cuda_silu(x, y, N, NULL) == CUDANN_SUCCESS, "cuda_silu returns 0");
  ref_silu(x, want, N);
  check(close_to(y, want, NULL, N, 5e-7), "cuda_silu values");
  check(cuda_add(x, y, z, N, NULL) == CUDANN_SUCCESS, "cuda_add returns 0");
  for (int i = 0; i < N; i++) want[i] = (double)x[i] + y[i];
  check(close_to(z, want, NULL, N, 6e-8), "cuda_add values (correctly rounded)");
  free(x), free(y), free(z), free(want);
}

static void test_softmax(void) {
  enum { R = 3, C = 4097 };
  float *x = floats(R * C), *y = floats(R * C);
  double *want = doubles(R * C);
  fill(x, R * C, 2, 6.0);
  for (int i = 0; i < C; i++) x[i] += 1000.0f; /* stable only if the max is subtracted */
  check(cuda_softmax(x, y, R, C, NULL) == CUDANN_SUCCESS, "cuda_softmax returns 0");
  ref_log_softmax(x, want, R, C);
  for (int i = 0; i < R * C; i++) want[i] = exp(want[i]);
  check(close_to(y, want, NULL, R * C, 1e-5), "cuda_softmax values");
  free(x), free(y), free(want);
}

static void test_rmsnorm(void) {
  enum { R = 5, D = 33 };
  float x[R * D], w[D], y[R * D];
  double want[R * D];
  fill(x, R * D, 3, 3.0);
  fill(w, D, 4, 1.0);
  check(cuda_rmsnorm(x, w, y, R, D, 1e-5f, NULL) == CUDANN_SUCCESS, "cuda_rmsnorm returns 0");
  ref_rmsnorm(x, w, want, R, D, (double)1e-5f);
  check(close_to(y, want, NULL, R * D, 1e-5), "cuda_rmsnorm values");
}

static void test_gemm(void) {
  enum { M = 33, N = 31, K = 17 };
  float a[M * K], b[K * N], c[M * N], c0[M * N];
  double want[M * N], bound[M * N];
  fill(a, M * K, 5, 1.0);
  fill(b, K * N, 6, 1.0);
  fill(c, M * N, 7, 1.0);
  memcpy(c0, c, sizeof c);
  check(cuda_gemm(a, b, c, M, N, K, 1.5f, -0.5f, NULL) == CUDANN_SUCCESS, "cuda_gemm returns 0");
  ref_gemm(a, b, c0, want, bound, M, N, K, 1.5, -0.5);
  check(close_to(c, want, bound, M * N, 1e-5), "cuda_gemm values");
}

static void test_cross_entropy(void) {
  enum { R = 7, V = 1000 };
  float *logits = floats(R * V), *lp = floats(R * V), loss = -1.0f;
  double *want = doubles(R * V), mean = 0.0;
  int targets[R] = {3, -100, 999, 0, 500, -100, 42}; /* -100: padding rows */
  int counted = 0;
  fill(logits, R * V, 8, 4.0);
  check(cuda_cross_entropy_forward(logits, targets, &loss, lp, R, V, NULL) == CUDANN_SUCCESS,
        "cuda_cross_entropy_forward returns 0");
  ref_log_softmax(logits, want, R, V);
  for (int r = 0; r < R; r++)
    if (targets[r] >= 0) mean -= want[r * V + targets[r]], counted++;
  mean /= counted;
  check(close_to(&loss, &mean, NULL, 1, 1e-5), "cross-entropy loss skips padding rows");
  double *scale = doubles(R * V);
  for (int i = 0; i < R * V; i++) scale[i] = fabs(want[i]) + 1.0;
  check(close_to(lp, want, scale, R * V, 1e-5), "cross-entropy log_probs");
  free(logits), free(lp), free(want), free(scale);
}

static void test_adamw(void) {
  enum { N = 1000 };
  float p[N], g[N], m[N] = {0}, v[N] = {0};
  double rp[N], rm[N] = {0}, rv[N] = {0}, tol[N];
  fill(p, N, 9, 1.0);
  for (int i = 0; i < N; i++) rp[i] = p[i];
  for (int step = 1; step <= 3; step++) {
    fill(g, N, 10 + (uint64_t)step, 1.0);
    check(cuda_adamw_step(p, g, m, v, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, step, N, NULL) == 0,
          "cuda_adamw_step returns 0");
    ref_adamw(rp, g, rm, rv, N, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, step);
  }
  /* Three steps of float32 rounding: each moves p by about lr, so allow 1e-5 * lr. */
  for (int i = 0; i < N; i++) tol[i] = 1e-7 + 1e-5 * fabs(rp[i]);
  check(close_to(p, rp, tol, N, 1.0), "cuda_adamw_step params after 3 steps");
}

static void test_argmax(void) {
  enum { R = 4, V = 33 };
  float x[R * V];
  int32_t out[R];
  fill(x, R * V, 11, 1.0);
  x[1 * V + 5] = x[1 * V + 20] = 9.0f; /* a tie: the first index wins */
  check(cuda_argmax(x, out, R, V, NULL) == CUDANN_SUCCESS, "cuda_argmax returns 0");
  int ok = out[1] == 5;
  for (int r = 0; r < R; r++) ok &= out[r] == ref_argmax(x + r * V, V);
  check(ok, "cuda_argmax values, first index on ties");
}

static void test_error_path(void) {
  float logits[8] = {0};
  int32_t out[2] = {-7, -7};
  uint64_t seeds[2] = {1, 2};
  check(cuda_topk_sample(logits, out, seeds, 2, 4, 0, 1.0f, NULL) == CUDANN_INVALID_VALUE,
        "cuda_topk_sample k=0 returns CUDANN_INVALID_VALUE");
  check(strcmp(cudann_last_error(), "cuda_topk_sample: k must be >= 1 (got 0)") == 0,
        "cudann_last_error names the function and argument");
  check(out[0] == -7 && out[1] == -7, "output untouched on error");
  check(cuda_silu(logits, logits, 8, NULL) == 0 && cudann_last_error()[0] == '\0',
        "a successful call clears cudann_last_error");
  check(strlen(cudann_version()) > 0, "cudann_version is set");
}

int main(void) {
  test_silu_add();
  test_softmax();
  test_rmsnorm();
  test_gemm();
  test_cross_entropy();
  test_adamw();
  test_argmax();
  test_error_path();
  return summary("test_c");
}
