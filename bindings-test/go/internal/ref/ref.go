// Package ref holds float64 references for the ABI.md formulas and the value
// checks shared by the Go test packages (pure Go: no cgo, no library).
package ref

import (
	"fmt"
	"math"
	"math/rand"
	"sort"
)

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

func RMSNorm(x, w []float32, rows, dim int, eps float64) []float64 {
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
