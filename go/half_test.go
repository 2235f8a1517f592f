package cudann

import (
	"fmt"
	"math"
	"math/rand"
	"testing"

	"github.com/cudann/cudann/go/internal/ref"
)

// Half precision: Convert against reference conversions written here, and
// every Ex op against the float32 op on the inputs widened with Convert,
// its result rounded with Convert (bit for bit; NaNs as "a quiet NaN of the
// same sign", the library's NaN).

var halfTypes = []DType{F16, BF16}

// halfLayout is (exponent mask, quiet bit) of a half type's bits.
func halfLayout(t DType) (exp, quiet uint16) {
	if t == F16 {
		return 0x7C00, 0x0200
	}
	return 0x7F80, 0x0040
}

func isHalfNaN(t DType, h uint16) bool {
	exp, _ := halfLayout(t)
	return h&exp == exp && h&^(exp|0x8000) != 0
}

// f16ToF32 decodes binary16 exactly.
func f16ToF32(h uint16) float32 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e, m := int(h>>10)&0x1F, float64(h&0x3FF)
	switch {
	case e == 0x1F && m == 0:
		return float32(math.Inf(int(sign)))
	case e == 0x1F: // NaN: quiet, with its sign and payload
		return math.Float32frombits(uint32(h&0x8000)<<16 | 0x7FC00000 | uint32(h&0x3FF)<<13)
	case e == 0:
		return float32(sign * math.Ldexp(m, -24))
	}
	return float32(sign * math.Ldexp(1024+m, e-25))
}

// f32ToF16 rounds to nearest even (overflow to infinity; NaN: quiet).
func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp, mant := int(b>>23)&0xFF, b&0x7FFFFF
	if exp == 0xFF {
		if mant != 0 {
			return sign | 0x7E00 | uint16(mant>>13)
		}
		return sign | 0x7C00
	}
	e := exp - 127 + 15
	if e >= 31 {
		return sign | 0x7C00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		m, shift := mant|0x800000, uint(14-e)
		h, rem, half := m>>shift, m&(1<<shift-1), uint32(1)<<(shift-1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h, rem := uint32(e)<<10|mant>>13, mant&0x1FFF
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // a carry into the exponent is right, up to infinity
	}
	return sign | uint16(h)
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

func f32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x0040
	}
	return uint16((b + 0x7FFF + (b>>16)&1) >> 16)
}

func refToF32(t DType, h uint16) float32 {
	if t == F16 {
		return f16ToF32(h)
	}
	return bf16ToF32(h)
}

func refFromF32(t DType, f float32) uint16 {
	if t == F16 {
		return f32ToF16(f)
	}
	return f32ToBF16(f)
}

// sameHalves compares half bits; a NaN of want needs a quiet NaN of the same sign.
func sameHalves(t *testing.T, what string, dt DType, got, want []uint16) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	_, quiet := halfLayout(dt)
	bad, first := 0, -1
	for i := range want {
		ok := got[i] == want[i]
		if isHalfNaN(dt, want[i]) {
			ok = isHalfNaN(dt, got[i]) && got[i]&quiet != 0 && got[i]&0x8000 == want[i]&0x8000
		}
		if !ok {
			if bad++; first < 0 {
				first = i
			}
		}
	}
	if bad > 0 {
		t.Errorf("%s (%s): %d of %d differ; first at %d: got %#04x, want %#04x", what, dt, bad, len(want), first,
			got[first], want[first])
	}
}

// sameFloat32s compares float32 bits; a NaN of want needs a quiet NaN of the same sign.
func sameFloat32s(t *testing.T, what string, got, want []float32) {
	t.Helper()
	bad, first := 0, -1
	for i := range want {
		g, w := math.Float32bits(got[i]), math.Float32bits(want[i])
		ok := g == w
		if want[i] != want[i] {
			ok = got[i] != got[i] && g&0x00400000 != 0 && g>>31 == w>>31
		}
		if !ok {
			if bad++; first < 0 {
				first = i
			}
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d differ; first at %d: got %#08x, want %#08x", what, bad, len(want), first,
			math.Float32bits(got[first]), math.Float32bits(want[first]))
	}
}

