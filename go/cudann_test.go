package cudann

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/cudann/cudann/go/internal/ref"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func near(t *testing.T, what string, got []float32, want, scale []float64, rtol float64) {
	t.Helper()
	if err := ref.Close(got, want, scale, rtol); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// invalid checks that err is CUDANN_INVALID_VALUE with a message containing msg.
func invalid(t *testing.T, err error, msg string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Code != InvalidValue || !errors.Is(err, ErrInvalidValue) || !strings.Contains(e.Msg, msg) {
		t.Errorf("got %v, want CUDANN_INVALID_VALUE mentioning %q", err, msg)
	}
}

func TestVersion(t *testing.T) {
	if Version() == "" {
		t.Fatal("empty cudann_version")
	}
}

func TestGemm(t *testing.T) {
	for _, s := range [][3]int{{1, 1, 1}, {33, 31, 17}, {4, 4097, 3}, {31, 5, 1000}} {
		m, n, k := s[0], s[1], s[2]
		a, b, c := ref.Rand(1, m*k, 1), ref.Rand(2, k*n, 1), ref.Rand(3, m*n, 1)
		want, bound := ref.Gemm(a, b, c, m, n, k, 0.5, -2)
		must(t, Gemm(a, b, c, m, n, k, 0.5, -2))
		near(t, fmt.Sprint("gemm ", s), c, want, bound, 1e-5)
	}
	// beta == 0: C is not read, so a NaN in it must not survive.
	a, b := ref.Rand(4, 6, 1), ref.Rand(5, 6, 1)
	c := []float32{float32(math.NaN()), float32(math.NaN()), float32(math.NaN()), float32(math.NaN())}
	want, bound := ref.Gemm(a, b, make([]float32, 4), 2, 2, 3, 1, 0)
	must(t, Gemm(a, b, c, 2, 2, 3, 1, 0))
	near(t, "gemm beta 0", c, want, bound, 1e-5)
}

func TestSoftmax(t *testing.T) {
	rows, cols := 3, 4097
	x := ref.Rand(6, rows*cols, 10)
	for i := 0; i < cols; i++ {
		x[i] += 5000 // stable only if the row max is subtracted
	}
	x[cols+7] = float32(math.Inf(-1))
	out := make([]float32, len(x))
	must(t, Softmax(x, out, rows, cols))
	near(t, "softmax", out, ref.Softmax(x, rows, cols), nil, 1e-5)
	if out[cols+7] != 0 {
		t.Errorf("softmax of -inf = %v, want 0", out[cols+7])
	}
}

func TestRMSNorm(t *testing.T) {
	rows, dim := 7, 1000
	x, w := ref.Rand(7, rows*dim, 3), ref.Rand(8, dim, 1)
	out := make([]float32, len(x))
	must(t, RMSNorm(x, w, out, rows, dim, 1e-5))
	near(t, "rmsnorm", out, ref.RMSNorm(x, w, rows, dim, float64(float32(1e-5))), nil, 1e-5)
}

func TestCrossEntropy(t *testing.T) {
	rows, vocab := 5, 33
	logits := ref.Rand(9, rows*vocab, 4)
	targets := []int32{0, -100, 32, 7, -100} // -100: padding rows
	loss, lp := make([]float32, 1), make([]float32, rows*vocab)
	must(t, CrossEntropyForward(logits, targets, loss, lp, rows, vocab))
	wantLP := ref.LogSoftmax(logits, rows, vocab)
	scale := make([]float64, len(wantLP))
	for i, v := range wantLP {
		scale[i] = math.Abs(v) + 1
	}
	near(t, "log_probs", lp, wantLP, scale, 1e-5)
	nll := -(wantLP[0] + wantLP[2*vocab+32] + wantLP[3*vocab+7]) / 3
	near(t, "loss", loss, []float64{nll}, nil, 1e-5)

	d := make([]float32, rows*vocab)
	must(t, CrossEntropyBackward(lp, targets, d, rows, vocab, 0.25))
	want := make([]float64, len(d))
	for r := 0; r < rows; r++ {
		for c := 0; c < vocab; c++ {
			i := r*vocab + c
			if targets[r] < 0 {
				continue // padding rows get a zero gradient
			}
			onehot := 0.0
			if int32(c) == targets[r] {
				onehot = 1
			}
			p := math.Exp(float64(lp[i]))
			want[i], scale[i] = (p-onehot)*0.25, (p+onehot)*0.25
		}
	}
	near(t, "d_logits", d, want, scale, 1e-5)
}

