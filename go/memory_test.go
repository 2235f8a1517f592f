package cudann

import (
	"fmt"
	"math"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/cudann/cudann/go/internal/ref"
)

func malloc(t *testing.T, bytes int64) *Buffer {
	t.Helper()
	m, err := Malloc(bytes)
	must(t, err)
	if m.Ptr() == nil || m.Bytes() != bytes {
		t.Fatalf("Malloc(%d) = %p of %d bytes", bytes, m.Ptr(), m.Bytes())
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
	must(t, dx.Upload(x, s))
	must(t, dw.Upload(w, s))
	must(t, dy.Memset(0xff, s)) // all bytes 0xff: NaN, so a missed element shows
	must(t, ds.Memset(0xff, s))
	must(t, RMSNorm(dx, dw, dy, rows, dim, 1e-5, s))
	must(t, Softmax(dy, ds, rows, dim, s))
	must(t, Silu(dx, dx, s))
	must(t, s.Synchronize())
	y, sm, z := nans(n), nans(n), nans(n)
	must(t, dy.Download(y))
	must(t, ds.Download(sm))
	must(t, dx.Download(z))
	near(t, "rmsnorm on library memory", y, ref.RMSNorm(x, w, rows, dim, float64(float32(1e-5))), nil, 1e-5)
	near(t, "softmax of the rmsnorm output", sm, ref.Softmax(y, rows, dim), nil, 1e-5)
	near(t, "silu in place after rmsnorm read x", z, ref.Silu(x), nil, 5e-7)
	must(t, s.Close())
	for _, m := range []*Buffer{dx, dw, dy, ds} {
		must(t, m.Close())
	}
	invalid(t, dx.Close(), "already closed")
	invalid(t, Silu(dx, dy), "in is a closed buffer")
	empty, err := Malloc(0) // NULL: nothing to free
	must(t, err)
	if empty.Ptr() != nil || empty.Bytes() != 0 {
		t.Errorf("Malloc(0) = %p, %d bytes", empty.Ptr(), empty.Bytes())
	}
	must(t, empty.Close())
}

// Mixed host and library operands, device-to-device copies, views, and
// MallocFloat32.
func TestDeviceMemoryMixed(t *testing.T) {
	x := ref.Rand(42, 64, 2)
	dx, err := MallocFloat32(len(x), x)
	must(t, err)
	defer dx.Close()
	dy := malloc(t, 4*64)
	defer dy.Close()
	must(t, dy.CopyFrom(dx))
	back, err := dy.Float32s()
	must(t, err)
	if !reflect.DeepEqual(back, x) {
		t.Fatal("device-to-device copy differs")
	}
	// The second half of dy, in place.
	half, err := dy.View(128, 128)
	must(t, err)
	must(t, Scale(half, half, 2))
	must(t, dy.Download(back))
	for i := range back {
		want := x[i]
		if i >= 32 {
			want *= 2
		}
		if back[i] != want {
			t.Fatalf("[%d] = %v after scaling the view, want %v", i, back[i], want)
		}
	}
	invalid(t, half.Close(), "a view does not own its memory")
	_, err = dy.View(200, 100)
	invalid(t, err, "outside the 256-byte buffer")
	// Argmax from library logits into a Go slice.
	out := []int32{-1, -1}
	must(t, Argmax(dx, out, 2, 32))
	for r := range out {
		if want := ref.Argmax(x[r*32 : (r+1)*32]); out[r] != want {
			t.Errorf("row %d: argmax %d, want %d", r, out[r], want)
		}
	}
}

// Misuse is refused with an error and writes nothing: by this package where
// it can tell (sizes, closed buffers and streams), else by the library.
func TestDeviceMemoryMisuse(t *testing.T) {
	ramp := make([]float32, 16)
	for i := range ramp {
		ramp[i] = float32(i)
	}
	buf := malloc(t, 64)
	must(t, buf.Upload(ramp))
	host := make([]float32, 32)
	for i := range host {
		host[i] = 7
	}
	invalid(t, buf.Download(host), "128 bytes do not fit the 64-byte buffer")
	for i, v := range host {
		if v != 7 {
			t.Fatalf("host[%d] = %v after a refused copy, want 7", i, v)
		}
	}
	view, err := buf.View(32, 32)
	must(t, err)
	invalid(t, view.Upload(host[:9]), "36 bytes do not fit the 32-byte buffer")
	invalid(t, Silu(buf, view), "out has 8 elements, want 16")
	back := make([]float32, 16)
	must(t, buf.Download(back))
	if !reflect.DeepEqual(back, ramp) {
		t.Errorf("allocation changed by refused calls: %v", back)
	}
	_, err = Malloc(-1)
	invalid(t, err, "bytes must be >= 0")

	s, err := NewStream()
	must(t, err)
	must(t, s.Close())
	invalid(t, s.Close(), "closed")
	invalid(t, s.Synchronize(), "closed")
	invalid(t, buf.Download(back, s), "the stream is closed")
	invalid(t, Silu(buf, buf, s), "the stream is closed")
	invalid(t, Silu(buf, buf, nil, nil), "at most one stream")
	must(t, buf.Download(back))
	if !reflect.DeepEqual(back, ramp) {
		t.Errorf("an op on a closed stream wrote: %v", back)
	}
	// The library's own checks come through with its message: a stream it did
	// not create.
	fake := &Stream{h: buf.Ptr()}
	invalid(t, fake.Close(), "cudann_stream_destroy: stream")
	must(t, buf.Close())
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
	must(t, pinned.Upload(src))
	must(t, pinned.Download(dst))
	if !reflect.DeepEqual(dst, src) {
		t.Errorf("page-locked round trip: %v", dst)
	}
	must(t, pinned.Close())
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
				for _, step := range []error{m.Upload(x, s), Silu(m, m, s), s.Synchronize(),
					m.Download(y), s.Close(), m.Close()} {
					if step != nil {
						return step
					}
				}
				if err := m.Close(); err == nil || !strings.Contains(err.Error(), "already closed") {
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
// with s (a stream handle, a void* held as unsafe.Pointer) live in every frame.
//
//go:noinline
func grow(depth int, s unsafe.Pointer) uintptr {
	var pad [512]byte
	pad[depth%len(pad)] = byte(depth)
	if depth == 0 {
		return uintptr(pad[0])
	}
	return grow(depth-1, s) + uintptr(pad[1]) + uintptr(s)
}

// A stream handle is a valid Go pointer value on every backend: Go's stack
// copier kills the process ("invalid pointer found on stack") for values below
// 4096 in pointer-typed slots, so the CPU backend's handles look like addresses.
func TestStreamHandleSurvivesStackGrowth(t *testing.T) {
	s, err := NewStream()
	must(t, err)
	defer func() { must(t, s.Close()) }()
	if uintptr(s.Handle()) < 4096 {
		t.Fatalf("stream handle %p is not a valid Go pointer value", s.Handle())
	}
	grow(20000, s.Handle())
}