func widen(t *testing.T, dt DType, h []uint16) []float32 {
	t.Helper()
	out := make([]float32, len(h))
	must(t, Convert(h, dt, out, F32))
	return out
}

func round(t *testing.T, dt DType, f []float32) []uint16 {
	t.Helper()
	out := make([]uint16, len(f))
	must(t, Convert(f, F32, out, dt))
	return out
}

// halfData is n values of about amp rounded to dt, with specials sprinkled in.
func halfData(t *testing.T, seed int64, dt DType, n int, amp float64, specials bool) []uint16 {
	f := ref.Rand(seed, n, amp)
	if specials && n >= 16 {
		big := float32(60000)
		if dt == BF16 {
			big = 1e38
		}
		pool := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)),
			float32(math.NaN()), 3e-6, -4e-7, 6e-8, big, -big}
		r := rand.New(rand.NewSource(seed))
		for i := 0; i < n/50+8; i++ {
			f[r.Intn(n)] = pool[r.Intn(len(pool))]
		}
	}
	return round(t, dt, f)
}

// anyBits is n uniformly random bit patterns: every exponent, NaNs included.
func anyBits(seed int64, n int) []uint16 {
	r := rand.New(rand.NewSource(seed))
	out := make([]uint16, n)
	for i := range out {
		out[i] = uint16(r.Uint32())
	}
	return out
}

func TestConvertHalfToFloat32Exhaustive(t *testing.T) {
	all := make([]uint16, 1<<16)
	for i := range all {
		all[i] = uint16(i)
	}
	for _, dt := range halfTypes {
		got := widen(t, dt, all)
		want := make([]float32, len(all))
		for i, h := range all {
			want[i] = refToF32(dt, h)
			if isHalfNaN(dt, h) {
				sign := float32(1)
				if h&0x8000 != 0 {
					sign = -1
				}
				want[i] = float32(math.Copysign(math.NaN(), float64(sign)))
			}
		}
		sameFloat32s(t, fmt.Sprintf("%s -> F32", dt), got, want)
		sameHalves(t, "round trip", dt, round(t, dt, got), all)
	}
	// Between the half types: one rounding of the exact float32 value.
	for _, p := range [][2]DType{{F16, BF16}, {BF16, F16}} {
		got := make([]uint16, len(all))
		must(t, Convert(all, p[0], got, p[1]))
		want := make([]uint16, len(all))
		for i, h := range all {
			want[i] = refFromF32(p[1], refToF32(p[0], h))
		}
		sameHalves(t, fmt.Sprintf("%s -> %s", p[0], p[1]), p[1], got, want)
	}
}

func TestConvertFloat32ToHalf(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	var x []float32
	for i := 0; i < 620_000; i++ {
		x = append(x, math.Float32frombits(r.Uint32()))
	}
	// Halfway points (and their neighbours): float16 midpoints of neighbouring
	// finite values and of 65504 and the overflow threshold; bfloat16 low halves of 0x8000.
	for h := 0; h < 0x7C00; h++ {
		lo, hi := float64(f16ToF32(uint16(h))), 65536.0
		if h < 0x7BFF {
			hi = float64(f16ToF32(uint16(h + 1)))
		}
		m := float32((lo + hi) / 2)
		for _, v := range []float32{m, -m, math.Nextafter32(m, 1e9), math.Nextafter32(m, -1e9)} {
			x = append(x, v)
		}
	}
	for top := uint32(0); top < 1<<16; top++ {
		for _, low := range []uint32{0x8000, 0x7FFF, 0x8001} {
			x = append(x, math.Float32frombits(top<<16|low))
		}
	}
	x = append(x, 0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), 65504, 65520,
		math.MaxFloat32, math.SmallestNonzeroFloat32, math.Float32frombits(0x7FA01234), math.Float32frombits(0xFF800001))
	if len(x) < 900_000 {
		t.Fatalf("only %d cases", len(x))
	}
	for _, dt := range halfTypes {
		want := make([]uint16, len(x))
		for i, v := range x {
			want[i] = refFromF32(dt, v)
		}
		sameHalves(t, "F32 ->", dt, round(t, dt, x), want)
	}
	// The same type copies; a []float32 cannot hold halves.
	h := []uint16{0x3C00, 0xBC00}
	out := make([]uint16, 2)
	must(t, Convert(h, F16, out, F16))
	sameHalves(t, "copy", F16, out, h)
	invalid(t, Convert(h, F16, make([]float32, 2), BF16), "dst")
	invalid(t, Convert(h, F16, make([]uint16, 3), F32), "dst")
	invalid(t, Convert(h, F16, make([]uint16, 3), BF16), "dst has 3 elements, want 2")
	invalid(t, Convert(h, DType(9), make([]uint16, 2), F16), "cudann_convert")
}