func TestAdamW(t *testing.T) {
	n := 1000
	p, m, v := ref.Rand(10, n, 1), make([]float32, n), make([]float32, n)
	for step := 1; step <= 3; step++ {
		g := ref.Rand(int64(10+step), n, 1)
		wantP, wantM, wantV := ref.AdamW(p, g, m, v, float64(float32(1e-2)), float64(float32(0.9)),
			float64(float32(0.999)), float64(float32(1e-8)), float64(float32(0.1)), step)
		must(t, AdamWStep(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.1, step))
		tol := make([]float64, n)
		for i := range tol {
			tol[i] = 1e-7 + 1e-6*math.Abs(wantP[i])
		}
		near(t, "adamw param", p, wantP, tol, 1)
		for i := range tol {
			tol[i] = 1e-6 * (math.Abs(wantM[i]) + 0.1*math.Abs(float64(g[i])))
		}
		near(t, "adamw m", m, wantM, tol, 1)
		near(t, "adamw v", v, wantV, nil, 1e-6)
	}
}

func TestArgmax(t *testing.T) {
	rows, vocab := 4, 4097
	x := ref.Rand(14, rows*vocab, 1)
	x[vocab+100], x[vocab+4000] = 5, 5 // a tie: the first index wins
	out := make([]int32, rows)
	must(t, Argmax(x, out, rows, vocab))
	for r := 0; r < rows; r++ {
		if want := ref.Argmax(x[r*vocab : (r+1)*vocab]); out[r] != want {
			t.Errorf("row %d: argmax %d, want %d", r, out[r], want)
		}
	}
	if out[1] != 100 {
		t.Errorf("tie resolved to %d, want 100", out[1])
	}
}

// samplingRows repeats one logits row `rows` times, each with its own seed.
func samplingRows(row []float32, rows int) ([]float32, []uint64) {
	logits, seeds := make([]float32, 0, rows*len(row)), make([]uint64, rows)
	for r := 0; r < rows; r++ {
		logits = append(logits, row...)
		seeds[r] = uint64(r)*0x9E3779B97F4A7C15 + 1
	}
	return logits, seeds
}

func TestTopKSample(t *testing.T) {
	vocab, rows, k := 33, 2000, 4
	row := ref.Rand(15, vocab, 2)
	logits, seeds := samplingRows(row, rows)
	out, again := make([]int32, rows), make([]int32, rows)
	must(t, TopKSample(logits, out, seeds, rows, vocab, k, 1))
	must(t, TopKSample(logits, again, seeds, rows, vocab, k, 1))
	if !reflect.DeepEqual(out, again) {
		t.Error("same seeds gave different tokens")
	}
	top, seen := ref.TopK(row, k), map[int32]bool{}
	for _, tok := range out {
		if !top[tok] {
			t.Fatalf("token %d is outside the top %d %v", tok, k, top)
		}
		seen[tok] = true
	}
	if len(seen) != k {
		t.Errorf("drew %d distinct tokens of the top %d", len(seen), k)
	}
	must(t, TopKSample(logits, out, seeds, rows, vocab, k, 0)) // temperature 0 is argmax
	for _, tok := range out {
		if tok != ref.Argmax(row) {
			t.Fatalf("temperature 0 drew %d, argmax is %d", tok, ref.Argmax(row))
		}
	}
}

func TestTopPSample(t *testing.T) {
	vocab, rows := 1000, 2000
	row := ref.Rand(16, vocab, 6)
	logits, seeds := samplingRows(row, rows)
	for _, topP := range []float32{0.1, 0.5, 0.9} {
		out, again := make([]int32, rows), make([]int32, rows)
		must(t, TopPSample(logits, out, seeds, rows, vocab, topP, 1))
		must(t, TopPSample(logits, again, seeds, rows, vocab, topP, 1))
		if !reflect.DeepEqual(out, again) {
			t.Errorf("top_p %v: same seeds gave different tokens", topP)
		}
		nucleus := ref.Nucleus(ref.Softmax(row, 1, vocab), float64(topP))
		for _, tok := range out {
			if !nucleus[tok] {
				t.Fatalf("top_p %v: token %d is outside the nucleus (%d tokens)", topP, tok, len(nucleus))
			}
		}
	}
}

