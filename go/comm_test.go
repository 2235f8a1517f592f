package cudann

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/cudann/cudann/go/internal/ref"
)

// commData is random float32 data with the values a conversion or an
// arithmetic path would change: NaN payloads, signed zeros, infinities,
// subnormals, the extremes.
func commData(seed int64, n int) []float32 {
	x := ref.Rand(seed, n, 1e3)
	specials := []float32{
		math.Float32frombits(0x7fc12345), math.Float32frombits(0xffa00001), // quiet and signalling NaNs with payloads
		float32(math.Copysign(0, -1)), 0, float32(math.Inf(1)), float32(math.Inf(-1)),
		math.Float32frombits(1), math.Float32frombits(0x807fffff), math.MaxFloat32, -math.SmallestNonzeroFloat32,
	}
	copy(x[3:], specials)
	return x
}

// sameF32Bits checks that got is want bit for bit (NaN payloads and signs included).
func sameF32Bits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d elements, want %d", what, len(got), len(want))
		return
	}
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Errorf("%s: [%d] = %#08x, want %#08x (an exact copy)", what, i, math.Float32bits(got[i]), math.Float32bits(want[i]))
			return
		}
	}
}

func clone(x []float32) []float32 { return append([]float32(nil), x...) }

// isSoloID says whether id was made without NCCL (good for one rank only).
func isSoloID(id []byte) bool { return bytes.HasPrefix(id, []byte("cudann solo id\x00\x00")) }

func TestCommID(t *testing.T) {
	a, err := NewCommID()
	must(t, err)
	b, err := NewCommID()
	must(t, err)
	if len(a) != CommIDBytes || len(b) != CommIDBytes || CommIDBytes != 128 {
		t.Fatalf("ids of %d and %d bytes, want %d = 128", len(a), len(b), CommIDBytes)
	}
	if bytes.Equal(a, b) {
		t.Errorf("two ids are equal: %x", a)
	}
	if Sum != 0 || Avg != 1 || Sum.String() != "Sum" || Avg.String() != "Avg" || Op(7).String() != "Op(7)" {
		t.Errorf("ops: Sum %d %v, Avg %d %v", int(Sum), Sum, int(Avg), Avg)
	}
}

// One rank on host slices: every collective is an exact copy of random data
// (sum and mean over one rank), in place too, on the default stream and a
// library stream.
func TestCommOneRankHostSlices(t *testing.T) {
	id, err := NewCommID()
	must(t, err)
	c, err := NewComm(1, 0, id)
	must(t, err)
	if c.NRanks() != 1 || c.Rank() != 0 {
		t.Errorf("NRanks %d, Rank %d", c.NRanks(), c.Rank())
	}
	s, err := NewStream()
	must(t, err)
	x := commData(50, 1001)
	keep := clone(x)
	for _, op := range []Op{Sum, Avg} {
		y := nans(len(x))
		must(t, c.AllReduce(x, y, op))
		sameF32Bits(t, "AllReduce "+op.String(), y, x)
		y = nans(len(x))
		must(t, c.AllReduce(x, y, op, s))
		must(t, s.Synchronize())
		sameF32Bits(t, "AllReduce "+op.String()+" on a stream", y, x)
		z := clone(x)
		must(t, c.AllReduce(z, z, op)) // recv == send
		sameF32Bits(t, "AllReduce "+op.String()+" in place", z, x)
	}
	y := nans(len(x))
	must(t, c.Broadcast(x, y, 0))
	sameF32Bits(t, "Broadcast", y, x)
	z := clone(x)
	must(t, c.Broadcast(z, z, 0, s))
	must(t, s.Synchronize())
	sameF32Bits(t, "Broadcast in place", z, x)
	sameF32Bits(t, "send after the collectives", x, keep)
	must(t, c.AllReduce([]float32{}, []float32(nil), Avg)) // nothing to do
	must(t, c.Broadcast(nil, nil, 0))
	must(t, s.Close())
	must(t, c.Close())

	// A nil id is a fresh one.
	c, err = NewComm(1, 0, nil)
	must(t, err)
	y = nans(7)
	must(t, c.AllReduce(x[:7], y, Sum))
	sameF32Bits(t, "AllReduce with a fresh id", y, x[:7])
	must(t, c.Close())
}

