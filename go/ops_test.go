package cudann

import (
	"math"
	"reflect"
	"testing"

	"github.com/cudann/cudann/go/internal/ref"
)

func zeros(n int) []float32 { return make([]float32, n) }

func TestElementwise(t *testing.T) {
	n := 1000
	a, b, dy := ref.Rand(60, n, 4), ref.Rand(61, n, 2), ref.Rand(62, n, 1)
	out := zeros(n)
	sum, prod, scaled := make([]float64, n), make([]float64, n), make([]float64, n)
	for i := range a {
		sum[i], prod[i], scaled[i] = float64(a[i])+float64(b[i]), float64(a[i])*float64(b[i]), -1.5*float64(a[i])
	}
	must(t, Add(a, b, out))
	near(t, "add", out, sum, nil, 1e-7)
	must(t, Mul(a, b, out))
	near(t, "mul", out, prod, nil, 1e-7)
	must(t, Scale(a, out, -1.5))
	near(t, "scale", out, scaled, nil, 1e-7)
	must(t, Gelu(a, out))
	near(t, "gelu", out, ref.Gelu(a), ref.AbsPlus(ref.Gelu(a), 1e-6), 1e-5)

	a64 := ref.F64(a)
	for _, g := range []struct {
		name string
		f    func([]float32, []float32, []float32, ...*Stream) error
		fwd  func() []float64
	}{
		{"silu backward", SiluBackward[[]float32], func() []float64 {
			y := make([]float64, n)
			for i, v := range a64 {
				y[i] = v / (1 + math.Exp(-v))
			}
			return y
		}},
		{"gelu backward", GeluBackward[[]float32], func() []float64 { return ref.Gelu(a64) }},
	} {
		must(t, g.f(dy, a, out))
		// elementwise: the gradient of sum(dy * f(x)) is dy * f'(x)
		want := ref.NumGrad(func() float64 { return ref.Dot(dy, g.fwd()) }, a64, 1e-6)
		near(t, g.name, out, want, ref.AbsPlus(want, 1e-3), 1e-4)
	}

	g := ref.Rand(63, 300, 1)
	must(t, ZeroGrad(g))
	near(t, "zero grad", g, make([]float64, 300), nil, 0)
}

// f32 narrows x (references that take float32 inputs).
func f32(x []float64) []float32 {
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = float32(v)
	}
	return y
}

func TestGradClip(t *testing.T) {
	g := ref.Rand(64, 1000, 1)
	norm := 0.0
	for _, v := range g {
		norm += float64(v) * float64(v)
	}
	norm = math.Sqrt(norm)
	want := ref.F64(g)
	for i := range want {
		want[i] *= 0.5 / norm
	}
	total := zeros(1)
	must(t, GradClip(g, zeros(4), total, 0.5))
	near(t, "total norm", total, []float64{norm}, nil, 1e-6)
	near(t, "clipped", g, want, ref.AbsPlus(want, 1e-7), 1e-5)
	invalid(t, GradClip(g, zeros(3), total, 0.5), "partialNorms has 3 elements, want at least 4")
}

func TestSoftmaxBackwardAndTopK(t *testing.T) {
	rows, cols := 3, 7
	x, dy := ref.Rand(65, rows*cols, 3), ref.Rand(66, rows*cols, 1)
	y, dx := zeros(rows*cols), zeros(rows*cols)
	must(t, Softmax(x, y, rows, cols))
	must(t, SoftmaxBackward(dy, y, dx, rows, cols))
	x64 := ref.F64(x)
	want := ref.NumGrad(func() float64 { return ref.Dot(dy, ref.Softmax(f32(x64), rows, cols)) }, x64, 1e-3)
	near(t, "softmax backward", dx, want, ref.AbsPlus(want, 1e-3), 1e-3)

	k := 2
	w, idx := zeros(rows*k), make([]int32, rows*k)
	must(t, SoftmaxTopK(x, w, idx, rows, cols, k))
	p := ref.Softmax(x, rows, cols)
	for r := 0; r < rows; r++ {
		top := ref.TopK(x[r*cols:(r+1)*cols], k)
		s := p[r*cols+int(idx[r*k])] + p[r*cols+int(idx[r*k+1])]
		for j := 0; j < k; j++ {
			if !top[idx[r*k+j]] {
				t.Errorf("row %d: index %d is not in the top %d", r, idx[r*k+j], k)
			}
			near(t, "topk weight", w[r*k+j:r*k+j+1], []float64{p[r*cols+int(idx[r*k+j])] / s}, nil, 1e-5)
		}
	}
}