func TestErrorPath(t *testing.T) {
	out := []int32{-7, -7}
	err := TopKSample(make([]float32, 8), out, []uint64{1, 2}, 2, 4, 0, 1)
	var e *Error
	if !errors.As(err, &e) || e.Code != InvalidValue {
		t.Fatalf("got %v, want CUDANN_INVALID_VALUE", err)
	}
	if e.Msg != "cuda_topk_sample: k must be >= 1 (got 0)" {
		t.Errorf("cudann_last_error = %q", e.Msg)
	}
	if out[0] != -7 || out[1] != -7 {
		t.Errorf("output written on error: %v", out)
	}
}

func TestGemmEx(t *testing.T) {
	// Two C_i = 0.5 A_i B^T - 2 C_i: A_i 3x5 (row stride 7), one shared B 4x5
	// (row stride 6), C_i 3x4 (row stride 6, 18 apart); the padding must stay.
	m, n, k, batch := 3, 4, 5, 2
	lda, strideA, ldb, ldc, strideC := 7, 22, 6, 6, 18
	a, b, c := ref.Rand(20, batch*strideA, 1), ref.Rand(21, n*ldb, 1), ref.Rand(22, batch*strideC, 1)
	before := append([]float32(nil), c...)
	want, bound := ref.GemmEx(false, true, m, n, k, 0.5, a, lda, strideA, b, ldb, 0, -2, c, ldc, strideC, batch)
	gemm := func(aType DType) error {
		return GemmEx(GemmExParams{TransB: true, M: m, N: n, K: k, Alpha: 0.5, Beta: -2, AType: aType,
			Lda: int64(lda), StrideA: int64(strideA), Ldb: int64(ldb), Ldc: int64(ldc), StrideC: int64(strideC),
			Batch: batch}, a, b, c)
	}
	invalid(t, gemm(DType(99)), "cudann_gemm_ex")
	if !reflect.DeepEqual(c, before) {
		t.Error("C written by a call with an unknown type")
	}
	must(t, gemm(F32))
	near(t, "gemm_ex", c, want, bound, 1e-5)
}

func TestGemmGrouped(t *testing.T) {
	// C_g = 0.5 op(A_g) op(B_g) - 1.5 C_g over 3 groups, C's rows padded (ldc =
	// n+1). Rows grouped: rows 1 to 6 of m = 8 in groups (the first empty; rows 0
	// and 7, and the padding, must stay), one A and C, a B per group. K grouped
	// (weight gradients): k = 9 split 0..3, 3..3, 3..9, one A and B, a C per
	// group (the empty group's is -1.5 C_g).
	n, ldc := 5, 6
	for _, inner := range []bool{false, true} {
		m, k, offsets := 8, 6, []int32{1, 1, 4, 7}
		strideB, strideC, nb, nc := k*n, 0, 3*k*n, m*ldc
		if inner {
			m, k, offsets = 4, 9, []int32{0, 3, 3, 9}
			strideB, strideC, nb, nc = 0, m*ldc, k*n, 3*m*ldc
		}
		for _, tr := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
			lda, ldb := k, n
			if tr[0] {
				lda = m
			}
			if tr[1] {
				ldb = k
			}
			a, b, c := ref.Rand(40, m*k, 1), ref.Rand(41, nb, 1), ref.Rand(42, nc, 1)
			want, bound := ref.GemmGrouped(tr[0], tr[1], inner, m, n, k, 0.5, a, lda, 0, b, ldb, strideB, -1.5, c, ldc, strideC, offsets)
			p := GemmGroupedParams{GemmExParams{TransA: tr[0], TransB: tr[1], M: m, N: n, K: k, Alpha: 0.5, Beta: -1.5,
				Ldc: int64(ldc), StrideB: int64(strideB), StrideC: int64(strideC)}, inner}
			must(t, GemmGrouped(p, a, b, c, offsets))
			// Entries no group writes have a zero error scale: they must be unchanged.
			near(t, fmt.Sprint("gemm_grouped inner=", inner, " trans=", tr), c, want, bound, 1e-5)
		}
	}

	// Library memory, offsets included (read where the call runs).
	m, k, offsets := 8, 4, []int32{0, 2, 2, 8}
	a, b, c := ref.Rand(43, m*k, 1), ref.Rand(44, 3*k*n, 1), ref.Rand(45, m*n, 1)
	want, bound := ref.GemmGrouped(false, false, false, m, n, k, 1, a, k, 0, b, n, k*n, 0.25, c, n, 0, offsets)
	var bufs []*Buffer
	for _, x := range [][]float32{a, b, c} {
		buf, err := MallocFloat32(len(x), x)
		must(t, err)
		defer buf.Close()
		bufs = append(bufs, buf)
	}
	bo := malloc(t, 4*int64(len(offsets)))
	defer bo.Close()
	must(t, bo.Upload(offsets))
	p := GemmGroupedParams{GemmExParams: GemmExParams{M: m, N: n, K: k, Alpha: 1, Beta: 0.25, StrideB: int64(k * n)}}
	must(t, GemmGrouped(p, bufs[0], bufs[1], bufs[2], bo))
	got, err := bufs[2].Float32s()
	must(t, err)
	near(t, "gemm_grouped on library memory", got, want, bound, 1e-5)

	// Offsets out of order or range: the library's error, nothing written.
	before := append([]float32(nil), c...)
	for _, e := range []struct {
		offsets []int32
		msg     string
	}{
		{[]int32{0, 3, 2, 8}, "cudann_gemm_grouped: offsets[2] = 2 is less than offsets[1] = 3 (offsets may not decrease)"},
		{[]int32{0, 3, 5, 9}, "cudann_gemm_grouped: offsets[3] = 9 is outside [0, m = 8]"},
	} {
		invalid(t, GemmGrouped(p, a, b, c, e.offsets), e.msg)
	}
	if !reflect.DeepEqual(c, before) {
		t.Error("C written by a call with bad offsets")
	}
	invalid(t, GemmGrouped(p, a, b, c, []int32{}), "cudann.GemmGrouped: offsets must hold groups + 1 elements (got none)")
	invalid(t, GemmGrouped(p, a, b[:2*k*n], c, offsets), "b has 40 elements, want at least 60")
}

