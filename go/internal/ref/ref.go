// Package ref holds float64 references for the ABI.md formulas and the value
// checks shared by the Go test packages (pure Go: no cgo, no library).
package ref

import (
	"fmt"
	"math"
	"math/rand"
	"sort"
)

// Float is an input precision: the library's float32 values, or float64 ones
// that finite differences perturb.
type Float interface{ ~float32 | ~float64 }

// Rand returns n deterministic values in [-amp, amp).
func Rand(seed int64, n int, amp float64) []float32 {
	r := rand.New(rand.NewSource(seed))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(amp * (2*r.Float64() - 1))
	}
	return x
}

// Close reports the first i with |got-want| > rtol*scale[i] (scale nil: |want|).
func Close(got []float32, want, scale []float64, rtol float64) error {
	if len(got) != len(want) {
		return fmt.Errorf("length %d, want %d", len(got), len(want))
	}
	for i := range got {
		s := math.Abs(want[i])
		if scale != nil {
			s = scale[i]
		}
		if !(math.Abs(float64(got[i])-want[i]) <= rtol*s+1e-30) {
			return fmt.Errorf("[%d] got %.9g, want %.9g", i, got[i], want[i])
		}
	}
	return nil
}

func Silu(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v) / (1 + math.Exp(-float64(v)))
	}
	return y
}

// LogSoftmax is row-wise, with the row max subtracted.
func LogSoftmax(x []float32, rows, cols int) []float64 {
	y := make([]float64, len(x))
	for r := 0; r < rows; r++ {
		row := x[r*cols : (r+1)*cols]
		m := math.Inf(-1)
		for _, v := range row {
			m = math.Max(m, float64(v))
		}
		s := 0.0
		for _, v := range row {
			s += math.Exp(float64(v) - m)
		}
		for c, v := range row {
			y[r*cols+c] = float64(v) - m - math.Log(s)
		}
	}
	return y
}

func Softmax(x []float32, rows, cols int) []float64 {
	y := LogSoftmax(x, rows, cols)
	for i := range y {
		y[i] = math.Exp(y[i])
	}
	return y
}

func RMSNorm[T Float](x, w []T, rows, dim int, eps float64) []float64 {
	y := make([]float64, len(x))
	for r := 0; r < rows; r++ {
		ss := 0.0
		for c := 0; c < dim; c++ {
			ss += float64(x[r*dim+c]) * float64(x[r*dim+c])
		}
		inv := 1 / math.Sqrt(ss/float64(dim)+eps)
		for c := 0; c < dim; c++ {
			y[r*dim+c] = float64(x[r*dim+c]) * inv * float64(w[c])
		}
	}
	return y
}

// Gemm returns alpha*A*B + beta*C0 and the error scale |alpha||A||B| + |beta||C0|.
func Gemm(a, b, c0 []float32, m, n, k int, alpha, beta float64) (c, bound []float64) {
	c, bound = make([]float64, m*n), make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			s, sa := 0.0, 0.0
			for p := 0; p < k; p++ {
				t := float64(a[i*k+p]) * float64(b[p*n+j])
				s, sa = s+t, sa+math.Abs(t)
			}
			c[i*n+j] = alpha*s + beta*float64(c0[i*n+j])
			bound[i*n+j] = math.Abs(alpha)*sa + math.Abs(beta)*math.Abs(float64(c0[i*n+j]))
		}
	}
	return c, bound
}

// GemmEx is cudann_gemm_ex's result over the whole of C (entries outside the
// C_i keep c0's values, with a zero error scale) and the error scale, as Gemm.
func GemmEx(transA, transB bool, m, n, k int, alpha float64, a []float32, lda, strideA int,
	b []float32, ldb, strideB int, beta float64, c0 []float32, ldc, strideC, batch int) (c, bound []float64) {
	return gemmParts(transA, transB, n, alpha, a, lda, strideA, b, ldb, strideB, beta, c0, ldc, strideC, batch,
		func(int) (int, int, int, int) { return 0, m, 0, k })
}

