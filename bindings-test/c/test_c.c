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

/* cudann_gemm_ex: a batch of 2 sharing B (stride 0), B transposed, rows padded. */
static void test_gemm_ex(void) {
  enum { M = 3, N = 5, K = 4, PAD = 2, BATCH = 2, LDA = K + PAD, LDB = K, LDC = N + PAD };
  float a[BATCH * M * LDA], b[N * LDB], c[BATCH * M * LDC];
  double want[BATCH * M * LDC];
  fill(a, BATCH * M * LDA, 8, 1.0);
  fill(b, N * LDB, 9, 1.0);
  for (int i = 0; i < BATCH * M * LDC; i++) c[i] = -7.0f, want[i] = -7.0;
  for (int t = 0; t < BATCH; t++)
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        double s = 0;
        for (int p = 0; p < K; p++) s += (double)a[t * M * LDA + i * LDA + p] * b[j * LDB + p];
        want[t * M * LDC + i * LDC + j] = s;
      }
  int32_t rc = cudann_gemm_ex(0, 1, M, N, K, 1.0f, a, CUDANN_F32, LDA, M * LDA, b, CUDANN_F32, LDB, 0, 0.0f, c, CUDANN_F32, LDC,
                              M * LDC, BATCH, NULL);
  check(rc == CUDANN_SUCCESS, "cudann_gemm_ex returns 0");
  check(close_to(c, want, NULL, BATCH * M * LDC, 1e-5), "cudann_gemm_ex values, padding untouched");
  rc = cudann_gemm_ex(0, 1, M, N, K, 1.0f, a, 7, LDA, 0, b, CUDANN_F32, LDB, 0, 0.0f, c, CUDANN_F32, LDC, 0, 1, NULL);
  check(rc == CUDANN_INVALID_VALUE && strstr(cudann_last_error(), "a_type must be"), "cudann_gemm_ex refuses an unknown data type");
}

/* SwiGLU forward and backward against the derivative of silu(g) * u. */
static void test_swiglu(void) {
  enum { N = 257 };
  float g[N], u[N], dy[N], y[N], dg[N], du[N];
  double want_y[N], want_dg[N], want_du[N];
  fill(g, N, 10, 6.0);
  fill(u, N, 11, 2.0);
  fill(dy, N, 12, 1.0);
  for (int i = 0; i < N; i++) {
    double s = 1.0 / (1.0 + exp(-(double)g[i]));
    want_y[i] = g[i] * s * u[i];
    want_dg[i] = dy[i] * (double)u[i] * s * (1.0 + g[i] * (1.0 - s));
    want_du[i] = dy[i] * g[i] * s;
  }
  check(cudann_swiglu(g, u, y, N, CUDANN_F32, NULL) == CUDANN_SUCCESS, "cudann_swiglu returns 0");
  check(close_to(y, want_y, NULL, N, 1e-6), "cudann_swiglu values");
  check(cudann_swiglu_backward(dy, g, u, dg, du, N, NULL) == CUDANN_SUCCESS, "cudann_swiglu_backward returns 0");
  check(close_to(dg, want_dg, NULL, N, 1e-5) && close_to(du, want_du, NULL, N, 1e-6), "cudann_swiglu_backward values");
}

/* One decoding step: a query at the cache's last position against every key. */
static void test_attention_decode(void) {
  enum { S = 6, H = 2, D = 4, CAP = 8 };
  float q[H * D], k[S * D], v[S * D], kc[CAP * D], vc[CAP * D], out[H * D], lse[H];
  double want[H * D];
  fill(q, H * D, 13, 1.0);
  fill(k, S * D, 14, 1.0);
  fill(v, S * D, 15, 1.0);
  check(cudann_kv_cache_write(k, v, kc, vc, 1, S, CAP, 1, D, 0, CUDANN_F32, NULL) == CUDANN_SUCCESS, "cudann_kv_cache_write");
  check(cudann_attention_forward(q, kc, vc, NULL, out, lse, 1, 1, S, CAP, H, 1, D, S - 1, 1, 0.5f, CUDANN_F32, NULL) == CUDANN_SUCCESS,
        "cudann_attention_forward returns 0");
  for (int h = 0; h < H; h++) {
    double score[S], m = -INFINITY, z = 0;
    for (int j = 0; j < S; j++) {
      score[j] = 0;
      for (int d = 0; d < D; d++) score[j] += 0.5 * q[h * D + d] * k[j * D + d];
      m = score[j] > m ? score[j] : m;
    }
    for (int j = 0; j < S; j++) z += exp(score[j] - m);
    for (int d = 0; d < D; d++) {
      want[h * D + d] = 0;
      for (int j = 0; j < S; j++) want[h * D + d] += exp(score[j] - m) / z * v[j * D + d];
    }
  }
  check(close_to(out, want, NULL, H * D, 1e-5), "cudann_attention_forward decode values");
}

