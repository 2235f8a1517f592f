package cudann

import (
	"fmt"
	"math"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/cudann/cudann/go/internal/ref"
)

func malloc(t *testing.T, bytes int64) Mem {
	t.Helper()
	m, err := Malloc(bytes)
	must(t, err)
	if m.p == nil {
		t.Fatalf("cudann_malloc(%d) stored NULL", bytes)
	}
	return m
}

func nans(n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(math.NaN())
	}
	return x
}

// Library memory as a GPU program uses it: upload from Go slices, three ops on
// a library stream (rmsnorm, softmax of its output, silu in place on the input
// rmsnorm read first), synchronize, download, check against float64, free.
func TestDeviceMemoryPipeline(t *testing.T) {
	rows, dim := 13, 257
	n := rows * dim
	x, w := ref.Rand(40, n, 3), ref.Rand(41, dim, 1)
	dx, dw, dy, ds := malloc(t, int64(4*n)), malloc(t, int64(4*dim)), malloc(t, int64(4*n)), malloc(t, int64(4*n))
	s, err := NewStream()
	must(t, err)
	must(t, Upload(dx, x, s))
	must(t, Upload(dw, w, s))
	must(t, Memset(dy, 0xff, int64(4*n), s)) // all bytes 0xff: NaN, so a missed element shows
	must(t, Memset(ds, 0xff, int64(4*n), s))
	must(t, RMSNormOn(dx, dw, dy, rows, dim, 1e-5, s))
	must(t, SoftmaxOn(dy, ds, rows, dim, s))
	must(t, SiluOn(dx, dx, int64(n), s))
	must(t, s.Synchronize())
	y, sm, z := nans(n), nans(n), nans(n)
	must(t, Download(y, dy, Stream{}))
	must(t, Download(sm, ds, Stream{}))
	must(t, Download(z, dx, Stream{}))
	near(t, "rmsnorm on library memory", y, ref.RMSNorm(x, w, rows, dim, float64(float32(1e-5))), nil, 1e-5)
	near(t, "softmax of the rmsnorm output", sm, ref.Softmax(y, rows, dim), nil, 1e-5)
	near(t, "silu in place after rmsnorm read x", z, ref.Silu(x), nil, 5e-7)
	must(t, s.Destroy())
	for _, m := range []Mem{dx, dw, dy, ds} {
		must(t, m.Free())
	}
	invalid(t, dx.Free(), "already freed")
	must(t, Mem{}.Free()) // NULL: nothing to do
}

// Misuse is -2 and writes nothing.
func TestDeviceMemoryMisuse(t *testing.T) {
	ramp := make([]float32, 16)
	for i := range ramp {
		ramp[i] = float32(i)
	}
	buf := malloc(t, 64)
	must(t, Upload(buf, ramp, Stream{}))
	host := make([]float32, 32)
	for i := range host {
		host[i] = 7
	}
	invalid(t, Download(host, buf, Stream{}), "pass the end of a 64-byte allocation")
	for i, v := range host {
		if v != 7 {
			t.Fatalf("host[%d] = %v after a refused copy, want 7", i, v)
		}
	}
	invalid(t, Upload(buf.At(32), host[:9], Stream{}), "pass the end of a 64-byte allocation")
	invalid(t, Memset(buf, 0, -1, Stream{}), "bytes")
	invalid(t, buf.At(4).Free(), "not the start of a live allocation")
	back := make([]float32, 16)
	must(t, Download(back, buf, Stream{}))
	if !reflect.DeepEqual(back, ramp) {
		t.Errorf("allocation changed by refused calls: %v", back)
	}
	_, err := Malloc(-1)
	invalid(t, err, "bytes")
	if m, err := Malloc(0); err != nil || m.p != nil {
		t.Errorf("cudann_malloc(0) = %v, %v; want NULL, nil", m.p, err)
	}

	s, err := NewStream()
	must(t, err)
	must(t, s.Destroy())
	invalid(t, s.Destroy(), "destroyed")
	invalid(t, s.Synchronize(), "destroyed")
	invalid(t, Download(back, buf, s), "destroyed")
	invalid(t, SiluOn(buf, buf, 16, s), "destroyed")
	must(t, Download(back, buf, Stream{}))
	if !reflect.DeepEqual(back, ramp) {
		t.Errorf("an op on a destroyed stream wrote: %v", back)
	}
	must(t, buf.Free())
}

