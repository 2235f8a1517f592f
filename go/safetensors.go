package cudann

/*
#include "cudann.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// dataOf is the pointer, data type and element count of checkpoint data: a
// []float32, []int32, []int64, []float64 or []uint8 slice.
func dataOf(fn string, data any) (unsafe.Pointer, DType, int64, error) {
	p, bytes, err := hostBytes(fn, data)
	if err != nil {
		return nil, 0, 0, err
	}
	var t DType
	switch data.(type) {
	case []float32:
		t = F32
	case []int32:
		t = I32
	case []int64:
		t = I64
	case []float64:
		t = F64
	case []byte:
		t = U8
	default:
		return nil, 0, 0, &Error{Code: InvalidValue, Msg: fmt.Sprintf("cudann.%s: no checkpoint data type for %T", fn, data)}
	}
	return p, t, bytes / t.Size(), nil
}

// Safetensors is a safetensors file open for reading (cudann_safetensors_open).
type Safetensors struct{ h *C.CudannSafetensors }

// OpenSafetensors opens and checks a safetensors file.
func OpenSafetensors(path string) (*Safetensors, error) {
	var h *C.CudannSafetensors
	if err := callStr(path, func(p *C.char) C.int32_t { return C.cudann_safetensors_open(p, &h) }); err != nil {
		return nil, err
	}
	return &Safetensors{h}, nil
}

func (f *Safetensors) closedErr(fn string) error {
	if f.h == nil {
		return &Error{Code: InvalidValue, Msg: "cudann.Safetensors." + fn + ": the file is closed"}
	}
	return nil
}

// Close closes the file (cudann_safetensors_close).
func (f *Safetensors) Close() error {
	if err := f.closedErr("Close"); err != nil {
		return err
	}
	if err := call(func() C.int32_t { return C.cudann_safetensors_close(f.h) }); err != nil {
		return err
	}
	f.h = nil
	return nil
}

// Count is the number of tensors in the file.
func (f *Safetensors) Count() (int, error) {
	if err := f.closedErr("Count"); err != nil {
		return 0, err
	}
	var n C.int64_t
	err := call(func() C.int32_t { return C.cudann_safetensors_count(f.h, &n) })
	return int(n), err
}

// Name is the name of tensor index (in the order of the data in the file).
func (f *Safetensors) Name(index int) (string, error) {
	if err := f.closedErr("Name"); err != nil {
		return "", err
	}
	var name *C.char
	err := call(func() C.int32_t { return C.cudann_safetensors_name(f.h, C.int64_t(index), &name) })
	return C.GoString(name), err
}

// Names lists every tensor's name.
func (f *Safetensors) Names() ([]string, error) {
	n, err := f.Count()
	names := make([]string, 0, n)
	for i := 0; i < n && err == nil; i++ {
		var name string
		if name, err = f.Name(i); err == nil {
			names = append(names, name)
		}
	}
	return names, err
}

// maxDims bounds the shapes Info reads.
const maxDims = 16

// Info is a tensor's data type and shape.
func (f *Safetensors) Info(name string) (DType, []int64, error) {
	if err := f.closedErr("Info"); err != nil {
		return 0, nil, err
	}
	var dt, ndim C.int
	shape := make([]int64, maxDims)
	err := callStr(name, func(s *C.char) C.int32_t {
		return C.cudann_safetensors_info(f.h, s, &dt, &ndim, (*C.int64_t)(unsafe.Pointer(&shape[0])), maxDims)
	})
	if err != nil {
		return 0, nil, err
	}
	return DType(dt), shape[:ndim], nil
}

// Read fills data (a []float32, []int32, []int64, []float64 or []uint8 of the
// stored type and element count) with tensor name (cudann_safetensors_read).
func (f *Safetensors) Read(name string, data any) error {
	p, t, n, err := dataOf("Safetensors.Read", data)
	if err != nil {
		return err
	}
	return f.read(name, t, p, n)
}

// ReadRaw fills data with the bytes of tensor name of data type t (for the
// types without a Go slice type: F16, BF16).
func (f *Safetensors) ReadRaw(name string, t DType, data []byte) error {
	if t.Size() == 0 || int64(len(data))%t.Size() != 0 {
		return &Error{Code: InvalidValue, Msg: fmt.Sprintf("cudann.Safetensors.ReadRaw: %d bytes are not a whole number of elements of type %d", len(data), t)}
	}
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	return f.read(name, t, p, int64(len(data))/t.Size())
}

func (f *Safetensors) read(name string, t DType, p unsafe.Pointer, n int64) error {
	dt, shape, err := f.Info(name)
	if err != nil {
		return err
	}
	want := int64(1)
	for _, d := range shape {
		want *= d
	}
	if dt != t || n != want {
		return &Error{Code: InvalidValue, Msg: fmt.Sprintf(
			"cudann.Safetensors.Read: %q holds %d elements of type %d, not %d of type %d", name, want, dt, n, t)}
	}
	return callStr(name, func(s *C.char) C.int32_t {
		return C.cudann_safetensors_read(f.h, s, C.int(t), p, C.int64_t(n), nil)
	})
}

// SafetensorsWriter assembles a safetensors file (cudann_safetensors_writer_create).
type SafetensorsWriter struct{ h *C.CudannSafetensorsWriter }

// NewSafetensorsWriter starts an empty file.
func NewSafetensorsWriter() (*SafetensorsWriter, error) {
	var h *C.CudannSafetensorsWriter
	if err := call(func() C.int32_t { return C.cudann_safetensors_writer_create(&h) }); err != nil {
		return nil, err
	}
	return &SafetensorsWriter{h}, nil
}

func (w *SafetensorsWriter) closedErr(fn string) error {
	if w.h == nil {
		return &Error{Code: InvalidValue, Msg: "cudann.SafetensorsWriter." + fn + ": the writer is closed"}
	}
	return nil
}

// Add copies data (a []float32, []int32, []int64, []float64 or []uint8 of
// as many elements as shape implies) in as tensor name.
func (w *SafetensorsWriter) Add(name string, shape []int64, data any) error {
	p, t, n, err := dataOf("SafetensorsWriter.Add", data)
	if err != nil {
		return err
	}
	return w.add(name, t, shape, p, n)
}

// AddRaw adds the bytes of a tensor of data type t (F16, BF16, ...).
func (w *SafetensorsWriter) AddRaw(name string, t DType, shape []int64, data []byte) error {
	if t.Size() == 0 {
		return &Error{Code: InvalidValue, Msg: fmt.Sprintf("cudann.SafetensorsWriter.AddRaw: unknown data type %d", t)}
	}
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	return w.add(name, t, shape, p, int64(len(data))/t.Size())
}

func (w *SafetensorsWriter) add(name string, t DType, shape []int64, p unsafe.Pointer, n int64) error {
	if err := w.closedErr("Add"); err != nil {
		return err
	}
	want := int64(1)
	for _, d := range shape {
		if d < 0 {
			want = -1
			break
		}
		want *= d
	}
	if n != want || int64(len(shape)) > maxDims {
		return &Error{Code: InvalidValue, Msg: fmt.Sprintf("cudann.SafetensorsWriter.Add: %q: %d elements for the shape %v", name, n, shape)}
	}
	var ps *C.int64_t
	if len(shape) > 0 {
		ps = (*C.int64_t)(unsafe.Pointer(&shape[0]))
	}
	return callStr(name, func(s *C.char) C.int32_t {
		return C.cudann_safetensors_writer_add(w.h, s, C.int(t), C.int(len(shape)), ps, p, nil)
	})
}

// Save writes every tensor added so far to path (atomically, through a
// temporary file); the writer stays usable.
func (w *SafetensorsWriter) Save(path string) error {
	if err := w.closedErr("Save"); err != nil {
		return err
	}
	return callStr(path, func(p *C.char) C.int32_t { return C.cudann_safetensors_writer_save(w.h, p) })
}

// Close releases the writer and its data (cudann_safetensors_writer_free).
func (w *SafetensorsWriter) Close() error {
	if err := w.closedErr("Close"); err != nil {
		return err
	}
	if err := call(func() C.int32_t { return C.cudann_safetensors_writer_free(w.h) }); err != nil {
		return err
	}
	w.h = nil
	return nil
}