func TestNorms(t *testing.T) {
	rows, dim, eps := 3, 6, float32(1e-5)
	x, res, w, b := ref.Rand(67, rows*dim, 2), ref.Rand(68, rows*dim, 1), ref.Rand(69, dim, 1), ref.Rand(70, dim, 1)
	out, resOut := zeros(rows*dim), zeros(rows*dim)
	must(t, RMSNormResidual(x, res, w, out, resOut, rows, dim, eps))
	s := make([]float32, len(x))
	for i := range s {
		s[i] = x[i] + res[i]
	}
	near(t, "residual sum", resOut, ref.F64(s), nil, 1e-7)
	near(t, "rmsnorm of the sum", out, ref.RMSNorm(s, w, rows, dim, float64(eps)), nil, 1e-5)

	must(t, LayerNorm(x, w, b, out, rows, dim, eps))
	near(t, "layernorm", out, ref.LayerNorm(x, w, b, rows, dim, float64(eps)), ref.AbsPlus(ref.LayerNorm(x, w, b, rows, dim, float64(eps)), 1e-5), 1e-5)
	dy := ref.Rand(71, rows*dim, 1)
	dx, dw, db := zeros(rows*dim), zeros(dim), zeros(dim)
	must(t, LayerNormBackward(dy, x, w, dx, dw, db, rows, dim, eps))
	x64, w64, b64 := ref.F64(x), ref.F64(w), ref.F64(b)
	loss := func() float64 { return ref.Dot(dy, ref.LayerNorm(x64, w64, b64, rows, dim, float64(eps))) }
	for _, g := range []struct {
		name string
		got  []float32
		x    []float64
	}{{"d_input", dx, x64}, {"d_weight", dw, w64}, {"d_bias", db, b64}} {
		want := ref.NumGrad(loss, g.x, 1e-6)
		near(t, "layernorm "+g.name, g.got, want, ref.AbsPlus(want, 1e-3), 1e-4)
	}

	must(t, BiasAdd(x, b, out, rows, dim))
	want, colSums := make([]float64, rows*dim), make([]float64, dim)
	for i := range x {
		want[i] = float64(x[i]) + float64(b[i%dim])
		colSums[i%dim] += float64(dy[i])
	}
	near(t, "bias add", out, want, nil, 1e-7)
	must(t, BiasBackward(dy, db, rows, dim))
	near(t, "bias backward", db, colSums, ref.AbsPlus(colSums, 1e-6), 1e-6)
}

func TestGemmBatched(t *testing.T) {
	batch, m, n, k := 3, 4, 5, 6
	a, b, c := ref.Rand(72, batch*m*k, 1), ref.Rand(73, batch*k*n, 1), ref.Rand(74, batch*m*n, 1)
	var want, bound []float64
	for i := 0; i < batch; i++ {
		w, bd := ref.Gemm(a[i*m*k:(i+1)*m*k], b[i*k*n:(i+1)*k*n], c[i*m*n:(i+1)*m*n], m, n, k, 2, 0.5)
		want, bound = append(want, w...), append(bound, bd...)
	}
	must(t, GemmBatched(a, b, c, batch, m, n, k, 2, 0.5))
	near(t, "gemm batched", c, want, bound, 1e-5)
}

func TestAuxLoss(t *testing.T) {
	tokens, experts, k, alpha := 4, 3, 2, float32(0.01)
	probs := ref.Softmax(ref.Rand(75, tokens*experts, 2), tokens, experts)
	p32 := f32(probs)
	idx := []int32{0, 1, 2, 0, 1, 2, 0, 2}
	loss, fc, pm := zeros(1), zeros(experts), zeros(experts)
	must(t, AuxLossForward(p32, idx, loss, fc, pm, tokens, experts, k, alpha))
	wf, wp := make([]float64, experts), make([]float64, experts)
	for i, e := range idx {
		_ = i
		wf[e] += 1.0 / float64(tokens)
	}
	for i, v := range p32 {
		wp[i%experts] += float64(v) / float64(tokens)
	}
	l := 0.0
	for e := range wf {
		l += wf[e] * wp[e]
	}
	near(t, "f_counts", fc, wf, nil, 1e-6)
	near(t, "p_means", pm, wp, nil, 1e-6)
	near(t, "aux loss", loss, []float64{float64(alpha) * float64(experts) * l}, nil, 1e-5)
	d := zeros(tokens * experts)
	must(t, AuxLossBackward(fc, d, tokens, experts, alpha, 2))
	want := make([]float64, tokens*experts)
	for i := range want {
		want[i] = 2 * float64(alpha) * float64(experts) * float64(fc[i%experts]) / float64(tokens)
	}
	near(t, "aux loss backward", d, want, nil, 1e-6)
}