/* A checkpoint written and read back through the library. */
static void test_safetensors(void) {
  float w[6] = {1, -2, 3, -4, 5, -6}, got[6] = {0};
  int64_t shape[2] = {2, 3}, dims[4] = {0}, count = 0;
  int dtype = -1, ndim = -1;
  const char *path = "bindings-test/c/build/test_c.safetensors"; /* run.sh runs from the repository root */
  CudannSafetensorsWriter *writer = NULL;
  CudannSafetensors *file = NULL;
  check(cudann_safetensors_writer_create(&writer) == 0 && cudann_safetensors_writer_add(writer, "w", CUDANN_F32, 2, shape, w, NULL) == 0 &&
            cudann_safetensors_writer_save(writer, path) == 0 && cudann_safetensors_writer_free(writer) == 0,
        "cudann_safetensors_writer_* write a file");
  check(cudann_safetensors_open(path, &file) == 0 && cudann_safetensors_count(file, &count) == 0 && count == 1, "cudann_safetensors_open");
  check(cudann_safetensors_info(file, "w", &dtype, &ndim, dims, 4) == 0 && dtype == CUDANN_F32 && ndim == 2 && dims[0] == 2 && dims[1] == 3,
        "cudann_safetensors_info");
  check(cudann_safetensors_read(file, "w", CUDANN_F32, got, 6, NULL) == 0 && memcmp(got, w, sizeof w) == 0, "cudann_safetensors_read");
  check(cudann_safetensors_close(file) == 0 && cudann_safetensors_close(file) == CUDANN_INVALID_VALUE, "a closed handle is refused");
}

/* cudann_malloc'd memory as a GPU program uses it: upload from C arrays, three
 * ops on a library stream (rmsnorm, softmax of its output, silu in place on the
 * input rmsnorm read first), synchronize, download, check, free. */
static void *dev_alloc(int64_t bytes) {
  void *p = NULL;
  check(cudann_malloc(&p, bytes) == CUDANN_SUCCESS && p != NULL, "cudann_malloc returns 0 and a pointer");
  return p;
}

static void test_device_memory(void) {
  enum { R = 13, D = 257, N = R * D };
  float *x = floats(N), *w = floats(D), *y = floats(N), *s = floats(N), *z = floats(N);
  double *want = doubles(N);
  fill(x, N, 16, 3.0);
  fill(w, D, 17, 1.0);
  float *dx = dev_alloc(N * 4), *dw = dev_alloc(D * 4), *dy = dev_alloc(N * 4), *ds = dev_alloc(N * 4);
  void *stream = NULL;
  check(cudann_stream_create(&stream) == CUDANN_SUCCESS && stream != NULL, "cudann_stream_create");
  check(cudann_memcpy(dx, x, N * 4, stream) == 0 && cudann_memcpy(dw, w, D * 4, stream) == 0, "cudann_memcpy uploads");
  /* All bytes 0xff is a NaN: any output element the ops miss shows. */
  check(cudann_memset(dy, 0xff, N * 4, stream) == 0 && cudann_memset(ds, 0xff, N * 4, stream) == 0, "cudann_memset");
  check(cuda_rmsnorm(dx, dw, dy, R, D, 1e-5f, stream) == CUDANN_SUCCESS, "cuda_rmsnorm on library memory");
  check(cuda_softmax(dy, ds, R, D, stream) == CUDANN_SUCCESS, "cuda_softmax on library memory");
  check(cuda_silu(dx, dx, N, stream) == CUDANN_SUCCESS, "cuda_silu in place on library memory");
  check(cudann_stream_synchronize(stream) == CUDANN_SUCCESS, "cudann_stream_synchronize");
  for (int i = 0; i < N; i++) y[i] = s[i] = z[i] = NAN;
  check(cudann_memcpy(y, dy, N * 4, NULL) == 0 && cudann_memcpy(s, ds, N * 4, NULL) == 0 &&
            cudann_memcpy(z, dx, N * 4, NULL) == 0,
        "cudann_memcpy downloads");
  ref_rmsnorm(x, w, want, R, D, (double)1e-5f);
  check(close_to(y, want, NULL, N, 1e-5), "cuda_rmsnorm values from library memory");
  ref_log_softmax(y, want, R, D); /* of the rmsnorm output the library computed */
  for (int i = 0; i < N; i++) want[i] = exp(want[i]);
  check(close_to(s, want, NULL, N, 1e-5), "cuda_softmax values from library memory");
  ref_silu(x, want, N);
  check(close_to(z, want, NULL, N, 5e-7), "cuda_silu values from library memory (after rmsnorm read x)");
  check(cudann_stream_destroy(stream) == CUDANN_SUCCESS, "cudann_stream_destroy");
  check(cudann_free(dx) == 0 && cudann_free(dw) == 0 && cudann_free(dy) == 0 && cudann_free(ds) == 0, "cudann_free");
  check(cudann_free(dx) == CUDANN_INVALID_VALUE && strstr(cudann_last_error(), "already freed"),
        "a double free is -2, \"already freed\"");
  check(cudann_free(NULL) == CUDANN_SUCCESS, "cudann_free(NULL) does nothing");
  free(x), free(w), free(y), free(s), free(z), free(want);
}