var exSizes = []int{1, 33, 4097, 100_000}

func TestAddMulScaleEx(t *testing.T) {
	for _, dt := range halfTypes {
		for _, n := range exSizes {
			inputs := [][2][]uint16{
				{halfData(t, 1, dt, n, 4, true), halfData(t, 2, dt, n, 4, true)},
				{anyBits(3, n), anyBits(4, n)},
			}
			for _, in := range inputs {
				a, b := in[0], in[1]
				wa, wb := widen(t, dt, a), widen(t, dt, b)
				sum, prod := make([]float32, n), make([]float32, n)
				must(t, Add(wa, wb, sum))
				must(t, Mul(wa, wb, prod))
				out := make([]uint16, n)
				must(t, AddEx(a, b, out, dt))
				sameHalves(t, fmt.Sprint("AddEx n=", n), dt, out, round(t, dt, sum))
				must(t, MulEx(a, b, out, dt))
				sameHalves(t, fmt.Sprint("MulEx n=", n), dt, out, round(t, dt, prod))
				for _, f := range []float32{-0.3, 1e-3, 300} {
					scaled := make([]float32, n)
					must(t, Scale(wa, scaled, f))
					must(t, ScaleEx(a, out, f, dt))
					sameHalves(t, fmt.Sprint("ScaleEx ", f, " n=", n), dt, out, round(t, dt, scaled))
				}
				bb := append([]uint16(nil), b...)
				must(t, AddEx(a, bb, bb, dt)) // in place
				sameHalves(t, "AddEx in place", dt, bb, round(t, dt, sum))
			}
		}
	}
	// Library memory (host-pinned: half precision runs on the CPU).
	a, b := halfData(t, 5, F16, 1000, 4, true), halfData(t, 6, F16, 1000, 4, true)
	want := make([]uint16, 1000)
	must(t, AddEx(a, b, want, F16))
	bufs := make([]*Buffer, 3)
	for i := range bufs {
		var err error
		bufs[i], err = MallocHost(2000)
		must(t, err)
		defer bufs[i].Close()
	}
	must(t, bufs[0].Upload(a))
	must(t, bufs[1].Upload(b))
	must(t, AddEx(bufs[0], bufs[1], bufs[2], F16))
	got := make([]uint16, 1000)
	must(t, bufs[2].Download(got))
	sameHalves(t, "AddEx on buffers", F16, got, want)
	// Argument checks.
	invalid(t, AddEx(make([]float32, 4), make([]float32, 4), make([]float32, 4), BF16), "a is a []float32")
	invalid(t, AddEx(a, b, make([]uint16, 999), F16), "out has 999 elements, want 1000")
	invalid(t, AddEx(a, b, make([]uint16, 1000), DType(7)), "cudann_add_ex")
}