func TestSampleAndScatterAdd(t *testing.T) {
	rows, vocab := 64, 50
	row := ref.Rand(76, vocab, 2)
	logits, seeds := samplingRows(row, rows)
	out := make([]int32, rows)
	must(t, Sample(logits, out, seeds, rows, vocab, 0))
	for _, tok := range out {
		if tok != ref.Argmax(row) {
			t.Fatalf("temperature 0 drew %d, argmax is %d", tok, ref.Argmax(row))
		}
	}
	must(t, Sample(logits, out, seeds, rows, vocab, 1))
	again := make([]int32, rows)
	must(t, Sample(logits, again, seeds, rows, vocab, 1))
	if !reflect.DeepEqual(out, again) {
		t.Error("same seeds gave different tokens")
	}

	ids, dim := []int32{2, -1, 0, 2}, 3
	dy, gw := ref.Rand(77, len(ids)*dim, 1), ref.Rand(78, 3*dim, 1)
	want := ref.EmbeddingBackward(ids, dy, 3, dim)
	for i := range want {
		want[i] += float64(gw[i]) // accumulated
	}
	must(t, ScatterAdd(dy, ids, gw, len(ids), dim))
	near(t, "scatter add", gw, want, ref.AbsPlus(want, 1e-6), 1e-6)
	invalid(t, ScatterAdd(dy, []int32{2, 3, 0, 0}, gw, 4, dim), "index 3 is outside gradWeight's 3 rows")
}

func TestMoeBackward(t *testing.T) {
	tokens, dim, experts, k := 3, 2, 3, 2
	indices := []int32{1, 0, 2, 1, 0, 2}
	in := ref.Rand(79, tokens*dim, 1)
	rows, order, offsets := zeros(tokens*k*dim), make([]int32, tokens*k), make([]int32, experts+1)
	must(t, MoeDispatch(in, indices, rows, order, offsets, tokens, dim, experts, k))

	// Dispatch backward: the rows a token was copied into, summed.
	dRows := ref.Rand(80, tokens*k*dim, 1)
	dIn := zeros(tokens * dim)
	must(t, MoeDispatchBackward(dRows, order, dIn, tokens, dim, k))
	want := make([]float64, tokens*dim)
	for row, pair := range order {
		for d := 0; d < dim; d++ {
			want[int(pair)/k*dim+d] += float64(dRows[row*dim+d])
		}
	}
	near(t, "dispatch backward", dIn, want, ref.AbsPlus(want, 1e-6), 1e-6)

	// Combine backward against finite differences of the combine reference.
	expertOut, w, dy := ref.Rand(81, tokens*k*dim, 1), ref.Rand(82, tokens*k, 1), ref.Rand(83, tokens*dim, 1)
	dE, dW := zeros(tokens*k*dim), zeros(tokens*k)
	must(t, MoeCombineBackward(dy, expertOut, w, order, dE, dW, tokens, dim, k))
	e64, w64 := ref.F64(expertOut), ref.F64(w)
	loss := func() float64 { return ref.Dot(dy, ref.MoeCombine(f32(e64), f32(w64), order, dim, k)) }
	for _, g := range []struct {
		name string
		got  []float32
		x    []float64
	}{{"d_expert_output", dE, e64}, {"d_weights", dW, w64}} {
		want := ref.NumGrad(loss, g.x, 1e-3)
		near(t, g.name, g.got, want, ref.AbsPlus(want, 1e-3), 1e-3)
	}

	// Router backward: w_j * (dw_j - Σ_i w_i dw_i) at the chosen experts.
	dLogits := ref.Rand(84, tokens*experts, 1) // written, not accumulated
	must(t, MoeRouterBackward(w, indices, dy, dLogits, tokens, experts, k))
	wantL := make([]float64, tokens*experts)
	for tk := 0; tk < tokens; tk++ {
		s := 0.0
		for j := 0; j < k; j++ {
			s += float64(w[tk*k+j]) * float64(dy[tk*k+j])
		}
		for j := 0; j < k; j++ {
			wantL[tk*experts+int(indices[tk*k+j])] = float64(w[tk*k+j]) * (float64(dy[tk*k+j]) - s)
		}
	}
	near(t, "router backward", dLogits, wantL, ref.AbsPlus(wantL, 1e-6), 1e-5)
}