func TestSwiglu(t *testing.T) {
	n := 1000
	gate, u, dy := ref.Rand(23, n, 8), ref.Rand(24, n, 2), ref.Rand(25, n, 1)
	out, dGate, dUp := make([]float32, n), make([]float32, n), make([]float32, n)
	must(t, Swiglu(gate, u, out))
	near(t, "swiglu", out, ref.Swiglu(gate, u), nil, 1e-5)
	must(t, SwigluBackward(dy, gate, u, dGate, dUp))
	wantGate, wantUp := ref.SwigluBackward(dy, gate, u)
	near(t, "d_gate", dGate, wantGate, ref.AbsPlus(wantGate, 1e-2), 1e-5) // silu' has a root: an absolute floor
	near(t, "d_up", dUp, wantUp, ref.AbsPlus(wantUp, 1e-2), 1e-5)
}

func TestRMSNormBackward(t *testing.T) {
	rows, dim, eps := 3, 5, float32(1e-5)
	x, w, dy := ref.Rand(26, rows*dim, 2), ref.Rand(27, dim, 1), ref.Rand(28, rows*dim, 1)
	dIn, dW := make([]float32, rows*dim), make([]float32, dim)
	must(t, RMSNormBackward(dy, x, w, dIn, dW, rows, dim, eps))
	x64, w64 := ref.F64(x), ref.F64(w)
	loss := func() float64 { return ref.Dot(dy, ref.RMSNorm(x64, w64, rows, dim, float64(eps))) }
	wantIn, wantW := ref.NumGrad(loss, x64, 1e-6), ref.NumGrad(loss, w64, 1e-6)
	near(t, "d_input", dIn, wantIn, ref.AbsPlus(wantIn, 1e-3), 1e-4)
	near(t, "d_weight", dW, wantW, ref.AbsPlus(wantW, 1e-3), 1e-4)
}