func TestSoftmaxRMSNormEx(t *testing.T) {
	for _, dt := range halfTypes {
		for _, s := range [][2]int{{1, 1}, {3, 33}, {4, 4097}, {2, 70_000}} {
			rows, cols := s[0], s[1]
			n := rows * cols
			x := halfData(t, 10, dt, n, 4, false)
			ninf := refFromF32(dt, float32(math.Inf(-1)))
			for j := 0; j < cols; j += 3 {
				x[j] = ninf
			}
			if rows > 1 {
				for j := 0; j < cols; j++ {
					x[(rows-1)*cols+j] = ninf // a fully masked row
				}
			}
			wx := widen(t, dt, x)
			sm := make([]float32, n)
			must(t, Softmax(wx, sm, rows, cols))
			out := make([]uint16, n)
			must(t, SoftmaxEx(x, out, rows, cols, dt))
			sameHalves(t, fmt.Sprint("SoftmaxEx ", s), dt, out, round(t, dt, sm))
			inPlace := append([]uint16(nil), x...)
			must(t, SoftmaxEx(inPlace, inPlace, rows, cols, dt))
			sameHalves(t, "SoftmaxEx in place", dt, inPlace, round(t, dt, sm))

			y, w := halfData(t, 11, dt, n, 4, false), halfData(t, 12, dt, cols, 1, false)
			wy, ww := widen(t, dt, y), widen(t, dt, w)
			for _, eps := range []float32{1e-5, 0, 1} {
				norm := make([]float32, n)
				must(t, RMSNorm(wy, ww, norm, rows, cols, eps))
				must(t, RMSNormEx(y, w, out, rows, cols, eps, dt))
				sameHalves(t, fmt.Sprint("RMSNormEx ", s, " eps ", eps), dt, out, round(t, dt, norm))
			}
		}
	}
	invalid(t, RMSNormEx(make([]uint16, 6), make([]uint16, 2), make([]uint16, 6), 2, 3, 1e-5, F16), "weight")
}

func TestDecodingEx(t *testing.T) {
	for _, dt := range halfTypes {
		for _, s := range [][2]int{{200, 33}, {64, 4097}, {3, 70_000}} {
			rows, vocab := s[0], s[1]
			x := halfData(t, 20, dt, rows*vocab, 3, false)
			for j := 1; j < vocab; j += 2 {
				x[j] = refFromF32(dt, float32(math.Inf(-1)))
			}
			if rows > 2 {
				for j := 0; j < vocab; j++ {
					x[2*vocab+j] = x[2*vocab] // all tied
				}
			}
			wx := widen(t, dt, x)
			seeds := make([]uint64, rows)
			for i := range seeds {
				seeds[i] = uint64(i)*0x9E3779B97F4A7C15 ^ 99
			}
			got, want := make([]int32, rows), make([]int32, rows)
			check := func(what string) {
				t.Helper()
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("%s %s %v row %d: token %d, the float32 op picks %d", what, dt, s, i, got[i], want[i])
					}
				}
			}
			must(t, ArgmaxEx(x, got, rows, vocab, dt))
			must(t, Argmax(wx, want, rows, vocab))
			check("ArgmaxEx")
			for _, temp := range []float32{0, 0.7, 1, 2.5} {
				must(t, SampleEx(x, got, seeds, rows, vocab, temp, dt))
				must(t, Sample(wx, want, seeds, rows, vocab, temp))
				check(fmt.Sprint("SampleEx T=", temp))
				for _, k := range []int{1, 50} {
					must(t, TopKSampleEx(x, got, seeds, rows, vocab, k, temp, dt))
					must(t, TopKSample(wx, want, seeds, rows, vocab, k, temp))
					check(fmt.Sprint("TopKSampleEx k=", k, " T=", temp))
				}
				for _, p := range []float32{0.5, 0.95} {
					must(t, TopPSampleEx(x, got, seeds, rows, vocab, p, temp, dt))
					must(t, TopPSample(wx, want, seeds, rows, vocab, p, temp))
					check(fmt.Sprint("TopPSampleEx p=", p, " T=", temp))
				}
			}
		}
	}
}