func TestRope(t *testing.T) {
	batch, seq, heads, kvHeads, dim, offset := 2, 3, 2, 1, 4, 2
	freqs := zeros((seq + offset) * dim / 2)
	must(t, RopeFreqs(freqs, seq+offset, dim, 10000, 1))
	angles := ref.RopeAngles(seq+offset, dim, 10000)
	near(t, "rope freqs", freqs, angles, ref.AbsPlus(angles, 1e-6), 1e-6)

	q, k := ref.Rand(85, batch*seq*heads*dim, 1), ref.Rand(86, batch*seq*kvHeads*dim, 1)
	out := zeros(len(q))
	must(t, RopeForward(q, freqs, out, batch, seq, heads, dim, offset))
	wantQ := ref.Rope(q, freqs, batch, seq, heads, dim, offset, 1)
	near(t, "rope forward", out, wantQ, ref.AbsPlus(wantQ, 1e-6), 1e-5)
	qo, ko := zeros(len(q)), zeros(len(k))
	must(t, RopeQK(q, k, freqs, qo, ko, batch, seq, heads, kvHeads, dim, offset))
	wantK := ref.Rope(k, freqs, batch, seq, kvHeads, dim, offset, 1)
	near(t, "rope qk q", qo, wantQ, ref.AbsPlus(wantQ, 1e-6), 1e-5)
	near(t, "rope qk k", ko, wantK, ref.AbsPlus(wantK, 1e-6), 1e-5)
	bq, bk := zeros(len(q)), zeros(len(k))
	must(t, RopeBackward(qo, ko, freqs, bq, bk, batch, seq, heads, kvHeads, dim, offset))
	near(t, "rope backward undoes q", bq, ref.F64(q), ref.AbsPlus(ref.F64(q), 1e-6), 1e-5)
	near(t, "rope backward undoes k", bk, ref.F64(k), ref.AbsPlus(ref.F64(k), 1e-6), 1e-5)

	q2, k2 := append([]float32(nil), q...), ref.Rand(87, len(q), 1)
	k2copy := append([]float32(nil), k2...)
	must(t, Rope(q2, k2, freqs, batch, seq, heads, dim))
	want0 := ref.Rope(q, freqs, batch, seq, heads, dim, 0, 1)
	near(t, "rope in place", q2, want0, ref.AbsPlus(want0, 1e-6), 1e-5)
	wantK2 := ref.Rope(k2copy, freqs, batch, seq, heads, dim, 0, 1)
	near(t, "rope in place k", k2, wantK2, ref.AbsPlus(wantK2, 1e-6), 1e-5)
	q3 := append([]float32(nil), q...)
	must(t, RopeNTK(q3, append([]float32(nil), k2copy...), freqs, batch, seq, heads, dim, 4, seq)) // seq <= origLen: unscaled
	near(t, "rope ntk unscaled", q3, want0, ref.AbsPlus(want0, 1e-6), 1e-5)
	invalid(t, RopeForward(q, freqs[:7], out, batch, seq, heads, dim, offset), "freqs has 7 elements, want at least 10")
}

