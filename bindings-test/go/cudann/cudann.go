// Package cudann is a cgo binding of libcudann through include/cudann.h. The
// wrappers take Go slices; lengths are the caller's business, as in C.
package cudann

/*
#cgo CFLAGS: -I${SRCDIR}/../../../include
#cgo LDFLAGS: -L${SRCDIR}/../../../target/release -lcudann -Wl,-rpath,${SRCDIR}/../../../target/release
#include <stdlib.h>
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

// Data types of `void*` tensors (CUDANN_F32, ...).
const (
	F32  = int(C.CUDANN_F32)
	BF16 = int(C.CUDANN_BF16)
	I32  = int(C.CUDANN_I32)
)

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

func vp(x []float32) unsafe.Pointer { return unsafe.Pointer(fp(x)) }

func cip(x []int32) *C.int { return (*C.int)(unsafe.Pointer(ip(x))) }

func up(x []uint64) *C.uint64_t {
	if len(x) == 0 {
		return nil
	}
	return (*C.uint64_t)(unsafe.Pointer(&x[0]))
}

func i64p(x []int64) *C.int64_t {
	if len(x) == 0 {
		return nil
	}
	return (*C.int64_t)(unsafe.Pointer(&x[0]))
}

// buf is a slice's data pointer, data type and length, for the `void*` tensors
// of the safetensors calls.
func buf(data any) (unsafe.Pointer, C.int, C.int64_t) {
	switch x := data.(type) {
	case []float32:
		return vp(x), C.CUDANN_F32, C.int64_t(len(x))
	case []int32:
		return unsafe.Pointer(ip(x)), C.CUDANN_I32, C.int64_t(len(x))
	}
	panic(fmt.Sprintf("cudann: no data type for %T", data))
}

// callStr is call with s passed as a C string.
func callStr(s string, f func(*C.char) C.int32_t) error {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	return call(func() C.int32_t { return f(cs) })
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

// GemmEx is cudann_gemm_ex on float32 buffers; the types are what the library is told they hold.
func GemmEx(transA, transB, m, n, k int, alpha float32, a []float32, aType int, lda, strideA int64,
	b []float32, bType int, ldb, strideB int64, beta float32, c []float32, cType int, ldc, strideC int64, batch int) error {
	return call(func() C.int32_t {
		return C.cudann_gemm_ex(C.int(transA), C.int(transB), C.int(m), C.int(n), C.int(k), C.float(alpha),
			vp(a), C.int(aType), C.int64_t(lda), C.int64_t(strideA), vp(b), C.int(bType), C.int64_t(ldb), C.int64_t(strideB),
			C.float(beta), vp(c), C.int(cType), C.int64_t(ldc), C.int64_t(strideC), C.int(batch), nil)
	})
}

// Swiglu, AttentionForward and Embedding pass CUDANN_F32: their slices are float32.
func Swiglu(gate, u, out []float32, n int64) error {
	return call(func() C.int32_t { return C.cudann_swiglu(vp(gate), vp(u), vp(out), C.int64_t(n), C.CUDANN_F32, nil) })
}

func SwigluBackward(dOut, gate, u, dGate, dUp []float32, n int64) error {
	return call(func() C.int32_t {
		return C.cudann_swiglu_backward(fp(dOut), fp(gate), fp(u), fp(dGate), fp(dUp), C.int64_t(n), nil)
	})
}

func RMSNormBackward(dOut, in, weight, dIn, dWeight []float32, rows, dim int, eps float32) error {
	return call(func() C.int32_t {
		return C.cudann_rmsnorm_backward(fp(dOut), fp(in), fp(weight), fp(dIn), fp(dWeight), C.int(rows), C.int(dim),
			C.float(eps), nil)
	})
}

func AttentionForward(q, k, v, mask, out, lse []float32,
	batch, qLen, kvLen, kvCapacity, heads, kvHeads, headDim, pos0, causal int, scale float32) error {
	return call(func() C.int32_t {
		return C.cudann_attention_forward(vp(q), vp(k), vp(v), fp(mask), vp(out), fp(lse), C.int(batch), C.int(qLen),
			C.int(kvLen), C.int(kvCapacity), C.int(heads), C.int(kvHeads), C.int(headDim), C.int(pos0), C.int(causal),
			C.float(scale), C.CUDANN_F32, nil)
	})
}

func AttentionBackward(dOut, q, k, v, mask, out, lse, dq, dk, dv []float32,
	batch, qLen, kvLen, heads, kvHeads, headDim, pos0, causal int, scale float32) error {
	return call(func() C.int32_t {
		return C.cudann_attention_backward(fp(dOut), fp(q), fp(k), fp(v), fp(mask), fp(out), fp(lse), fp(dq), fp(dk), fp(dv),
			C.int(batch), C.int(qLen), C.int(kvLen), C.int(heads), C.int(kvHeads), C.int(headDim), C.int(pos0), C.int(causal),
			C.float(scale), nil)
	})
}

func Embedding(ids []int32, table, out []float32, nIDs, vocab, dim int) error {
	return call(func() C.int32_t {
		return C.cudann_embedding(ip(ids), vp(table), vp(out), C.int(nIDs), C.int(vocab), C.int(dim), C.CUDANN_F32, nil)
	})
}

func EmbeddingBackward(ids []int32, dOut, dTable []float32, nIDs, vocab, dim int) error {
	return call(func() C.int32_t {
		return C.cudann_embedding_backward(ip(ids), fp(dOut), fp(dTable), C.int(nIDs), C.int(vocab), C.int(dim), nil)
	})
}

func MoeDispatch(in []float32, indices []int32, out []float32, order, offsets []int32, tokens, dim, experts, k int) error {
	return call(func() C.int32_t {
		return C.cudann_moe_dispatch(fp(in), ip(indices), fp(out), ip(order), ip(offsets), C.int(tokens), C.int(dim),
			C.int(experts), C.int(k), nil)
	})
}

func MoeCombine(expertOut, weights []float32, order []int32, out []float32, tokens, dim, k int) error {
	return call(func() C.int32_t {
		return C.cudann_moe_combine(fp(expertOut), fp(weights), ip(order), fp(out), C.int(tokens), C.int(dim), C.int(k), nil)
	})
}

// Safetensors is a file open for reading (cudann_safetensors_open).
type Safetensors struct{ h *C.CudannSafetensors }

func OpenSafetensors(path string) (*Safetensors, error) {
	var h *C.CudannSafetensors
	if err := callStr(path, func(p *C.char) C.int32_t { return C.cudann_safetensors_open(p, &h) }); err != nil {
		return nil, err
	}
	return &Safetensors{h}, nil
}

func (f *Safetensors) Close() error {
	return call(func() C.int32_t { return C.cudann_safetensors_close(f.h) })
}

func (f *Safetensors) Count() (int64, error) {
	var n C.int64_t
	err := call(func() C.int32_t { return C.cudann_safetensors_count(f.h, &n) })
	return int64(n), err
}

func (f *Safetensors) Name(index int64) (string, error) {
	var name *C.char
	err := call(func() C.int32_t { return C.cudann_safetensors_name(f.h, C.int64_t(index), &name) })
	return C.GoString(name), err
}

// Info is a tensor's data type and shape (of at most 8 dimensions).
func (f *Safetensors) Info(name string) (dtype int, shape []int64, err error) {
	var dt, ndim C.int
	shape = make([]int64, 8)
	err = callStr(name, func(s *C.char) C.int32_t {
		return C.cudann_safetensors_info(f.h, s, &dt, &ndim, i64p(shape), C.int(len(shape)))
	})
	return int(dt), shape[:ndim], err
}

// Read fills data ([]float32 or []int32, of the stored type and length) with tensor name.
func (f *Safetensors) Read(name string, data any) error {
	p, dtype, n := buf(data)
	return callStr(name, func(s *C.char) C.int32_t { return C.cudann_safetensors_read(f.h, s, dtype, p, n, nil) })
}

// SafetensorsWriter assembles a file (cudann_safetensors_writer_create).
type SafetensorsWriter struct{ h *C.CudannSafetensorsWriter }

func NewSafetensorsWriter() (*SafetensorsWriter, error) {
	var h *C.CudannSafetensorsWriter
	if err := call(func() C.int32_t { return C.cudann_safetensors_writer_create(&h) }); err != nil {
		return nil, err
	}
	return &SafetensorsWriter{h}, nil
}

// Add copies data ([]float32 or []int32) in as tensor name of the given shape.
func (w *SafetensorsWriter) Add(name string, shape []int64, data any) error {
	p, dtype, _ := buf(data)
	return callStr(name, func(s *C.char) C.int32_t {
		return C.cudann_safetensors_writer_add(w.h, s, dtype, C.int(len(shape)), i64p(shape), p, nil)
	})
}

func (w *SafetensorsWriter) Save(path string) error {
	return callStr(path, func(p *C.char) C.int32_t { return C.cudann_safetensors_writer_save(w.h, p) })
}

func (w *SafetensorsWriter) Free() error {
	return call(func() C.int32_t { return C.cudann_safetensors_writer_free(w.h) })
}

// Mem is memory from cudann_malloc (or cudann_malloc_host): device memory, or
// host memory on the CPU backend. Go never dereferences it.
type Mem struct{ p unsafe.Pointer }

// F32 is the memory as a `float*` argument.
func (m Mem) F32() *C.float { return (*C.float)(m.p) }

// At is the address `bytes` past the start (an interior pointer, for misuse checks).
func (m Mem) At(bytes int) Mem { return Mem{unsafe.Add(m.p, bytes)} }

// Stream is a stream from cudann_stream_create, held as cgo's void*; the zero
// Stream is the default stream (NULL).
type Stream struct{ h unsafe.Pointer }

// Handle is the stream's value as the library handed it out.
func (s Stream) Handle() uintptr { return uintptr(s.h) }

func Malloc(bytes int64) (Mem, error) {
	var p unsafe.Pointer
	err := call(func() C.int32_t { return C.cudann_malloc(&p, C.int64_t(bytes)) })
	return Mem{p}, err
}

func MallocHost(bytes int64) (Mem, error) {
	var p unsafe.Pointer
	err := call(func() C.int32_t { return C.cudann_malloc_host(&p, C.int64_t(bytes)) })
	return Mem{p}, err
}

func (m Mem) Free() error { return call(func() C.int32_t { return C.cudann_free(m.p) }) }

// Upload copies all of src to dst (cudann_memcpy); the length is the caller's business.
func Upload(dst Mem, src []float32, s Stream) error {
	return call(func() C.int32_t { return C.cudann_memcpy(dst.p, vp(src), C.int64_t(4*len(src)), s.h) })
}

// Download fills all of dst from src (cudann_memcpy).
func Download(dst []float32, src Mem, s Stream) error {
	return call(func() C.int32_t { return C.cudann_memcpy(vp(dst), src.p, C.int64_t(4*len(dst)), s.h) })
}

func Memset(m Mem, value int, bytes int64, s Stream) error {
	return call(func() C.int32_t { return C.cudann_memset(m.p, C.int(value), C.int64_t(bytes), s.h) })
}

func NewStream() (Stream, error) {
	var s Stream
	err := call(func() C.int32_t { return C.cudann_stream_create(&s.h) })
	return s, err
}

func (s Stream) Destroy() error {
	return call(func() C.int32_t { return C.cudann_stream_destroy(s.h) })
}

func (s Stream) Synchronize() error {
	return call(func() C.int32_t { return C.cudann_stream_synchronize(s.h) })
}

func DeviceSynchronize() error {
	return call(func() C.int32_t { return C.cudann_device_synchronize() })
}

func DeviceCount() (int, error) {
	var n C.int
	err := call(func() C.int32_t { return C.cudann_device_count(&n) })
	return int(n), err
}

// SetDevice and GetDevice act on the calling OS thread: a goroutine that
// relies on its current device locks itself to its thread first.
func SetDevice(device int) error {
	return call(func() C.int32_t { return C.cudann_set_device(C.int(device)) })
}

func GetDevice() (int, error) {
	var d C.int
	err := call(func() C.int32_t { return C.cudann_get_device(&d) })
	return int(d), err
}

func MemInfo() (free, total int64, err error) {
	var f, t C.int64_t
	err = call(func() C.int32_t { return C.cudann_mem_info(&f, &t) })
	return int64(f), int64(t), err
}

// Backend is cudann_backend(): per thread, and valid until the thread's next
// call, so it is read with the goroutine locked to its thread.
func Backend() string {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return C.GoString(C.cudann_backend())
}

// The ops on library memory, ordered on a stream.

func SiluOn(in, out Mem, n int64, s Stream) error {
	return call(func() C.int32_t { return C.cuda_silu(in.F32(), out.F32(), C.int64_t(n), s.h) })
}

func SoftmaxOn(in, out Mem, rows, cols int, s Stream) error {
	return call(func() C.int32_t { return C.cuda_softmax(in.F32(), out.F32(), C.int(rows), C.int(cols), s.h) })
}

func RMSNormOn(in, weight, out Mem, rows, dim int, eps float32, s Stream) error {
	return call(func() C.int32_t {
		return C.cuda_rmsnorm(in.F32(), weight.F32(), out.F32(), C.int(rows), C.int(dim), C.float(eps), s.h)
	})
}