func TestGemmExHalf(t *testing.T) {
	// C = 0.75 A B^T - 0.5 C with half operands, accumulated in float32: within
	// float32 GEMM error plus half an ulp of the half C.
	for _, dt := range halfTypes {
		for _, s := range [][3]int{{1, 64, 256}, {3, 33, 100}, {64, 31, 17}} {
			m, n, k := s[0], s[1], s[2]
			a, b, c := halfData(t, 30, dt, m*k, 1, false), halfData(t, 31, dt, n*k, 1, false), halfData(t, 32, dt, m*n, 1, false)
			wa, wb, wc := widen(t, dt, a), widen(t, dt, b), widen(t, dt, c)
			want, bound := ref.GemmEx(false, true, m, n, k, 0.75, wa, k, 0, wb, k, 0, -0.5, wc, n, 0, 1)
			must(t, GemmEx(GemmExParams{TransB: true, M: m, N: n, K: k, Alpha: 0.75, Beta: -0.5,
				AType: dt, BType: dt, CType: dt}, a, b, c))
			rtol := 1e-5 + 1.01/2048
			if dt == BF16 {
				rtol = 1e-5 + 1.01/256
			}
			near(t, fmt.Sprint("GemmEx ", dt, s), widen(t, dt, c), want, bound, rtol)
		}
	}
	// Float32 activations against half weights (decoding's x·Wᵀ), through buffers.
	m, n, k := 2, 48, 300
	x, w := ref.Rand(33, m*k, 1), halfData(t, 34, BF16, n*k, 1, false)
	want, bound := ref.GemmEx(false, true, m, n, k, 1, x, k, 0, widen(t, BF16, w), k, 0, 0, make([]float32, m*n), n, 0, 1)
	bx, err := MallocHost(int64(4 * m * k))
	must(t, err)
	defer bx.Close()
	bw, err := MallocHost(int64(2 * n * k))
	must(t, err)
	defer bw.Close()
	by, err := MallocHost(int64(4 * m * n))
	must(t, err)
	defer by.Close()
	must(t, bx.Upload(x))
	must(t, bw.Upload(w))
	must(t, GemmEx(GemmExParams{TransB: true, M: m, N: n, K: k, Alpha: 1, BType: BF16}, bx, bw, by))
	y, err := by.Float32s()
	must(t, err)
	near(t, "GemmEx F32 x BF16", y, want, bound, 1e-5)
	invalid(t, GemmEx(GemmExParams{M: 1, N: 1, K: 1, AType: F16}, make([]float32, 1), make([]float32, 1),
		make([]float32, 1)), "a is a []float32")
}

// sameBits compares half tensors bit for bit (copies keep NaN payloads).
func sameBits(t *testing.T, what string, got, want []uint16) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s: first difference at %d: got %#04x, want %#04x", what, i, got[i], want[i])
		}
	}
}

func TestSwigluEx(t *testing.T) {
	for _, dt := range halfTypes {
		for _, n := range exSizes {
			inputs := [][2][]uint16{
				{halfData(t, 40, dt, n, 4, true), halfData(t, 41, dt, n, 4, true)},
				{anyBits(42, n), anyBits(43, n)},
			}
			for _, in := range inputs {
				gate, up := in[0], in[1]
				want := make([]float32, n)
				must(t, Swiglu(widen(t, dt, gate), widen(t, dt, up), want))
				out := make([]uint16, n)
				must(t, SwigluEx(gate, up, out, dt))
				sameHalves(t, fmt.Sprint("SwigluEx n=", n), dt, out, round(t, dt, want))
				must(t, SwigluEx(gate, up, gate, dt)) // in place
				sameHalves(t, "SwigluEx in place", dt, gate, round(t, dt, want))
			}
		}
	}
	invalid(t, SwigluEx(make([]float32, 4), make([]float32, 4), make([]float32, 4), F16), "gate is a []float32")
	invalid(t, SwigluEx(make([]uint16, 4), make([]uint16, 3), make([]uint16, 4), BF16), "up has 3 elements, want 4")
	invalid(t, SwigluEx(make([]uint16, 4), make([]uint16, 4), make([]uint16, 4), DType(7)), "cudann_swiglu")
}

func TestEmbeddingExCopiesRows(t *testing.T) {
	nIDs, vocab, dim := 300, 50, 513
	r := rand.New(rand.NewSource(44))
	ids := make([]int32, nIDs)
	for i := range ids {
		ids[i] = int32(r.Intn(vocab+2)) - 2 // some padding (negative) ids
	}
	for _, dt := range halfTypes {
		table := anyBits(45, vocab*dim)  // NaN payloads too: copied, not converted
		want := make([]uint16, nIDs*dim) // padding rows: +0
		for i, id := range ids {
			if id >= 0 {
				copy(want[i*dim:(i+1)*dim], table[int(id)*dim:(int(id)+1)*dim])
			}
		}
		out := anyBits(46, nIDs*dim)
		must(t, EmbeddingEx(ids, table, out, nIDs, vocab, dim, dt))
		sameBits(t, fmt.Sprint("EmbeddingEx ", dt), out, want)
	}
	invalid(t, EmbeddingEx([]int32{0}, make([]uint16, 4), make([]uint16, 3), 1, 2, 2, F16), "out has 3 elements, want 2")
	invalid(t, EmbeddingEx([]int32{0}, make([]uint16, 4), make([]uint16, 2), 1, 2, 2, DType(7)), "cudann_embedding")
}