/* Misuse of library memory and streams is -2 and writes nothing. */
static void test_device_misuse(void) {
  float ramp[16], host[32], back[16];
  for (int i = 0; i < 16; i++) ramp[i] = (float)i;
  for (int i = 0; i < 32; i++) host[i] = 7.0f;
  float *buf = dev_alloc(sizeof ramp);
  check(cudann_memcpy(buf, ramp, sizeof ramp, NULL) == 0, "upload 64 bytes");
  check(cudann_memcpy(host, buf, sizeof host, NULL) == CUDANN_INVALID_VALUE &&
            strstr(cudann_last_error(), "pass the end of a 64-byte allocation"),
        "a download past the end of an allocation is -2");
  int untouched = 1;
  for (int i = 0; i < 32; i++) untouched &= host[i] == 7.0f;
  check(untouched, "the host destination is untouched");
  check(cudann_memcpy(buf + 8, host, 9 * 4, NULL) == CUDANN_INVALID_VALUE, "an upload past the end is -2");
  check(cudann_memset(buf, 0, -1, NULL) == CUDANN_INVALID_VALUE, "cudann_memset with bytes < 0 is -2");
  check(cudann_free(buf + 1) == CUDANN_INVALID_VALUE, "freeing an interior pointer is -2");
  memset(back, 0, sizeof back);
  check(cudann_memcpy(back, buf, sizeof back, NULL) == 0 && memcmp(back, ramp, sizeof ramp) == 0,
        "the allocation is intact after the refused calls");
  void *p = &p;
  check(cudann_malloc(&p, -1) == CUDANN_INVALID_VALUE && p == &p, "cudann_malloc(bytes < 0) is -2, *ptr untouched");
  check(cudann_malloc(NULL, 16) == CUDANN_INVALID_VALUE, "cudann_malloc(NULL) is -2");
  check(cudann_malloc(&p, 0) == 0 && p == NULL, "cudann_malloc(0) stores NULL");

  void *stream = NULL;
  check(cudann_stream_create(&stream) == 0 && cudann_stream_destroy(stream) == 0, "a stream created and destroyed");
  check(cudann_stream_destroy(stream) == CUDANN_INVALID_VALUE && strstr(cudann_last_error(), "destroyed"),
        "destroying it again is -2");
  check(cudann_stream_synchronize(stream) == CUDANN_INVALID_VALUE, "synchronizing a destroyed stream is -2");
  check(cudann_memcpy(back, buf, sizeof back, stream) == CUDANN_INVALID_VALUE, "a copy on a destroyed stream is -2");
  for (int i = 0; i < 16; i++) host[i] = 7.0f;
  check(cuda_silu(buf, host, 16, stream) == CUDANN_INVALID_VALUE && host[0] == 7.0f && host[15] == 7.0f,
        "an op on a destroyed stream is -2 and writes nothing");
  check(cudann_stream_destroy(NULL) == CUDANN_INVALID_VALUE, "destroying the default stream is -2");
  check(cudann_free(buf) == 0, "cudann_free");
}

static void test_devices_and_backend(void) {
  const char *backend = cudann_backend();
  int cpu = strncmp(backend, "cpu: ", 5) == 0;
  check(cpu || strncmp(backend, "cuda: ", 6) == 0, "cudann_backend starts with \"cpu: \" or \"cuda: \"");
  int count = -1, device = -1;
  check(cudann_device_count(&count) == 0 && count >= 0 && (count == 0) == cpu, "cudann_device_count (0 on cpu)");
  check(cudann_set_device(0) == 0 && cudann_get_device(&device) == 0 && device == 0, "cudann_set_device(0)");
  check(cudann_set_device(count > 0 ? count : 1) == CUDANN_INVALID_VALUE, "a device that does not exist is -2");
  int64_t free_bytes = -1, total_bytes = -1;
  check(cudann_mem_info(&free_bytes, &total_bytes) == 0 && 0 < free_bytes && free_bytes <= total_bytes,
        "cudann_mem_info: 0 < free <= total");
  check(cudann_mem_info(NULL, &total_bytes) == CUDANN_INVALID_VALUE, "cudann_mem_info(NULL) is -2");
  check(cudann_device_synchronize() == 0, "cudann_device_synchronize");
  float src[4] = {1, 2, 3, 4}, dst[4] = {0};
  void *pinned = NULL;
  check(cudann_malloc_host(&pinned, sizeof src) == 0 && cudann_memcpy(pinned, src, sizeof src, NULL) == 0 &&
            cudann_memcpy(dst, pinned, sizeof dst, NULL) == 0 && memcmp(dst, src, sizeof src) == 0 &&
            cudann_free(pinned) == 0,
        "cudann_malloc_host memory round trip");
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
  test_gemm_ex();
  test_swiglu();
  test_attention_decode();
  test_safetensors();
  test_device_memory();
  test_device_misuse();
  test_devices_and_backend();
  return summary("test_c");
}