func TestAttention(t *testing.T) {
	// Causal GQA: 4 query heads on 2 KV heads, 4 positions, head_dim 3.
	seq, heads, kvHeads, dim := 4, 4, 2, 3
	scale := float32(1 / math.Sqrt(3))
	q, k, v := ref.Rand(29, seq*heads*dim, 2), ref.Rand(30, seq*kvHeads*dim, 2), ref.Rand(31, seq*kvHeads*dim, 1)
	out, lse := make([]float32, len(q)), make([]float32, seq*heads)
	p := AttentionParams{Batch: 1, QLen: seq, KVLen: seq, Heads: heads, KVHeads: kvHeads, HeadDim: dim, Causal: true, Scale: scale}
	must(t, AttentionForward(q, k, v, nil, out, lse, p))
	q64, k64, v64 := ref.F64(q), ref.F64(k), ref.F64(v)
	attention := func() ([]float64, []float64) {
		return ref.Attention(q64, k64, v64, 1, seq, seq, heads, kvHeads, dim, 0, true, float64(scale))
	}
	wantOut, wantLSE := attention()
	near(t, "output", out, wantOut, ref.AbsPlus(wantOut, 1), 1e-5)
	near(t, "lse", lse, wantLSE, ref.AbsPlus(wantLSE, 1), 1e-5)

	dy := ref.Rand(32, len(q), 1)
	dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
	must(t, AttentionBackward(dy, q, k, v, nil, out, lse, dq, dk, dv, p))
	loss := func() float64 {
		o, _ := attention()
		return ref.Dot(dy, o)
	}
	for _, g := range []struct {
		name string
		got  []float32
		x    []float64
	}{{"d_q", dq, q64}, {"d_k", dk, k64}, {"d_v", dv, v64}} {
		want := ref.NumGrad(loss, g.x, 1e-6)
		near(t, g.name, g.got, want, ref.AbsPlus(want, 1e-3), 1e-3)
	}
}

func TestEmbedding(t *testing.T) {
	vocab, dim := 5, 3
	ids := []int32{3, -1, 0, 3, 1} // -1: padding, a zero row; rows 2 and 4 unused
	table, dy := ref.Rand(33, vocab*dim, 1), ref.Rand(34, len(ids)*dim, 1)
	out, dTable := make([]float32, len(ids)*dim), ref.Rand(35, vocab*dim, 1) // written, not accumulated
	must(t, Embedding(ids, table, out, len(ids), vocab, dim))
	near(t, "embedding", out, ref.Embedding(ids, table, dim), nil, 0)
	must(t, EmbeddingBackward(ids, dy, dTable, len(ids), vocab, dim))
	near(t, "d_table", dTable, ref.EmbeddingBackward(ids, dy, vocab, dim), nil, 1e-6)
}

func TestMoeDispatchCombine(t *testing.T) {
	tokens, dim, experts, k := 4, 3, 4, 2
	indices := []int32{2, 0, 0, 2, 3, 0, 2, 3} // expert 1 unused
	in := ref.Rand(36, tokens*dim, 1)
	out, order, offsets := make([]float32, tokens*k*dim), make([]int32, tokens*k), make([]int32, experts+1)
	must(t, MoeDispatch(in, indices, out, order, offsets, tokens, dim, experts, k))
	wantOut, wantOrder, wantOffsets := ref.MoeDispatch(in, indices, dim, experts, k)
	if !reflect.DeepEqual(order, wantOrder) || !reflect.DeepEqual(offsets, wantOffsets) {
		t.Fatalf("order %v offsets %v, want %v %v", order, offsets, wantOrder, wantOffsets)
	}
	near(t, "dispatched rows", out, wantOut, nil, 0)

	expertOut, w := ref.Rand(37, tokens*k*dim, 1), ref.Rand(38, tokens*k, 1)
	combined := make([]float32, tokens*dim)
	must(t, MoeCombine(expertOut, w, order, combined, tokens, dim, k))
	want := ref.MoeCombine(expertOut, w, order, dim, k)
	near(t, "combine", combined, want, ref.AbsPlus(want, 1e-6), 1e-6)
}