func TestKVCacheWriteExCopies(t *testing.T) {
	batch, maxSeq, kvHeads, headDim := 2, 12, 3, 64
	row := kvHeads * headDim
	for _, dt := range halfTypes {
		for _, at := range [][2]int{{0, 1}, {5, 3}, {0, 12}} {
			pos, newLen := at[0], at[1]
			kNew, vNew := anyBits(47, batch*newLen*row), anyBits(48, batch*newLen*row)
			kCache, vCache := anyBits(49, batch*maxSeq*row), anyBits(50, batch*maxSeq*row)
			wantK, wantV := append([]uint16(nil), kCache...), append([]uint16(nil), vCache...)
			for b := 0; b < batch; b++ {
				dst, src := (b*maxSeq+pos)*row, b*newLen*row
				copy(wantK[dst:dst+newLen*row], kNew[src:src+newLen*row])
				copy(wantV[dst:dst+newLen*row], vNew[src:src+newLen*row])
			}
			must(t, KVCacheWriteEx(kNew, vNew, kCache, vCache, batch, newLen, maxSeq, kvHeads, headDim, pos, dt))
			sameBits(t, fmt.Sprint("KVCacheWriteEx k ", dt, at), kCache, wantK)
			sameBits(t, fmt.Sprint("KVCacheWriteEx v ", dt, at), vCache, wantV)
		}
	}
	h := make([]uint16, 2)
	invalid(t, KVCacheWriteEx(h, h, h, h, 1, 1, 1, 1, 2, 1, F16), "must be <= max_seq")
	invalid(t, KVCacheWriteEx(h, h, h, make([]uint16, 3), 1, 1, 1, 1, 2, 0, BF16), "vCache has 3 elements, want 2")
}

// attentionCases: training (GQA), one decoding step against a KV cache (MQA),
// several 64-query blocks with a mask, and not causal with a fully masked row.
var attentionCases = []AttentionParams{
	{Batch: 2, QLen: 5, KVLen: 5, Heads: 4, KVHeads: 2, HeadDim: 8, Causal: true},
	{Batch: 3, QLen: 1, KVLen: 7, KVCapacity: 12, Heads: 6, KVHeads: 1, HeadDim: 16, Pos0: 6, Causal: true},
	{Batch: 1, QLen: 70, KVLen: 70, Heads: 2, KVHeads: 2, HeadDim: 32, Causal: true},
	{Batch: 2, QLen: 3, KVLen: 90, KVCapacity: 100, Heads: 4, KVHeads: 4, HeadDim: 64, Pos0: 87},
}