func TestAttentionVariants(t *testing.T) {
	batch, seq, heads, dim := 2, 5, 3, 4
	scale := float32(0.5)
	q, k, v := ref.Rand(88, batch*seq*heads*dim, 1), ref.Rand(89, batch*seq*heads*dim, 1), ref.Rand(90, batch*seq*heads*dim, 1)
	want, _ := ref.Attention(q, k, v, batch, seq, seq, heads, heads, dim, 0, true, float64(scale))
	out := zeros(len(q))
	must(t, FlashAttention(q, k, v, out, batch, seq, heads, dim, scale, true))
	near(t, "flash attention", out, want, ref.AbsPlus(want, 1e-5), 1e-5)

	// One shared KV head: MQA, and the unfused scores -> softmax -> output.
	k1, v1 := ref.Rand(91, batch*seq*dim, 1), ref.Rand(92, batch*seq*dim, 1)
	want1, _ := ref.Attention(q, k1, v1, batch, seq, seq, heads, 1, dim, 0, true, float64(scale))
	must(t, MQAAttention(q, k1, v1, out, nil, batch, seq, heads, dim, scale))
	near(t, "mqa attention", out, want1, ref.AbsPlus(want1, 1e-5), 1e-5)
	scores, probs := zeros(batch*heads*seq*seq), zeros(batch*heads*seq*seq)
	must(t, AttentionScores(q, k1, scores, batch, heads, seq, dim, scale))
	must(t, Softmax(scores, probs, batch*heads*seq, seq))
	must(t, AttentionOutput(probs, v1, out, batch, heads, seq, dim))
	near(t, "unfused attention", out, want1, ref.AbsPlus(want1, 1e-5), 1e-5)

	// Decoding: write the keys into a cache one step at a time; the last
	// query attends to all of them.
	maxSeq := 8
	kc, vc := zeros(batch*maxSeq*dim), zeros(batch*maxSeq*dim)
	for pos := 0; pos < seq; pos++ {
		kn, vn := zeros(batch*dim), zeros(batch*dim)
		for b := 0; b < batch; b++ {
			copy(kn[b*dim:], k1[(b*seq+pos)*dim:(b*seq+pos+1)*dim])
			copy(vn[b*dim:], v1[(b*seq+pos)*dim:(b*seq+pos+1)*dim])
		}
		must(t, KVCacheWrite(kn, vn, kc, vc, batch, 1, maxSeq, 1, dim, pos))
	}
	lastQ, step := zeros(batch*heads*dim), zeros(batch*heads*dim)
	wantStep := make([]float64, 0, len(step))
	for b := 0; b < batch; b++ {
		o := (b*seq + seq - 1) * heads * dim
		copy(lastQ[b*heads*dim:], q[o:o+heads*dim])
		wantStep = append(wantStep, want1[o:o+heads*dim]...)
	}
	p := AttentionParams{Batch: batch, QLen: 1, KVLen: seq, KVCapacity: maxSeq, Heads: heads, KVHeads: 1, HeadDim: dim,
		Pos0: seq - 1, Causal: true, Scale: scale}
	must(t, AttentionForward(lastQ, kc, vc, nil, step, nil, p))
	near(t, "decoding step against the cache", step, wantStep, ref.AbsPlus(wantStep, 1e-5), 1e-5)
	invalid(t, KVCacheWrite(zeros(batch*dim), zeros(batch*dim), kc, vc, batch, 1, maxSeq, 1, dim, maxSeq), "cudann_kv_cache_write")
}

// Wrong lengths and sizes are refused here, before any call, naming the argument.
func TestShapeChecks(t *testing.T) {
	x := zeros(6)
	invalid(t, Softmax(x, zeros(5), 2, 3), "cudann.Softmax: out has 5 elements, want 6")
	invalid(t, Softmax(x, x, -1, 3), "rows must be in [0, 2147483647] (got -1)")
	invalid(t, Silu(x, zeros(7)), "out has 7 elements, want 6")
	invalid(t, Gemm(x, x, x, 2, 3, 4, 1, 0), "a has 6 elements, want 8")
	invalid(t, Argmax(x, make([]int32, 3), 2, 3), "out has 3 elements, want 2")
	invalid(t, Sample(x, make([]int32, 2), []uint64{1}, 2, 3, 1), "seeds has 1 elements, want 2")
	invalid(t, AttentionForward(x, x, x, x, x, nil, AttentionParams{Batch: 1, QLen: 1, KVLen: 1, Heads: 1, KVHeads: 1, HeadDim: 6}),
		"mask has 6 elements, want 1")
	err := Softmax(x, zeros(5), 2, 3)
	if e, ok := err.(*Error); !ok || e.Code != InvalidValue || e.Error() != "cudann.Softmax: out has 5 elements, want 6 (CUDANN_INVALID_VALUE)" {
		t.Errorf("error %#v", err)
	}
}