// GemmGrouped is cudann_gemm_grouped's result and error scale, as GemmEx:
// group g (its matrices strideA, strideB, strideC apart) covers indices
// offsets[g] .. offsets[g+1] of the rows of C (inner false: only those rows
// are written) or of k (inner true: C_g sums the products over them).
func GemmGrouped(transA, transB, inner bool, m, n, k int, alpha float64, a []float32, lda, strideA int,
	b []float32, ldb, strideB int, beta float64, c0 []float32, ldc, strideC int, offsets []int32) (c, bound []float64) {
	return gemmParts(transA, transB, n, alpha, a, lda, strideA, b, ldb, strideB, beta, c0, ldc, strideC, len(offsets)-1,
		func(g int) (int, int, int, int) {
			lo, hi := int(offsets[g]), int(offsets[g+1])
			if inner {
				return 0, m, lo, hi
			}
			return lo, hi, 0, k
		})
}

// gemmParts is C_g[i, j] = alpha Σ_p op(A_g)[i, p] op(B_g)[p, j] + beta C_g[i, j]
// for g < parts, over the rows i in [i0, i1) and the inner indices p in
// [p0, p1) that span(g) gives, A_g, B_g, C_g starting g strides in.
func gemmParts(transA, transB bool, n int, alpha float64, a []float32, lda, strideA int, b []float32, ldb, strideB int,
	beta float64, c0 []float32, ldc, strideC, parts int, span func(g int) (i0, i1, p0, p1 int)) (c, bound []float64) {
	at := func(x []float32, ld int, trans bool, r, col int) float64 {
		if trans {
			r, col = col, r
		}
		return float64(x[r*ld+col])
	}
	c, bound = F64(c0), make([]float64, len(c0))
	for g := 0; g < parts; g++ {
		i0, i1, p0, p1 := span(g)
		for i := i0; i < i1; i++ {
			for j := 0; j < n; j++ {
				s, sa := 0.0, 0.0
				for p := p0; p < p1; p++ {
					t := at(a[g*strideA:], lda, transA, i, p) * at(b[g*strideB:], ldb, transB, p, j)
					s, sa = s+t, sa+math.Abs(t)
				}
				o := g*strideC + i*ldc + j
				c[o], bound[o] = alpha*s+beta*c[o], math.Abs(alpha)*sa+math.Abs(beta*c[o])
			}
		}
	}
	return c, bound
}

// Swiglu is silu(gate) * up.
func Swiglu(gate, up []float32) []float64 {
	y := Silu(gate)
	for i := range y {
		y[i] *= float64(up[i])
	}
	return y
}

// SwigluBackward is (dy up silu'(gate), dy silu(gate)), silu'(x) = s (1 + x (1 - s)).
func SwigluBackward(dy, gate, up []float32) (dGate, dUp []float64) {
	dGate, dUp = make([]float64, len(dy)), make([]float64, len(dy))
	for i, x := range F64(gate) {
		s := 1 / (1 + math.Exp(-x))
		dGate[i] = float64(dy[i]) * float64(up[i]) * s * (1 + x*(1-s))
		dUp[i] = float64(dy[i]) * x * s
	}
	return dGate, dUp
}