func TestSafetensors(t *testing.T) {
	tensors := []struct {
		name  string
		dtype DType
		shape []int64
		data  any
	}{{"weight", F32, []int64{2, 3}, ref.Rand(39, 6, 1)}, {"steps", I32, []int64{3}, []int32{7, -1, 1 << 30}}}
	dir := t.TempDir()
	path := filepath.Join(dir, "ckpt.safetensors")
	w, err := NewSafetensorsWriter()
	must(t, err)
	for _, x := range tensors {
		must(t, w.Add(x.name, x.shape, x.data))
	}
	must(t, w.Save(path))
	must(t, w.Close())

	f, err := OpenSafetensors(path)
	must(t, err)
	n, err := f.Count()
	must(t, err)
	var names []string
	for i := 0; i < n; i++ {
		name, err := f.Name(i)
		must(t, err)
		names = append(names, name)
	}
	sort.Strings(names)
	if !reflect.DeepEqual(names, []string{"steps", "weight"}) {
		t.Errorf("names %q", names)
	}
	for _, x := range tensors {
		dtype, shape, err := f.Info(x.name)
		must(t, err)
		if dtype != x.dtype || !reflect.DeepEqual(shape, x.shape) {
			t.Errorf("%s: type %d shape %v, want %d %v", x.name, dtype, shape, x.dtype, x.shape)
		}
		size := reflect.ValueOf(x.data).Len()
		got := reflect.MakeSlice(reflect.TypeOf(x.data), size, size).Interface()
		must(t, f.Read(x.name, got))
		if !reflect.DeepEqual(got, x.data) {
			t.Errorf("%s: read %v, want %v", x.name, got, x.data)
		}
	}
	must(t, f.Close())

	data, err := os.ReadFile(path)
	must(t, err)
	truncated := filepath.Join(dir, "truncated.safetensors")
	must(t, os.WriteFile(truncated, data[:len(data)-1], 0o600))
	_, err = OpenSafetensors(truncated)
	invalid(t, err, "not a valid safetensors file")
}

// job is one independent call; it returns its outputs.
type job func() ([]float32, []int32, error)

func jobs() []job {
	var js []job
	for i := 0; i < 16; i++ {
		seed := int64(100 + i)
		js = append(js,
			func() ([]float32, []int32, error) {
				c := make([]float32, 64*48)
				return c, nil, Gemm(ref.Rand(seed, 64*200, 1), ref.Rand(seed+1, 200*48, 1), c, 64, 48, 200, 1, 0)
			},
			func() ([]float32, []int32, error) {
				out := make([]float32, 8*4097)
				return out, nil, Softmax(ref.Rand(seed, 8*4097, 5), out, 8, 4097)
			},
			func() ([]float32, []int32, error) {
				loss, lp := make([]float32, 1), make([]float32, 16*1000)
				targets := []int32{1, 2, 3, -100, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 999}
				err := CrossEntropyForward(ref.Rand(seed, 16*1000, 3), targets, loss, lp, 16, 1000)
				return append(loss, lp...), nil, err
			},
			func() ([]float32, []int32, error) {
				logits, seeds := samplingRows(ref.Rand(seed, 500, 3), 64)
				out := make([]int32, 64)
				return nil, out, TopPSample(logits, out, seeds, 64, 500, 0.8, 1)
			},
			func() ([]float32, []int32, error) {
				// An error on this goroutine must report its own message.
				err := TopKSample(make([]float32, 4), make([]int32, 1), []uint64{1}, 1, 4, int(-seed), 1)
				var e *Error
				if !errors.As(err, &e) || e.Msg != fmt.Sprintf("cuda_topk_sample: k must be >= 1 (got %d)", -seed) {
					return nil, nil, fmt.Errorf("wrong error on a concurrent call: %v", err)
				}
				return nil, nil, nil
			})
	}
	return js
}

func TestConcurrentGoroutinesMatchSerial(t *testing.T) {
	js := jobs()
	type result struct {
		f   []float32
		i   []int32
		err error
	}
	serial := make([]result, len(js))
	for k, j := range js {
		f, i, err := j()
		must(t, err)
		serial[k] = result{f, i, nil}
	}
	for round := 0; round < 3; round++ {
		parallel := make([]result, len(js))
		var wg sync.WaitGroup
		for k, j := range js {
			wg.Add(1)
			go func(k int, j job) {
				defer wg.Done()
				f, i, err := j()
				parallel[k] = result{f, i, err}
			}(k, j)
		}
		wg.Wait()
		for k := range js {
			must(t, parallel[k].err)
			// Bitwise: the library is deterministic, whatever the interleaving.
			if !reflect.DeepEqual(parallel[k], serial[k]) {
				t.Fatalf("round %d job %d: concurrent result differs from serial", round, k)
			}
		}
	}
	// And the serial results are right (not two wrong answers agreeing).
	a, b := ref.Rand(100, 64*200, 1), ref.Rand(101, 200*48, 1)
	want, bound := ref.Gemm(a, b, make([]float32, 64*48), 64, 48, 200, 1, 0)
	near(t, "serial gemm", serial[0].f, want, bound, 1e-5)
}
