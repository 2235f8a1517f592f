/* Double-precision references and value checks shared by test_c.c and
 * test_cpp.cpp. Valid C11 and C++17; every function is static inline so a
 * program may use any subset without unused-function warnings. */
#ifndef REFCHECK_H
#define REFCHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int g_checks, g_failures;

/* Records one check; prints what failed, so a red run says why. */
static inline void check(int ok, const char *what) {
  g_checks++;
  if (!ok) {
    g_failures++;
    fprintf(stderr, "FAIL: %s\n", what);
  }
}

/* |got - want| <= rtol * scale (+ tiny), elementwise; scale NULL means |want|. */
static inline int close_to(const float *got, const double *want, const double *scale, int64_t n,
                           double rtol) {
  for (int64_t i = 0; i < n; i++) {
    double s = scale ? scale[i] : fabs(want[i]);
    if (!(fabs((double)got[i] - want[i]) <= rtol * s + 1e-30)) {
      fprintf(stderr, "  [%lld] got %.9g want %.9g\n", (long long)i, (double)got[i], want[i]);
      return 0;
    }
  }
  return 1;
}

/* Deterministic data in [-amp, amp): a 64-bit LCG, no libc rand state. */
static inline void fill(float *x, int64_t n, uint64_t seed, double amp) {
  uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (int64_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x[i] = (float)(amp * (2.0 * (double)(s >> 11) / 9007199254740992.0 - 1.0));
  }
}

static inline void ref_silu(const float *x, double *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0 + exp(-(double)x[i]));
}

/* Row-wise log-softmax (max subtracted); softmax is exp of it. */
static inline void ref_log_softmax(const float *x, double *y, int rows, int cols) {
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (int64_t)r * cols;
    double m = -INFINITY, s = 0.0;
    for (int c = 0; c < cols; c++) m = xr[c] > m ? xr[c] : m;
    for (int c = 0; c < cols; c++) s += exp(xr[c] - m);
    for (int c = 0; c < cols; c++) y[(int64_t)r * cols + c] = xr[c] - m - log(s);
  }
}

static inline void ref_rmsnorm(const float *x, const float *w, double *y, int rows, int dim,
                               double eps) {
  for (int r = 0; r < rows; r++) {
    double ss = 0.0;
    for (int c = 0; c < dim; c++) ss += (double)x[r * dim + c] * x[r * dim + c];
    double inv = 1.0 / sqrt(ss / dim + eps);
    for (int c = 0; c < dim; c++) y[r * dim + c] = x[r * dim + c] * inv * w[c];
  }
}

/* C = alpha A B + beta C0, and the error scale |alpha| |A| |B| + |beta| |C0|. */
static inline void ref_gemm(const float *a, const float *b, const float *c0, double *c,
                            double *bound, int m, int n, int k, double alpha, double beta) {
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      double s = 0.0, sa = 0.0;
      for (int p = 0; p < k; p++) {
        s += (double)a[i * k + p] * b[p * n + j];
        sa += fabs((double)a[i * k + p] * b[p * n + j]);
      }
      c[i * n + j] = alpha * s + beta * c0[i * n + j];
      bound[i * n + j] = fabs(alpha) * sa + fabs(beta) * fabs((double)c0[i * n + j]);
    }
}

/* One AdamW step in double from float state; p, m, v are updated in place. */
static inline void ref_adamw(double *p, const float *g, double *m, double *v, int64_t n, double lr,
                             double b1, double b2, double eps, double wd, int step) {
  for (int64_t i = 0; i < n; i++) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * (double)g[i] * g[i];
    double mh = m[i] / (1 - pow(b1, step)), vh = v[i] / (1 - pow(b2, step));
    p[i] -= lr * (mh / (sqrt(vh) + eps) + wd * p[i]);
  }
}

static inline int ref_argmax(const float *x, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

/* The closing line; the exit status is non-zero on any failure. */
static inline int summary(const char *program) {
  printf("%s: %d checks, %d passed, %d failed\n", program, g_checks, g_checks - g_failures,
         g_failures);
  return g_failures ? 1 : 0;
}

#endif /* REFCHECK_H */