// One rank on library memory (and mixed with host slices): exact copies, in
// place too.
func TestCommOneRankBuffers(t *testing.T) {
	c, err := NewComm(1, 0, nil)
	must(t, err)
	defer c.Close()
	s, err := NewStream()
	must(t, err)
	defer s.Close()
	x := commData(51, 4099)
	dx, err := MallocFloat32(len(x), x)
	must(t, err)
	defer dx.Close()
	dy := malloc(t, int64(4*len(x)))
	defer dy.Close()
	for _, op := range []Op{Sum, Avg} {
		must(t, dy.Memset(0xff))
		must(t, c.AllReduce(dx, dy, op, s))
		must(t, s.Synchronize())
		got, err := dy.Float32s()
		must(t, err)
		sameF32Bits(t, "AllReduce "+op.String()+" on buffers", got, x)
	}
	must(t, c.AllReduce(dx, dx, Avg)) // recv == send: nothing moves
	got, err := dx.Float32s()
	must(t, err)
	sameF32Bits(t, "AllReduce in place on a buffer", got, x)
	must(t, dy.Memset(0xff))
	must(t, c.Broadcast(dx, dy, 0))
	got, err = dy.Float32s()
	must(t, err)
	sameF32Bits(t, "Broadcast on buffers", got, x)
	must(t, c.Broadcast(dy, dy, 0, s))
	must(t, s.Synchronize())
	got, err = dy.Float32s()
	must(t, err)
	sameF32Bits(t, "Broadcast in place on a buffer", got, x)
	// A view: the second half of dx into the first half of dy.
	half := int64(4 * 2048)
	src, err := dx.View(half, half)
	must(t, err)
	dst, err := dy.View(0, half)
	must(t, err)
	must(t, dy.Memset(0))
	must(t, c.AllReduce(src, dst, Sum))
	got, err = dy.Float32s()
	must(t, err)
	sameF32Bits(t, "AllReduce of views", got[:2048], x[2048:4096])
	sameF32Bits(t, "past the view", got[2048:], make([]float32, len(x)-2048))
	// Host to library memory and back (one rank copies any memory).
	must(t, dy.Memset(0xff))
	must(t, c.AllReduce(x, dy, Sum))
	y := nans(len(x))
	must(t, c.Broadcast(dy, y, 0))
	sameF32Bits(t, "host -> buffer -> host", y, x)
}