func TestDevicesAndBackend(t *testing.T) {
	backend := Backend()
	cpu := strings.HasPrefix(backend, "cpu: ")
	if !cpu && !strings.HasPrefix(backend, "cuda: ") {
		t.Fatalf("cudann_backend() = %q", backend)
	}
	count, err := DeviceCount()
	must(t, err)
	if (count == 0) != cpu {
		t.Errorf("%d devices on backend %q", count, backend)
	}
	// The current device is per OS thread: set and read it on one.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	must(t, SetDevice(0))
	if d, err := GetDevice(); err != nil || d != 0 {
		t.Errorf("cudann_get_device = %d, %v after cudann_set_device(0)", d, err)
	}
	missing := count
	if missing == 0 {
		missing = 1
	}
	invalid(t, SetDevice(missing), "")
	free, total, err := MemInfo()
	must(t, err)
	if !(0 < free && free <= total) {
		t.Errorf("cudann_mem_info: free %d, total %d", free, total)
	}
	must(t, DeviceSynchronize())
	pinned, err := MallocHost(16)
	must(t, err)
	src, dst := []float32{1, 2, 3, 4}, make([]float32, 4)
	must(t, Upload(pinned, src, Stream{}))
	must(t, Download(dst, pinned, Stream{}))
	if !reflect.DeepEqual(dst, src) {
		t.Errorf("page-locked round trip: %v", dst)
	}
	must(t, pinned.Free())
}

// Goroutines, each with its own allocations and stream, on whatever OS threads
// the scheduler picks; every error is read on the thread that made it.
func TestDeviceMemoryConcurrentGoroutines(t *testing.T) {
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for g := range errs {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			errs[g] = func() error {
				x := ref.Rand(int64(50+g), 4097, 8)
				m, err := Malloc(int64(4 * len(x)))
				if err != nil {
					return err
				}
				s, err := NewStream()
				if err != nil {
					return err
				}
				y := nans(len(x))
				for _, step := range []error{Upload(m, x, s), SiluOn(m, m, int64(len(x)), s), s.Synchronize(),
					Download(y, m, Stream{}), s.Destroy(), m.Free()} {
					if step != nil {
						return step
					}
				}
				if err := m.Free(); err == nil || !strings.Contains(err.Error(), "already freed") {
					return fmt.Errorf("double free on a goroutine: %v", err)
				}
				return ref.Close(y, ref.Silu(x), nil, 5e-7)
			}()
		}(g)
	}
	wg.Wait()
	for g, err := range errs {
		if err != nil {
			t.Errorf("goroutine %d: %v", g, err)
		}
	}
}

// grow recurses deep enough to make the runtime copy the goroutine's stack,
// with s (its handle a void*, cgo's unsafe.Pointer) live in every frame.
//
//go:noinline
func grow(depth int, s Stream) uintptr {
	var pad [512]byte
	pad[depth%len(pad)] = byte(depth)
	if depth == 0 {
		return uintptr(pad[0])
	}
	return grow(depth-1, s) + uintptr(pad[1]) + s.Handle()
}

// A stream handle is a valid Go pointer value on every backend: Go's stack
// copier kills the process ("invalid pointer found on stack") for values below
// 4096 in pointer-typed slots, so the CPU backend's handles look like addresses.
func TestStreamHandleSurvivesStackGrowth(t *testing.T) {
	s, err := NewStream()
	must(t, err)
	defer func() { must(t, s.Destroy()) }()
	if s.Handle() < 4096 {
		t.Fatalf("stream handle %#x is not a valid Go pointer value", s.Handle())
	}
	grow(20000, s)
}