// Attention is softmax(scale Q Kᵀ, causal from position pos0) V and each row's
// log-sum-exp of the scaled scores: Q [batch, qLen, heads, dim], K and V
// [batch, kvLen, kvHeads, dim], query head n reading KV head n / (heads / kvHeads),
// lse [batch, qLen, heads].
func Attention[T Float](q, k, v []T, batch, qLen, kvLen, heads, kvHeads, dim, pos0 int, causal bool,
	scale float64) (out, lse []float64) {
	out, lse = make([]float64, len(q)), make([]float64, batch*qLen*heads)
	for b := 0; b < batch; b++ {
		for i := 0; i < qLen; i++ {
			keys := kvLen
			if causal && pos0+i+1 < kvLen {
				keys = pos0 + i + 1
			}
			for n := 0; n < heads; n++ {
				row := (b*qLen+i)*heads + n
				kv := func(j int) int { return ((b*kvLen+j)*kvHeads + n/(heads/kvHeads)) * dim }
				s, m, sum := make([]float64, keys), math.Inf(-1), 0.0
				for j := range s {
					for d := 0; d < dim; d++ {
						s[j] += float64(q[row*dim+d]) * float64(k[kv(j)+d])
					}
					s[j] *= scale
					m = math.Max(m, s[j])
				}
				for _, x := range s {
					sum += math.Exp(x - m)
				}
				lse[row] = m + math.Log(sum)
				for j, x := range s {
					for d := 0; d < dim; d++ {
						out[row*dim+d] += math.Exp(x-lse[row]) * float64(v[kv(j)+d])
					}
				}
			}
		}
	}
	return out, lse
}

// Embedding is the rows table[ids[i]], zeros for a negative id.
func Embedding(ids []int32, table []float32, dim int) []float64 {
	out := make([]float64, len(ids)*dim)
	for i, id := range ids {
		for d := 0; id >= 0 && d < dim; d++ {
			out[i*dim+d] = float64(table[int(id)*dim+d])
		}
	}
	return out
}

// EmbeddingBackward sums the rows of dy per id into [vocab, dim].
func EmbeddingBackward(ids []int32, dy []float32, vocab, dim int) []float64 {
	d := make([]float64, vocab*dim)
	for i, id := range ids {
		for c := 0; id >= 0 && c < dim; c++ {
			d[int(id)*dim+c] += float64(dy[i*dim+c])
		}
	}
	return d
}

// MoeDispatch groups the pairs t*k+j of indices[tokens, k] by expert, stably:
// each row's pair, each expert's first row (and the total), and the rows, input[pair / k].
func MoeDispatch(in []float32, indices []int32, dim, experts, k int) (out []float64, order, offsets []int32) {
	offsets = make([]int32, experts+1)
	for _, e := range indices {
		offsets[e+1]++
	}
	for e := 0; e < experts; e++ {
		offsets[e+1] += offsets[e]
	}
	next := append([]int32(nil), offsets...)
	order, out = make([]int32, len(indices)), make([]float64, len(indices)*dim)
	for pair, e := range indices {
		row := next[e]
		next[e]++
		order[row] = int32(pair)
		for d := 0; d < dim; d++ {
			out[int(row)*dim+d] = float64(in[pair/k*dim+d])
		}
	}
	return out, order, offsets
}

// MoeCombine is out[t] = sum over j of w[t, j] * expertOut[row of pair t*k+j].
func MoeCombine(expertOut, w []float32, order []int32, dim, k int) []float64 {
	out := make([]float64, len(w)/k*dim)
	for row, pair := range order {
		for d := 0; d < dim; d++ {
			out[int(pair)/k*dim+d] += float64(w[pair]) * float64(expertOut[row*dim+d])
		}
	}
	return out
}

// AdamW is one bias-corrected step from float32 state: new param, m, v.
func AdamW(p, g, m, v []float32, lr, b1, b2, eps, wd float64, step int) (np, nm, nv []float64) {
	np, nm, nv = make([]float64, len(p)), make([]float64, len(p)), make([]float64, len(p))
	for i := range p {
		gi := float64(g[i])
		nm[i] = b1*float64(m[i]) + (1-b1)*gi
		nv[i] = b2*float64(v[i]) + (1-b2)*gi*gi
		mh, vh := nm[i]/(1-math.Pow(b1, float64(step))), nv[i]/(1-math.Pow(b2, float64(step)))
		np[i] = float64(p[i]) - lr*(mh/(math.Sqrt(vh)+eps)+wd*float64(p[i]))
	}
	return np, nm, nv
}

// Argmax is the first maximal index.
func Argmax(x []float32) int32 {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return int32(best)
}

// byProb orders indices by descending value, lower index first on ties.
func byProb(x []float64) []int {
	idx := make([]int, len(x))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return x[idx[a]] > x[idx[b]] })
	return idx
}