// Misuse is refused with an error and writes nothing: by this package where
// it can tell (id length, lengths, types, a closed communicator or stream),
// else by the library, with its message.
func TestCommBadArguments(t *testing.T) {
	id, err := NewCommID()
	must(t, err)
	for _, bad := range [][]byte{[]byte("short"), make([]byte, CommIDBytes+1)} {
		_, err = NewComm(1, 0, bad)
		invalid(t, err, "cudann.NewComm: id has ")
		invalid(t, err, "want 128 (from NewCommID)")
	}
	_, err = NewComm(2, 2, id)
	invalid(t, err, "cudann_comm_init: rank must be in [0, nranks = 2) (got 2)")
	_, err = NewComm(1, -1, id)
	invalid(t, err, "rank must be in [0, nranks = 1) (got -1)")
	_, err = NewComm(0, 0, id)
	invalid(t, err, "cudann_comm_init: nranks must be >= 1 (got 0)")
	_, err = NewComm(1<<40, 0, id)
	invalid(t, err, "cudann.NewComm: nranks does not fit a C int")

	c, err := NewComm(1, 0, id)
	must(t, err)
	x := commData(52, 64)
	y := nans(64)
	unwritten := func(what string) {
		t.Helper()
		for i := range y {
			if y[i] == y[i] {
				t.Fatalf("%s: recv[%d] = %v written by a refused call", what, i, y[i])
			}
		}
	}
	invalid(t, c.AllReduce(x, y, Op(2)), "cudann_all_reduce: op must be CUDANN_SUM (0) or CUDANN_AVG (1) (got 2)")
	invalid(t, c.AllReduce(x, y, Op(-1)), "(got -1)")
	unwritten("a bad op")
	invalid(t, c.Broadcast(x, y, 1), "cudann_broadcast: root must be in [0, nranks = 1) (got 1)")
	invalid(t, c.Broadcast(x, y, -1), "root must be in [0, nranks = 1) (got -1)")
	invalid(t, c.Broadcast(nil, y, 0), "cudann_broadcast: send is NULL but holds 64 elements") // the root reads send
	unwritten("a bad root")
	invalid(t, c.AllReduce(x, y[:63], Sum), "cudann.Comm.AllReduce: recv has 63 elements, want 64")
	invalid(t, c.Broadcast(x[:63], y, 0), "cudann.Comm.Broadcast: send has 63 elements, want 64")
	invalid(t, c.AllReduce(make([]float64, 64), y, Sum), "cudann.Comm.AllReduce: send is a []float64, want a []float32 or a *cudann.Buffer")
	invalid(t, c.Broadcast(x, []int32{1}, 0), "recv is a []int32")
	invalid(t, c.AllReduce(x[1:], x[:63], Sum), "cudann_all_reduce: recv partially overlaps send")
	invalid(t, c.AllReduce(x, y, Sum, nil, nil), "at most one stream")
	s, err := NewStream()
	must(t, err)
	must(t, s.Close())
	invalid(t, c.AllReduce(x, y, Sum, s), "the stream is closed")
	unwritten("refused lengths, types and streams")

	// The library's own check of the handle: one it did not hand out.
	buf := malloc(t, 16)
	fake := &Comm{h: buf.Ptr(), nranks: 1}
	invalid(t, fake.AllReduce(x, y, Sum), "is not a live communicator from cudann_comm_init")
	invalid(t, fake.Close(), "cudann_comm_destroy: comm")
	must(t, buf.Close())

	// A closed communicator is an error, never a crash or a write.
	must(t, c.Close())
	invalid(t, c.Close(), "cudann.Comm.Close: the communicator is closed")
	invalid(t, c.AllReduce(x, y, Avg), "cudann.Comm.AllReduce: the communicator is closed")
	invalid(t, c.Broadcast(x, y, 0), "cudann.Comm.Broadcast: the communicator is closed")
	unwritten("a closed communicator")
}

// More than one rank needs NCCL and a GPU. Without them (this package's
// test machines), the id made here is good for one rank only and another id
// is refused as not available, each with the library's message. Where NCCL
// and a GPU are usable, a second rank would have to join: skipped.
func TestCommTwoRanksNeedNCCL(t *testing.T) {
	id, err := NewCommID()
	must(t, err)
	if !isSoloID(id) {
		t.Skip("this machine has NCCL and a GPU: a second rank would be needed")
	}
	_, err = NewComm(2, 0, id)
	invalid(t, err, "cudann_comm_init: this id was made without NCCL")
	invalid(t, err, "one rank only")
	// An id from elsewhere (an NCCL machine's, say): refused as not available here.
	other := make([]byte, CommIDBytes)
	other[0] = 1
	_, err = NewComm(2, 1, other)
	var e *Error
	if !errors.As(err, &e) || e.Code == Success || !strings.HasPrefix(e.Msg, "cudann_comm_init: ") ||
		!(strings.Contains(e.Msg, "NCCL") || strings.Contains(e.Msg, "GPU")) {
		t.Fatalf("two ranks without NCCL: got %v, want an error mentioning NCCL or a GPU", err)
	}
	if e.Code != NotAvailable || !errors.Is(err, ErrNotAvailable) {
		t.Errorf("two ranks without NCCL: code %v, want CUDANN_NOT_AVAILABLE", e.Code)
	}
}
