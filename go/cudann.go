// Package cudann is the Go binding of libcudann, the C-ABI neural-network
// operator library (include/cudann.h, docs/ABI.md).
//
// Tensors are Go slices ([]float32, []int32, []uint64; []uint16 holds the bits
// of float16 or bfloat16 values) or library memory (*Buffer, from Malloc). Every op checks, before calling the library, that
// each tensor holds exactly the number of elements its shape implies (a few
// documented ones, such as RoPE tables and strided GEMM operands, need at
// least that many); a wrong length is an *Error with Code InvalidValue naming
// the argument. A non-zero return code of the library is an *Error carrying
// the code and the message of cudann_last_error().
//
// Every op takes an optional trailing *Stream (nil or absent: the default
// stream). Calls on Go slices are synchronous; calls whose tensors are all
// device memory are enqueued on the stream (see Stream.Synchronize).
//
// The package links -lcudann through pkg-config (package cudann). For an
// uninstalled build tree, build with the tag cudann_nopkgconfig and set
// CGO_CFLAGS and CGO_LDFLAGS instead (see README.md).
package cudann

/*
#include <stdlib.h>
#include "cudann.h"
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// Code is a return code of the library (CUDANN_SUCCESS, ...).
type Code int

// The library's return codes.
const (
	Success      Code = C.CUDANN_SUCCESS
	NotAvailable Code = C.CUDANN_NOT_AVAILABLE
	InvalidValue Code = C.CUDANN_INVALID_VALUE
	LaunchFailed Code = C.CUDANN_LAUNCH_FAILED
	OutOfMemory  Code = C.CUDANN_OUT_OF_MEMORY
	Internal     Code = C.CUDANN_INTERNAL
)

func (c Code) String() string {
	switch c {
	case Success:
		return "CUDANN_SUCCESS"
	case NotAvailable:
		return "CUDANN_NOT_AVAILABLE"
	case InvalidValue:
		return "CUDANN_INVALID_VALUE"
	case LaunchFailed:
		return "CUDANN_LAUNCH_FAILED"
	case OutOfMemory:
		return "CUDANN_OUT_OF_MEMORY"
	case Internal:
		return "CUDANN_INTERNAL"
	}
	return fmt.Sprintf("cudann code %d", int(c))
}

// Error is a failed call: the library's return code and the message of
// cudann_last_error() (e.g. "cuda_topk_sample: k must be >= 1 (got 0)"), or
// an argument this package refused before calling the library (Code
// InvalidValue, the message naming the Go function, e.g. "cudann.Softmax: out
// has 5 elements, want 6 (rows*cols)"). Nothing was written either way.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s (%s)", e.Msg, e.Code) }

// Is makes errors.Is(err, cudann.ErrInvalidValue) (and the other Err values)
// match any *Error of that code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Msg == "" && t.Code == e.Code
}

// Sentinels for errors.Is, one per failure code.
var (
	ErrNotAvailable = &Error{Code: NotAvailable}
	ErrInvalidValue = &Error{Code: InvalidValue}
	ErrLaunchFailed = &Error{Code: LaunchFailed}
	ErrOutOfMemory  = &Error{Code: OutOfMemory}
	ErrInternal     = &Error{Code: Internal}
)

// DType is the data type of a tensor passed as void* (CUDANN_F32, ...).
type DType int

// The data types. Compute ops take F32; Convert, GemmEx and the Ex ops
// (AddEx, SoftmaxEx, SampleEx, SwigluEx, AttentionForwardEx, ...) also F16
// and BF16 ([]uint16 bits in Go); checkpoints store all seven.
const (
	F32  DType = C.CUDANN_F32
	F16  DType = C.CUDANN_F16
	BF16 DType = C.CUDANN_BF16
	I32  DType = C.CUDANN_I32
	I64  DType = C.CUDANN_I64
	F64  DType = C.CUDANN_F64
	U8   DType = C.CUDANN_U8
)

func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case F16:
		return "F16"
	case BF16:
		return "BF16"
	case I32:
		return "I32"
	case I64:
		return "I64"
	case F64:
		return "F64"
	case U8:
		return "U8"
	}
	return fmt.Sprintf("DType(%d)", int(d))
}

// Size is the size of one element in bytes (0 for an unknown type).
func (d DType) Size() int64 {
	switch d {
	case F32, I32:
		return 4
	case F16, BF16:
		return 2
	case I64, F64:
		return 8
	case U8:
		return 1
	}
	return 0
}

// Float32s is float32 tensor data: a Go slice or library memory.
type Float32s interface{ []float32 | *Buffer }

// Floats is tensor data of a floating-point DType: []float32 for F32,
// []uint16 (the bits of each value) for F16 and BF16, or library memory.
type Floats interface{ []float32 | []uint16 | *Buffer }

// Int32s is int32 tensor data (indices, ids, targets, tokens).
type Int32s interface{ []int32 | *Buffer }

// Uint64s is uint64 tensor data (sampling seeds).
type Uint64s interface{ []uint64 | *Buffer }

// call runs one entry point and, on failure, reads cudann_last_error. The
// message is per OS thread and a goroutine may change threads between two
// cgo calls, so both run with the goroutine locked to its thread.
func call(f func() C.int32_t) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if rc := f(); rc != C.CUDANN_SUCCESS {
		return &Error{Code: Code(rc), Msg: C.GoString(C.cudann_last_error())}
	}
	return nil
}

// callStr is call with s passed as a C string.
func callStr(s string, f func(*C.char) C.int32_t) error {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	return call(func() C.int32_t { return f(cs) })
}

// checker collects the first argument error of one op and its stream.
type checker struct {
	fn     string
	err    error
	stream unsafe.Pointer
}

func newChecker(fn string, streams []*Stream) *checker {
	c := &checker{fn: "cudann." + fn}
	switch {
	case len(streams) > 1:
		c.fail("at most one stream may be given (got %d)", len(streams))
	case len(streams) == 1 && streams[0] != nil:
		if streams[0].h == nil {
			c.fail("the stream is closed")
		}
		c.stream = streams[0].h
	}
	return c
}

func (c *checker) fail(format string, a ...any) {
	if c.err == nil {
		c.err = &Error{Code: InvalidValue, Msg: c.fn + ": " + fmt.Sprintf(format, a...)}
	}
}

// size is a dimension: 0 <= v <= INT_MAX.
func (c *checker) size(name string, v int) C.int {
	if v < 0 || v > math.MaxInt32 {
		c.fail("%s must be in [0, %d] (got %d)", name, math.MaxInt32, v)
		return 0
	}
	return C.int(v)
}

// param is an int parameter the library checks itself (it only has to fit a C int).
func (c *checker) param(name string, v int) C.int {
	if v < math.MinInt32 || v > math.MaxInt32 {
		c.fail("%s does not fit a C int (got %d)", name, v)
		return 0
	}
	return C.int(v)
}

// count is the product of dimensions (each checked by size), capped at 2^60.
func (c *checker) count(dims ...int) int64 {
	n := int64(1)
	for _, d := range dims {
		if d < 0 {
			return 0 // reported by size
		}
		if d != 0 && n > (1<<60)/int64(d) {
			c.fail("the shape %v has more than 2^60 elements", dims)
			return 0
		}
		n *= int64(d)
	}
	return n
}

func boolInt(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// length is the number of elements of elem bytes x holds.
func length(x any, elem int64) int64 {
	switch v := x.(type) {
	case []float32:
		return int64(len(v))
	case []int32:
		return int64(len(v))
	case []uint16:
		return int64(len(v))
	case []uint64:
		return int64(len(v))
	case *Buffer:
		if v == nil {
			return 0
		}
		return v.bytes / elem
	}
	return 0
}

// How tensor checks a length.
const (
	exact    = iota // exactly want elements
	atLeast         // at least want elements
	optional        // exactly want elements, or absent (nil or empty): NULL
)

// tensor checks x (a slice or a *Buffer of elements of elem bytes) and
// returns its data pointer (NULL when empty).
func (c *checker) tensor(name string, x any, elem, want int64, mode int) unsafe.Pointer {
	var p unsafe.Pointer
	var n int64
	switch v := x.(type) {
	case []float32:
		if n = int64(len(v)); n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []int32:
		if n = int64(len(v)); n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []uint16:
		if n = int64(len(v)); n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []uint64:
		if n = int64(len(v)); n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case *Buffer:
		if v != nil {
			if v.closed() {
				c.fail("%s is a closed buffer", name)
				return nil
			}
			if v.bytes%elem != 0 {
				c.fail("%s is a buffer of %d bytes, not a whole number of %d-byte elements", name, v.bytes, elem)
				return nil
			}
			p, n = v.p, v.bytes/elem
		}
	default:
		panic(fmt.Sprintf("%s: %s has unsupported type %T", c.fn, name, x))
	}
	switch {
	case mode == optional && n == 0:
		return nil
	case mode == atLeast && n < want:
		c.fail("%s has %d elements, want at least %d", name, n, want)
	case mode != atLeast && n != want:
		c.fail("%s has %d elements, want %d", name, n, want)
	}
	return p
}

// elemOf is the element size of a tensor of data type t held in x: t's size
// for F32, F16 and BF16, where a slice must be of the matching Go type
// ([]float32, []uint16); for another t (the library refuses it), the slice's
// element size (2 for a buffer).
func (c *checker) elemOf(name string, x any, t DType) int64 {
	var goSize int64
	switch x.(type) {
	case []float32:
		goSize = 4
	case []uint16:
		goSize = 2
	}
	switch t {
	case F32, F16, BF16:
		if goSize != 0 && goSize != t.Size() {
			c.fail("%s is a %T, which cannot hold %s data (F32: []float32, F16/BF16: []uint16)", name, x, t)
		}
		return t.Size()
	}
	if goSize != 0 {
		return goSize
	}
	return 2
}

// typed checks a tensor of data type t (see elemOf).
func (c *checker) typed(name string, x any, t DType, want int64, mode int) unsafe.Pointer {
	elem := c.elemOf(name, x, t)
	if c.err != nil {
		return nil
	}
	return c.tensor(name, x, elem, want, mode)
}

// typedLen is the number of elements of data type t that x holds.
func (c *checker) typedLen(name string, x any, t DType) int64 {
	return length(x, c.elemOf(name, x, t))
}

func (c *checker) f32(name string, x any, want int64) *C.float {
	return (*C.float)(c.tensor(name, x, 4, want, exact))
}

func (c *checker) optF32(name string, x any, want int64) *C.float {
	return (*C.float)(c.tensor(name, x, 4, want, optional))
}

func (c *checker) minF32(name string, x any, want int64) *C.float {
	return (*C.float)(c.tensor(name, x, 4, want, atLeast))
}

func (c *checker) i32(name string, x any, want int64) *C.int32_t {
	return (*C.int32_t)(c.tensor(name, x, 4, want, exact))
}

// cint is an int32 tensor the header declares as `int*`.
func (c *checker) cint(name string, x any, want int64) *C.int {
	return (*C.int)(c.tensor(name, x, 4, want, exact))
}

func (c *checker) u64(name string, x any, want int64) *C.uint64_t {
	return (*C.uint64_t)(c.tensor(name, x, 8, want, exact))
}

// run makes the call unless an argument was refused.
func (c *checker) run(f func(stream unsafe.Pointer) C.int32_t) error {
	if c.err != nil {
		return c.err
	}
	return call(func() C.int32_t { return f(c.stream) })
}

// Version is the library version (cudann_version), e.g. "0.1.0".
func Version() string { return C.GoString(C.cudann_version()) }

// Backend says which backend serves calls on this thread, and why
// (cudann_backend), e.g. "cpu: no CUDA driver (libcuda) on this machine".
func Backend() string {
	runtime.LockOSThread() // the string is per thread, valid until its next call
	defer runtime.UnlockOSThread()
	return C.GoString(C.cudann_backend())
}
