// Package cudann is a cgo binding of libcudann through include/cudann.h. The
// wrappers take Go slices; lengths are the caller's business, as in C.
package cudann

/*
#cgo CFLAGS: -I${SRCDIR}/../../../include
#cgo LDFLAGS: -L${SRCDIR}/../../../target/release -lcudann -Wl,-rpath,${SRCDIR}/../../../target/release
#include "cudann.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Error is a non-zero return code with the library's message.
type Error struct {
	Code int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("cudann error %d: %s", e.Code, e.Msg) }

// InvalidValue is CUDANN_INVALID_VALUE.
const InvalidValue = int(C.CUDANN_INVALID_VALUE)

// call runs one entry point and, on failure, reads cudann_last_error. The
// message is thread-local and a goroutine may change OS threads between two
// cgo calls, so both run with the goroutine locked to its thread.
func call(f func() C.int32_t) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if rc := f(); rc != C.CUDANN_SUCCESS {
		return &Error{Code: int(rc), Msg: C.GoString(C.cudann_last_error())}
	}
	return nil
}

// Pointers to slice data; an empty slice is NULL (a zero size may pass NULL).
func fp(x []float32) *C.float {
	if len(x) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(&x[0]))
}

func ip(x []int32) *C.int32_t {
	if len(x) == 0 {
		return nil
	}
	return (*C.int32_t)(unsafe.Pointer(&x[0]))
}

func cip(x []int32) *C.int { return (*C.int)(unsafe.Pointer(ip(x))) }

func up(x []uint64) *C.uint64_t {
	if len(x) == 0 {
		return nil
	}
	return (*C.uint64_t)(unsafe.Pointer(&x[0]))
}

// Version is cudann_version().
func Version() string { return C.GoString(C.cudann_version()) }

func Silu(in, out []float32, n int64) error {
	return call(func() C.int32_t { return C.cuda_silu(fp(in), fp(out), C.int64_t(n), nil) })
}

func Softmax(in, out []float32, rows, cols int) error {
	return call(func() C.int32_t { return C.cuda_softmax(fp(in), fp(out), C.int(rows), C.int(cols), nil) })
}

func RMSNorm(in, weight, out []float32, rows, dim int, eps float32) error {
	return call(func() C.int32_t {
		return C.cuda_rmsnorm(fp(in), fp(weight), fp(out), C.int(rows), C.int(dim), C.float(eps), nil)
	})
}

func Gemm(a, b, c []float32, m, n, k int, alpha, beta float32) error {
	return call(func() C.int32_t {
		return C.cuda_gemm(fp(a), fp(b), fp(c), C.int(m), C.int(n), C.int(k), C.float(alpha), C.float(beta), nil)
	})
}

func CrossEntropyForward(logits []float32, targets []int32, loss, logProbs []float32, rows, vocab int) error {
	return call(func() C.int32_t {
		return C.cuda_cross_entropy_forward(fp(logits), cip(targets), fp(loss), fp(logProbs), C.int(rows), C.int(vocab), nil)
	})
}

func CrossEntropyBackward(logProbs []float32, targets []int32, dLogits []float32, rows, vocab int, scale float32) error {
	return call(func() C.int32_t {
		return C.cuda_cross_entropy_backward(fp(logProbs), cip(targets), fp(dLogits), C.int(rows), C.int(vocab), C.float(scale), nil)
	})
}

func AdamW(param, grad, m, v []float32, lr, beta1, beta2, eps, wd float32, step int, size int64) error {
	return call(func() C.int32_t {
		return C.cuda_adamw_step(fp(param), fp(grad), fp(m), fp(v), C.float(lr), C.float(beta1), C.float(beta2),
			C.float(eps), C.float(wd), C.int(step), C.int64_t(size), nil)
	})
}

func Argmax(logits []float32, out []int32, rows, vocab int) error {
	return call(func() C.int32_t { return C.cuda_argmax(fp(logits), ip(out), C.int(rows), C.int(vocab), nil) })
}

func TopKSample(logits []float32, out []int32, seeds []uint64, rows, vocab, k int, temperature float32) error {
	return call(func() C.int32_t {
		return C.cuda_topk_sample(fp(logits), ip(out), up(seeds), C.int(rows), C.int(vocab), C.int(k), C.float(temperature), nil)
	})
}

func TopPSample(logits []float32, out []int32, seeds []uint64, rows, vocab int, topP, temperature float32) error {
	return call(func() C.int32_t {
		return C.cuda_topp_sample(fp(logits), ip(out), up(seeds), C.int(rows), C.int(vocab), C.float(topP), C.float(temperature), nil)
	})
}