// TopK is the set of the k largest logits.
func TopK(logits []float32, k int) map[int32]bool {
	x := make([]float64, len(logits))
	for i, v := range logits {
		x[i] = float64(v)
	}
	set := map[int32]bool{}
	for _, i := range byProb(x)[:k] {
		set[int32(i)] = true
	}
	return set
}

// Nucleus is the smallest set of most probable tokens whose sum reaches topP.
func Nucleus(probs []float64, topP float64) map[int32]bool {
	set, cum := map[int32]bool{}, 0.0
	for _, i := range byProb(probs) {
		set[int32(i)] = true
		if cum += probs[i]; cum >= topP {
			break
		}
	}
	return set
}

// F64 widens x.
func F64[T Float](x []T) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

// Dot is sum(dy * y): the loss whose gradient a backward computes.
func Dot(dy []float32, y []float64) float64 {
	s := 0.0
	for i, v := range y {
		s += float64(dy[i]) * v
	}
	return s
}

// NumGrad is the central-difference gradient of loss() with respect to x, which
// loss reads; x is restored.
func NumGrad(loss func() float64, x []float64, h float64) []float64 {
	g := make([]float64, len(x))
	for i, v := range x {
		x[i] = v + h
		up := loss()
		x[i] = v - h
		g[i] = (up - loss()) / (2 * h)
		x[i] = v
	}
	return g
}

// AbsPlus is |want| + floor: a relative error scale with an absolute floor.
func AbsPlus(want []float64, floor float64) []float64 {
	s := make([]float64, len(want))
	for i, v := range want {
		s[i] = math.Abs(v) + floor
	}
	return s
}

// Gelu is the tanh form of GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))).
func Gelu[T Float](x []T) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		u := float64(v)
		y[i] = 0.5 * u * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(u+0.044715*u*u*u)))
	}
	return y
}

// LayerNorm is (x - mean) / sqrt(var + eps) * w + b per row (biased variance).
func LayerNorm[T Float](x, w, b []T, rows, dim int, eps float64) []float64 {
	y := make([]float64, len(x))
	for r := 0; r < rows; r++ {
		mean, vr := 0.0, 0.0
		for c := 0; c < dim; c++ {
			mean += float64(x[r*dim+c]) / float64(dim)
		}
		for c := 0; c < dim; c++ {
			d := float64(x[r*dim+c]) - mean
			vr += d * d / float64(dim)
		}
		for c := 0; c < dim; c++ {
			y[r*dim+c] = (float64(x[r*dim+c])-mean)/math.Sqrt(vr+eps)*float64(w[c]) + float64(b[c])
		}
	}
	return y
}

// RopeAngles is the table p * base^(-2i/headDim) of plain RoPE, [maxSeq, headDim/2].
func RopeAngles(maxSeq, headDim int, base float64) []float64 {
	f := make([]float64, maxSeq*headDim/2)
	for p := 0; p < maxSeq; p++ {
		for i := 0; i < headDim/2; i++ {
			f[p*headDim/2+i] = float64(p) * math.Pow(base, -2*float64(i)/float64(headDim))
		}
	}
	return f
}

// Rope rotates each interleaved pair of x[batch, seq, heads, headDim] at
// position s + offset by sign times its angle in freqs.
func Rope(x, freqs []float32, batch, seq, heads, headDim, offset int, sign float64) []float64 {
	y := F64(x)
	for b := 0; b < batch; b++ {
		for s := 0; s < seq; s++ {
			for h := 0; h < heads; h++ {
				o := ((b*seq+s)*heads + h) * headDim
				for i := 0; i < headDim/2; i++ {
					a := sign * float64(freqs[(s+offset)*headDim/2+i])
					x0, x1 := y[o+2*i], y[o+2*i+1]
					y[o+2*i], y[o+2*i+1] = x0*math.Cos(a)-x1*math.Sin(a), x0*math.Sin(a)+x1*math.Cos(a)
				}
			}
		}
	}
	return y
}
