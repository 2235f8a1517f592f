// Package oldstyle links libcudann the way callers written before cudann.h did:
// prototypes declared by hand in the cgo preamble, no header. If the library's
// symbols or parameter order changed, these calls would link but compute garbage
// (or fail to link), which the tests would catch.
package oldstyle

// Linked as the cudann package is: pkg-config, or -lcudann with CGO_LDFLAGS
// under the cudann_nopkgconfig tag (link_*.go). It is internal: a test of
// the library's ABI, not part of the module's API.

/*
#include <stdint.h>

extern int32_t cuda_silu(const float* input, float* output, int64_t n, void* stream);
extern int32_t cuda_scale(const float* input, float* output, float scale, int64_t n, void* stream);
extern int32_t cuda_gemm(const float* A, const float* B, float* C,
                         int M, int N, int K, float alpha, float beta, void* stream);
extern int32_t cuda_argmax(const float* logits, int32_t* output, int batch, int vocab_size, void* stream);
*/
import "C"

import "unsafe"

func fp(x []float32) *C.float { return (*C.float)(unsafe.Pointer(&x[0])) }

// Each returns the raw status code, as old callers test `!= 0`.

func Silu(in, out []float32, n int64) int {
	return int(C.cuda_silu(fp(in), fp(out), C.int64_t(n), nil))
}

func Scale(in, out []float32, scale float32, n int64) int {
	return int(C.cuda_scale(fp(in), fp(out), C.float(scale), C.int64_t(n), nil))
}

func Gemm(a, b, c []float32, m, n, k int, alpha, beta float32) int {
	return int(C.cuda_gemm(fp(a), fp(b), fp(c), C.int(m), C.int(n), C.int(k), C.float(alpha), C.float(beta), nil))
}

func Argmax(logits []float32, out []int32, rows, vocab int) int {
	return int(C.cuda_argmax(fp(logits), (*C.int32_t)(unsafe.Pointer(&out[0])), C.int(rows), C.int(vocab), nil))
}