func TestAttentionForwardEx(t *testing.T) {
	for _, dt := range halfTypes {
		for i, p := range attentionCases {
			p.Scale = float32(1 / math.Sqrt(float64(p.HeadDim)))
			capacity := p.KVCapacity
			if capacity == 0 {
				capacity = p.KVLen
			}
			nq, nkv := p.Batch*p.QLen*p.Heads*p.HeadDim, p.Batch*capacity*p.KVHeads*p.HeadDim
			q, k, v := halfData(t, 51, dt, nq, 1, false), halfData(t, 52, dt, nkv, 1, false), halfData(t, 53, dt, nkv, 1, false)
			unread(dt, k, v, p, capacity)
			var mask []float32
			if i >= 2 {
				mask = ref.Rand(54, p.QLen*p.KVLen, 1)
				for j := (p.QLen - 1) * p.KVLen; j < len(mask); j++ {
					mask[j] = float32(math.Inf(-1)) // every key masked: zeros, lse -inf
				}
			}
			want, wantLSE := make([]float32, nq), make([]float32, p.Batch*p.QLen*p.Heads)
			must(t, AttentionForward(widen(t, dt, q), widen(t, dt, k), widen(t, dt, v), mask, want, wantLSE, p))
			out, lse := make([]uint16, nq), make([]float32, len(wantLSE))
			must(t, AttentionForwardEx(q, k, v, mask, out, lse, p, dt))
			what := fmt.Sprint("AttentionForwardEx ", dt, " case ", i)
			sameHalves(t, what, dt, out, round(t, dt, want))
			sameFloat32s(t, what+" lse", lse, wantLSE) // the float32 op's, exactly
		}
	}
	p := AttentionParams{Batch: 1, QLen: 1, KVLen: 1, Heads: 1, KVHeads: 1, HeadDim: 2, Scale: 1}
	h := make([]uint16, 2)
	must(t, AttentionForwardEx[[]uint16, []float32](h, h, h, nil, h, nil, p, F16)) // no mask, no lse
	sameBits(t, "AttentionForwardEx of zeros", h, []uint16{0, 0})
	invalid(t, AttentionForwardEx(h, h, h, make([]float32, 2), h, nil, p, F16), "mask has 2 elements, want 1")
	invalid(t, AttentionForwardEx(h, h, h, nil, h, make([]float32, 1), p, DType(7)), "cudann_attention_forward")
}

// unread fills the KV positions past KVLen with NaNs: the op must not read them.
func unread(dt DType, k, v []uint16, p AttentionParams, capacity int) {
	nan := refFromF32(dt, float32(math.NaN()))
	row := p.KVHeads * p.HeadDim
	for b := 0; b < p.Batch; b++ {
		for j := (b*capacity + p.KVLen) * row; j < (b+1)*capacity*row; j++ {
			k[j], v[j] = nan, nan
		}
	}
}

func TestRopeQKEx(t *testing.T) {
	for _, dt := range halfTypes {
		for _, s := range [][6]int{{1, 1, 1, 1, 2, 0}, {2, 5, 4, 2, 16, 3}, {2, 300, 8, 2, 64, 40}} {
			batch, seq, qHeads, kvHeads, headDim, offset := s[0], s[1], s[2], s[3], s[4], s[5]
			freqs := make([]float32, (seq+offset)*headDim/2)
			must(t, RopeFreqs(freqs, seq+offset, headDim, 10000, 1))
			nq, nk := batch*seq*qHeads*headDim, batch*seq*kvHeads*headDim
			q, k := halfData(t, 55, dt, nq, 4, true), halfData(t, 56, dt, nk, 4, true)
			wantQ, wantK := make([]float32, nq), make([]float32, nk)
			must(t, RopeQK(widen(t, dt, q), widen(t, dt, k), freqs, wantQ, wantK, batch, seq, qHeads, kvHeads, headDim, offset))
			gotQ, gotK := make([]uint16, nq), make([]uint16, nk)
			must(t, RopeQKEx(q, k, freqs, gotQ, gotK, batch, seq, qHeads, kvHeads, headDim, offset, dt))
			sameHalves(t, fmt.Sprint("RopeQKEx q ", s), dt, gotQ, round(t, dt, wantQ))
			sameHalves(t, fmt.Sprint("RopeQKEx k ", s), dt, gotK, round(t, dt, wantK))
			must(t, RopeQKEx(q, k, freqs, q, k, batch, seq, qHeads, kvHeads, headDim, offset, dt)) // in place
			sameHalves(t, "RopeQKEx q in place", dt, q, round(t, dt, wantQ))
			sameHalves(t, "RopeQKEx k in place", dt, k, round(t, dt, wantK))
		}
	}
	h, f := make([]uint16, 4), make([]float32, 2)
	x := make([]float32, 4)
	invalid(t, RopeQKEx(x, x, f, x, x, 1, 2, 1, 1, 2, 0, BF16), "q is a []float32")
	invalid(t, RopeQKEx(h, h, f[:1], h, h, 1, 2, 1, 1, 2, 0, F16), "freqs has 1 elements, want at least 2")
	invalid(t, RopeQKEx(h, h, f, h, h, 1, 2, 1, 1, 2, 0, DType(7)), "cudann_rope_qk_ex")
}
