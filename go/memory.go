package cudann

/*
#include "cudann.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Buffer is library memory: from Malloc (device memory, or 64-byte-aligned
// host memory on the CPU backend) or MallocHost (page-locked host memory).
// Go never dereferences it: data moves with Upload and Download, and a
// *Buffer is passed to ops wherever a slice is. Close frees it.
//
// A Buffer is not safe for concurrent Close; concurrent ops on it are the
// library's business (as in C).
type Buffer struct {
	p     unsafe.Pointer
	bytes int64
	state *bufState // shared by an allocation and its views
	view  bool
}

type bufState struct{ freed bool }

// Malloc allocates bytes of library memory (cudann_malloc) on the calling
// thread's current device. Its contents are unspecified (zeros on the CPU
// backend). Malloc(0) is an empty buffer.
func Malloc(bytes int64) (*Buffer, error) {
	return alloc("Malloc", bytes, func(p *unsafe.Pointer) C.int32_t { return C.cudann_malloc(p, C.int64_t(bytes)) })
}

// MallocHost allocates bytes of page-locked host memory (cudann_malloc_host),
// the host side of asynchronous copies.
func MallocHost(bytes int64) (*Buffer, error) {
	return alloc("MallocHost", bytes, func(p *unsafe.Pointer) C.int32_t { return C.cudann_malloc_host(p, C.int64_t(bytes)) })
}

// MallocFloat32 is Malloc of n float32 elements, filled from data when data
// is not nil (len(data) must then be n).
func MallocFloat32(n int, data []float32) (*Buffer, error) {
	if data != nil && len(data) != n {
		return nil, &Error{Code: InvalidValue, Msg: fmt.Sprintf("cudann.MallocFloat32: data has %d elements, want %d", len(data), n)}
	}
	b, err := Malloc(4 * int64(n))
	if err == nil && data != nil {
		if err = b.Upload(data); err != nil {
			b.Close()
			return nil, err
		}
	}
	return b, err
}

func alloc(fn string, bytes int64, f func(*unsafe.Pointer) C.int32_t) (*Buffer, error) {
	if bytes < 0 {
		return nil, &Error{Code: InvalidValue, Msg: fmt.Sprintf("cudann.%s: bytes must be >= 0 (got %d)", fn, bytes)}
	}
	var p unsafe.Pointer
	if err := call(func() C.int32_t { return f(&p) }); err != nil {
		return nil, err
	}
	return &Buffer{p: p, bytes: bytes, state: &bufState{}}, nil
}

func (b *Buffer) closed() bool { return b.state.freed }

// Bytes is the size of the buffer in bytes.
func (b *Buffer) Bytes() int64 { return b.bytes }

// Len is the number of float32 (or int32) elements the buffer holds.
func (b *Buffer) Len() int { return int(b.bytes / 4) }

// Ptr is the memory's address, for other libraries (CUDA, cuBLAS, ...); nil
// once closed. Go must not dereference it.
func (b *Buffer) Ptr() unsafe.Pointer {
	if b.closed() {
		return nil
	}
	return b.p
}

// View is the part [offset, offset+bytes) of b, sharing its memory: it can be
// passed to ops and copies, and is invalid once b is closed. Closing a view
// is an error.
func (b *Buffer) View(offset, bytes int64) (*Buffer, error) {
	if offset < 0 || bytes < 0 || offset > b.bytes || bytes > b.bytes-offset {
		return nil, &Error{Code: InvalidValue, Msg: fmt.Sprintf(
			"cudann.Buffer.View: [%d, %d+%d) is outside the %d-byte buffer", offset, offset, bytes, b.bytes)}
	}
	return &Buffer{p: unsafe.Add(b.p, offset), bytes: bytes, state: b.state, view: true}, nil
}

// Close frees the memory (cudann_free, which first waits for the device's
// work). Closing it again is an error; so is closing a view.
func (b *Buffer) Close() error {
	switch {
	case b.view:
		return &Error{Code: InvalidValue, Msg: "cudann.Buffer.Close: a view does not own its memory; close the buffer it came from"}
	case b.closed():
		return &Error{Code: InvalidValue, Msg: "cudann.Buffer.Close: the buffer is already closed"}
	}
	p := b.p
	if err := call(func() C.int32_t { return C.cudann_free(p) }); err != nil {
		return err
	}
	b.state.freed = true
	return nil
}

// hostBytes is the data pointer and size of a host slice.
func hostBytes(fn string, data any) (unsafe.Pointer, int64, error) {
	var p unsafe.Pointer
	var n, elem int64
	switch v := data.(type) {
	case []float32:
		n, elem = int64(len(v)), 4
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []int32:
		n, elem = int64(len(v)), 4
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []uint16:
		n, elem = int64(len(v)), 2
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []uint64:
		n, elem = int64(len(v)), 8
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []int64:
		n, elem = int64(len(v)), 8
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []float64:
		n, elem = int64(len(v)), 8
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []byte:
		n, elem = int64(len(v)), 1
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	default:
		return nil, 0, &Error{Code: InvalidValue, Msg: fmt.Sprintf("cudann.%s: unsupported data type %T", fn, data)}
	}
	return p, n * elem, nil
}

// copyCheck refuses a copy of n bytes into or out of b.
func (b *Buffer) copyCheck(fn string, n int64, streams []*Stream) (unsafe.Pointer, error) {
	c := newChecker(fn, streams)
	if b.closed() {
		c.fail("the buffer is closed")
	} else if n > b.bytes {
		c.fail("%d bytes do not fit the %d-byte buffer", n, b.bytes)
	}
	return c.stream, c.err
}

// Upload copies src (a []float32, []int32, []uint64, []int64, []float64 or
// []byte) to the start of the buffer (cudann_memcpy), which must be large
// enough. It returns once src has been read.
func (b *Buffer) Upload(src any, stream ...*Stream) error {
	p, n, err := hostBytes("Buffer.Upload", src)
	if err != nil {
		return err
	}
	s, err := b.copyCheck("Buffer.Upload", n, stream)
	if err != nil {
		return err
	}
	return call(func() C.int32_t { return C.cudann_memcpy(b.p, p, C.int64_t(n), s) })
}

// Download fills dst (a slice as for Upload) from the start of the buffer,
// which must hold at least as many bytes. It returns once the data is there.
func (b *Buffer) Download(dst any, stream ...*Stream) error {
	p, n, err := hostBytes("Buffer.Download", dst)
	if err != nil {
		return err
	}
	s, err := b.copyCheck("Buffer.Download", n, stream)
	if err != nil {
		return err
	}
	return call(func() C.int32_t { return C.cudann_memcpy(p, b.p, C.int64_t(n), s) })
}

// Float32s downloads the whole buffer as float32 values.
func (b *Buffer) Float32s(stream ...*Stream) ([]float32, error) {
	x := make([]float32, b.bytes/4)
	return x, b.Download(x, stream...)
}

// CopyFrom copies all of src (library memory of at most b's size) to the
// start of b (cudann_memcpy, asynchronous within the device).
func (b *Buffer) CopyFrom(src *Buffer, stream ...*Stream) error {
	s, err := b.copyCheck("Buffer.CopyFrom", src.bytes, stream)
	if err == nil && src.closed() {
		err = &Error{Code: InvalidValue, Msg: "cudann.Buffer.CopyFrom: the source buffer is closed"}
	}
	if err != nil {
		return err
	}
	return call(func() C.int32_t { return C.cudann_memcpy(b.p, src.p, C.int64_t(src.bytes), s) })
}

// Memset sets every byte of the buffer to value (cudann_memset, ordered on
// the stream). 0xff bytes make every float32 a NaN.
func (b *Buffer) Memset(value byte, stream ...*Stream) error {
	s, err := b.copyCheck("Buffer.Memset", 0, stream)
	if err != nil {
		return err
	}
	return call(func() C.int32_t { return C.cudann_memset(b.p, C.int(value), C.int64_t(b.bytes), s) })
}

// Stream is a stream from NewStream: a real CUDA stream on a GPU, a handle
// that does nothing on the CPU backend. A nil *Stream is the default stream.
type Stream struct{ h unsafe.Pointer }

// NewStream creates a stream on the calling thread's current device
// (cudann_stream_create). Close destroys it.
func NewStream() (*Stream, error) {
	var h unsafe.Pointer
	if err := call(func() C.int32_t { return C.cudann_stream_create(&h) }); err != nil {
		return nil, err
	}
	return &Stream{h}, nil
}

// Handle is the stream as the library handed it out (a cudaStream_t on a
// GPU), for other CUDA libraries; nil for the default stream or once closed.
func (s *Stream) Handle() unsafe.Pointer {
	if s == nil {
		return nil
	}
	return s.h
}

// Synchronize waits for all work enqueued on the stream (cudann_stream_synchronize).
func (s *Stream) Synchronize() error {
	if s != nil && s.h == nil {
		return &Error{Code: InvalidValue, Msg: "cudann.Stream.Synchronize: the stream is closed"}
	}
	h := s.Handle()
	return call(func() C.int32_t { return C.cudann_stream_synchronize(h) })
}

// Close destroys the stream (cudann_stream_destroy); work already enqueued
// still completes. Closing it again, or the default stream, is an error.
func (s *Stream) Close() error {
	if s == nil || s.h == nil {
		return &Error{Code: InvalidValue, Msg: "cudann.Stream.Close: the stream is closed (or the default stream)"}
	}
	h := s.h
	if err := call(func() C.int32_t { return C.cudann_stream_destroy(h) }); err != nil {
		return err
	}
	s.h = nil
	return nil
}

// DeviceSynchronize waits for all work on the calling thread's current device.
func DeviceSynchronize() error {
	return call(func() C.int32_t { return C.cudann_device_synchronize() })
}

// DeviceCount is the number of GPUs calls can use: 0 on the CPU backend.
func DeviceCount() (int, error) {
	var n C.int
	err := call(func() C.int32_t { return C.cudann_device_count(&n) })
	return int(n), err
}

// SetDevice makes device the current device of the calling OS thread
// (cudann_set_device). A goroutine that relies on its current device locks
// itself to its thread first (runtime.LockOSThread).
func SetDevice(device int) error {
	c := newChecker("SetDevice", nil)
	d := c.param("device", device)
	return c.run(func(unsafe.Pointer) C.int32_t { return C.cudann_set_device(d) })
}

// GetDevice is the calling OS thread's current device (cudann_get_device).
func GetDevice() (int, error) {
	var d C.int
	err := call(func() C.int32_t { return C.cudann_get_device(&d) })
	return int(d), err
}

// MemInfo is the free and total memory of the current device in bytes (on
// the CPU backend, the machine's available and total memory).
func MemInfo() (free, total int64, err error) {
	var f, t C.int64_t
	err = call(func() C.int32_t { return C.cudann_mem_info(&f, &t) })
	return int64(f), int64(t), err
}
