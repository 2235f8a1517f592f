// C++17 consumer of cudann.h: the header must compile as C++ (extern "C") and
// link; std::vector buffers are passed by .data(). References: refcheck.h.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cudann.h"
#include "refcheck.h"

namespace {

using F = std::vector<float>;
using D = std::vector<double>;

F random_floats(size_t n, uint64_t seed, double amp) {
  F x(n);
  fill(x.data(), static_cast<int64_t>(n), seed, amp);
  return x;
}

void test_elementwise() {
  const int64_t n = 1000;
  F x = random_floats(n, 21, 8.0), y(n), z(n);
  D want(n);
  check(cuda_silu(x.data(), y.data(), n, nullptr) == CUDANN_SUCCESS, "cuda_silu returns 0");
  ref_silu(x.data(), want.data(), n);
  check(close_to(y.data(), want.data(), nullptr, n, 5e-7), "cuda_silu values");
  check(cuda_add(x.data(), y.data(), z.data(), n, nullptr) == CUDANN_SUCCESS, "cuda_add returns 0");
  for (int64_t i = 0; i < n; i++) want[i] = double(x[i]) + y[i];
  check(close_to(z.data(), want.data(), nullptr, n, 6e-8), "cuda_add values");
}

void test_softmax_rmsnorm() {
  const int rows = 4, cols = 33;
  F x = random_floats(rows * cols, 22, 5.0), w = random_floats(cols, 23, 1.0), y(x.size());
  D want(x.size());
  check(cuda_softmax(x.data(), y.data(), rows, cols, nullptr) == 0, "cuda_softmax returns 0");
  ref_log_softmax(x.data(), want.data(), rows, cols);
  for (double &v : want) v = std::exp(v);
  check(close_to(y.data(), want.data(), nullptr, rows * cols, 1e-5), "cuda_softmax values");
  check(cuda_rmsnorm(x.data(), w.data(), y.data(), rows, cols, 1e-6f, nullptr) == 0,
        "cuda_rmsnorm returns 0");
  ref_rmsnorm(x.data(), w.data(), want.data(), rows, cols, double(1e-6f));
  check(close_to(y.data(), want.data(), nullptr, rows * cols, 1e-5), "cuda_rmsnorm values");
}

void test_gemm() {
  const int m = 31, n = 33, k = 1000;
  F a = random_floats(m * k, 24, 1.0), b = random_floats(k * n, 25, 1.0);
  F c(m * n, NAN);  // beta == 0: C is not read, so NaN must not leak through
  D want(c.size()), bound(c.size());
  F zero(c.size(), 0.0f);
  check(cuda_gemm(a.data(), b.data(), c.data(), m, n, k, 2.0f, 0.0f, nullptr) == 0,
        "cuda_gemm returns 0");
  ref_gemm(a.data(), b.data(), zero.data(), want.data(), bound.data(), m, n, k, 2.0, 0.0);
  check(close_to(c.data(), want.data(), bound.data(), m * n, 1e-5), "cuda_gemm values, beta 0");
}

void test_cross_entropy_forward() {
  const int rows = 3, vocab = 4097;
  F logits = random_floats(rows * vocab, 26, 3.0), lp(logits.size());
  std::vector<int> targets = {4096, -100, 0};
  float loss = -1.0f;
  check(cuda_cross_entropy_forward(logits.data(), targets.data(), &loss, lp.data(), rows, vocab,
                                   nullptr) == 0,
        "cuda_cross_entropy_forward returns 0");
  D ref(logits.size());
  ref_log_softmax(logits.data(), ref.data(), rows, vocab);
  double want = -(ref[4096] + ref[2 * vocab + 0]) / 2.0;  // the padding row is not counted
  check(close_to(&loss, &want, nullptr, 1, 1e-5), "cross-entropy loss");
}

void test_adamw() {
  const int64_t n = 33;
  F p = random_floats(n, 27, 1.0), g = random_floats(n, 28, 1.0), m(n, 0.0f), v(n, 0.0f);
  D rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0), tol(n);
  check(cuda_adamw_step(p.data(), g.data(), m.data(), v.data(), 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 1,
                        n, nullptr) == 0,
        "cuda_adamw_step returns 0");
  ref_adamw(rp.data(), g.data(), rm.data(), rv.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0, 1);
  for (int64_t i = 0; i < n; i++) tol[i] = 1e-7 + 1e-6 * std::fabs(rp[i]);
  check(close_to(p.data(), rp.data(), tol.data(), n, 1.0), "cuda_adamw_step params");
}

void test_argmax() {
  const int rows = 2, vocab = 31;
  F x = random_floats(rows * vocab, 29, 1.0);
  std::vector<int32_t> out(rows, -1);
  check(cuda_argmax(x.data(), out.data(), rows, vocab, nullptr) == 0, "cuda_argmax returns 0");
  check(out[0] == ref_argmax(x.data(), vocab) && out[1] == ref_argmax(x.data() + vocab, vocab),
        "cuda_argmax values");
}

void test_error_path() {
  F in(4, 1.0f), out(4, -7.0f);
  check(cuda_silu(in.data(), out.data(), -1, nullptr) == CUDANN_INVALID_VALUE,
        "cuda_silu n=-1 returns CUDANN_INVALID_VALUE");
  std::string msg = cudann_last_error();
  check(msg.rfind("cuda_silu: n ", 0) == 0, "cudann_last_error names cuda_silu and n");
  check(out == F(4, -7.0f), "output untouched on error");
}

// Library memory from std::vector: upload, cuda_silu in place on a library
// stream, download; a double free is refused.
void test_library_memory() {
  const int64_t n = 1000;
  F x = random_floats(n, 30, 8.0), y(n, NAN);
  D want(n);
  void *buf = nullptr, *stream = nullptr;
  const int64_t bytes = n * int64_t(sizeof(float));
  check(cudann_malloc(&buf, bytes) == 0 && cudann_stream_create(&stream) == 0, "cudann_malloc, stream_create");
  float *dev = static_cast<float *>(buf);
  check(cudann_memcpy(dev, x.data(), bytes, stream) == 0 && cuda_silu(dev, dev, n, stream) == 0 &&
            cudann_stream_synchronize(stream) == 0 && cudann_memcpy(y.data(), dev, bytes, nullptr) == 0,
        "upload, cuda_silu on the stream, download");
  ref_silu(x.data(), want.data(), n);
  check(close_to(y.data(), want.data(), nullptr, n, 5e-7), "cuda_silu values from library memory");
  check(cudann_stream_destroy(stream) == 0 && cudann_free(buf) == 0, "stream_destroy, free");
  check(cudann_free(buf) == CUDANN_INVALID_VALUE &&
            std::string(cudann_last_error()).find("already freed") != std::string::npos,
        "a double free is -2, \"already freed\"");
}

}  // namespace

int main() {
  test_elementwise();
  test_softmax_rmsnorm();
  test_gemm();
  test_cross_entropy_forward();
  test_adamw();
  test_argmax();
  test_error_path();
  test_library_memory();
  return summary("test_cpp");
}
