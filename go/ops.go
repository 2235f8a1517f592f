package cudann

/*
#include "cudann.h"
*/
import "C"

import "unsafe"

// Elementwise ops: n is the length of the first tensor; every other tensor
// must have the same length. An output may be an input (in place).

// Silu is out[i] = in[i] * sigmoid(in[i]) (cuda_silu).
func Silu[T Float32s](in, out T, stream ...*Stream) error {
	c := newChecker("Silu", stream)
	n := length(in, 4)
	pi, po := c.f32("in", in, n), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_silu(pi, po, C.int64_t(n), s) })
}

// SiluBackward is dIn = dOut * silu'(in) (cudann_silu_backward).
func SiluBackward[T Float32s](dOut, in, dIn T, stream ...*Stream) error {
	c := newChecker("SiluBackward", stream)
	n := length(dOut, 4)
	pd, pi, po := c.f32("dOut", dOut, n), c.f32("in", in, n), c.f32("dIn", dIn, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_silu_backward(pd, pi, po, C.int64_t(n), s) })
}

// Gelu is the tanh-form GELU of GPT-2 (cudann_gelu).
func Gelu[T Float32s](in, out T, stream ...*Stream) error {
	c := newChecker("Gelu", stream)
	n := length(in, 4)
	pi, po := c.f32("in", in, n), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_gelu(pi, po, C.int64_t(n), s) })
}

// GeluBackward is dIn = dOut * gelu'(in) (cudann_gelu_backward).
func GeluBackward[T Float32s](dOut, in, dIn T, stream ...*Stream) error {
	c := newChecker("GeluBackward", stream)
	n := length(dOut, 4)
	pd, pi, po := c.f32("dOut", dOut, n), c.f32("in", in, n), c.f32("dIn", dIn, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_gelu_backward(pd, pi, po, C.int64_t(n), s) })
}

// Add is out = a + b (cuda_add).
func Add[T Float32s](a, b, out T, stream ...*Stream) error {
	c := newChecker("Add", stream)
	n := length(a, 4)
	pa, pb, po := c.f32("a", a, n), c.f32("b", b, n), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_add(pa, pb, po, C.int64_t(n), s) })
}

// Mul is out = a * b elementwise (cuda_mul).
func Mul[T Float32s](a, b, out T, stream ...*Stream) error {
	c := newChecker("Mul", stream)
	n := length(a, 4)
	pa, pb, po := c.f32("a", a, n), c.f32("b", b, n), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_mul(pa, pb, po, C.int64_t(n), s) })
}

// Scale is out = in * scale (cuda_scale).
func Scale[T Float32s](in, out T, scale float32, stream ...*Stream) error {
	c := newChecker("Scale", stream)
	n := length(in, 4)
	pi, po := c.f32("in", in, n), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_scale(pi, po, C.float(scale), C.int64_t(n), s) })
}

// Swiglu is out = silu(gate) * up (cudann_swiglu, float32).
func Swiglu[T Float32s](gate, up, out T, stream ...*Stream) error {
	return swiglu("Swiglu", gate, up, out, F32, stream)
}

// SwigluEx is Swiglu on tensors of data type dtype (cudann_swiglu's dtype).
func SwigluEx[T Floats](gate, up, out T, dtype DType, stream ...*Stream) error {
	return swiglu("SwigluEx", gate, up, out, dtype, stream)
}

func swiglu(fn string, gate, up, out any, dtype DType, stream []*Stream) error {
	c := newChecker(fn, stream)
	n := c.typedLen("gate", gate, dtype)
	pg, pu, po := c.typed("gate", gate, dtype, n, exact), c.typed("up", up, dtype, n, exact), c.typed("out", out, dtype, n, exact)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_swiglu(pg, pu, po, C.int64_t(n), C.int(dtype), s) })
}

// SwigluBackward writes the gradients of Swiglu into dGate and dUp
// (cudann_swiglu_backward).
func SwigluBackward[T Float32s](dOut, gate, up, dGate, dUp T, stream ...*Stream) error {
	c := newChecker("SwigluBackward", stream)
	n := length(dOut, 4)
	pd, pg, pu := c.f32("dOut", dOut, n), c.f32("gate", gate, n), c.f32("up", up, n)
	pdg, pdu := c.f32("dGate", dGate, n), c.f32("dUp", dUp, n)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_swiglu_backward(pd, pg, pu, pdg, pdu, C.int64_t(n), s)
	})
}

// ZeroGrad sets every element of grad to zero (cuda_zero_grad).
func ZeroGrad[T Float32s](grad T, stream ...*Stream) error {
	c := newChecker("ZeroGrad", stream)
	n := length(grad, 4)
	pg := c.f32("grad", grad, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_zero_grad(pg, C.int64_t(n), s) })
}

// AdamWStep is one AdamW step over param, updating param, m and v in place
// from grad (cuda_adamw_step); step counts from 1.
func AdamWStep[T Float32s](param, grad, m, v T, lr, beta1, beta2, eps, weightDecay float32, step int,
	stream ...*Stream) error {
	c := newChecker("AdamWStep", stream)
	n := length(param, 4)
	pp, pg, pm, pv := c.f32("param", param, n), c.f32("grad", grad, n), c.f32("m", m, n), c.f32("v", v, n)
	st := c.param("step", step)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_adamw_step(pp, pg, pm, pv, C.float(lr), C.float(beta1), C.float(beta2), C.float(eps),
			C.float(weightDecay), st, C.int64_t(n), s)
	})
}

// GradClip writes ||grad||₂ to totalNorm[0] and, when it exceeds clipNorm,
// scales grad by clipNorm/||grad|| (cuda_grad_clip). partialNorms is scratch
// of at least ceil(len(grad)/256) elements.
func GradClip[T Float32s](grad, partialNorms, totalNorm T, clipNorm float32, stream ...*Stream) error {
	c := newChecker("GradClip", stream)
	n := length(grad, 4)
	pg, pp, pt := c.f32("grad", grad, n), c.minF32("partialNorms", partialNorms, (n+255)/256), c.f32("totalNorm", totalNorm, 1)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_grad_clip(pg, pp, pt, C.float(clipNorm), C.int64_t(n), s)
	})
}

// Row-wise ops over [rows, cols] (or [rows, dim]) tensors.

// Softmax is the row-wise softmax of in[rows, cols] (cuda_softmax).
func Softmax[T Float32s](in, out T, rows, cols int, stream ...*Stream) error {
	c := newChecker("Softmax", stream)
	r, k := c.size("rows", rows), c.size("cols", cols)
	n := c.count(rows, cols)
	pi, po := c.f32("in", in, n), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_softmax(pi, po, r, k, s) })
}

// SoftmaxBackward is dIn = out * (dOut - rowsum(dOut * out)) from the
// forward's output (cudann_softmax_backward).
func SoftmaxBackward[T Float32s](dOut, out, dIn T, rows, cols int, stream ...*Stream) error {
	c := newChecker("SoftmaxBackward", stream)
	r, k := c.size("rows", rows), c.size("cols", cols)
	n := c.count(rows, cols)
	pd, po, pi := c.f32("dOut", dOut, n), c.f32("out", out, n), c.f32("dIn", dIn, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_softmax_backward(pd, po, pi, r, k, s) })
}

// SoftmaxTopK is the MoE router: per row of in[rows, cols], the k most probable
// columns into indices[rows, k] and their renormalised probabilities into
// weights[rows, k] (cuda_softmax_topk).
func SoftmaxTopK[F Float32s, I Int32s](in, weights F, indices I, rows, cols, k int, stream ...*Stream) error {
	c := newChecker("SoftmaxTopK", stream)
	r, cc, kk := c.size("rows", rows), c.size("cols", cols), c.size("k", k)
	pi := c.f32("in", in, c.count(rows, cols))
	pw, px := c.f32("weights", weights, c.count(rows, k)), c.i32("indices", indices, c.count(rows, k))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_softmax_topk(pi, pw, px, r, cc, kk, s) })
}

// RMSNorm normalises each row of in[rows, dim] and scales it by weight[dim]
// (cuda_rmsnorm).
func RMSNorm[T Float32s](in, weight, out T, rows, dim int, eps float32, stream ...*Stream) error {
	c := newChecker("RMSNorm", stream)
	r, d := c.size("rows", rows), c.size("dim", dim)
	n := c.count(rows, dim)
	pi, pw, po := c.f32("in", in, n), c.f32("weight", weight, int64(dim)), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_rmsnorm(pi, pw, po, r, d, C.float(eps), s) })
}

// RMSNormResidual writes s = in + residual to residualOut and RMSNorm(s) to
// out (cuda_rmsnorm_residual).
func RMSNormResidual[T Float32s](in, residual, weight, out, residualOut T, rows, dim int, eps float32,
	stream ...*Stream) error {
	c := newChecker("RMSNormResidual", stream)
	r, d := c.size("rows", rows), c.size("dim", dim)
	n := c.count(rows, dim)
	pi, pr, pw := c.f32("in", in, n), c.f32("residual", residual, n), c.f32("weight", weight, int64(dim))
	po, pro := c.f32("out", out, n), c.f32("residualOut", residualOut, n)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_rmsnorm_residual(pi, pr, pw, po, pro, r, d, C.float(eps), s)
	})
}

// RMSNormBackward writes the gradients of RMSNorm into dIn and dWeight
// (cudann_rmsnorm_backward).
func RMSNormBackward[T Float32s](dOut, in, weight, dIn, dWeight T, rows, dim int, eps float32,
	stream ...*Stream) error {
	c := newChecker("RMSNormBackward", stream)
	r, d := c.size("rows", rows), c.size("dim", dim)
	n := c.count(rows, dim)
	pd, pi, pw := c.f32("dOut", dOut, n), c.f32("in", in, n), c.f32("weight", weight, int64(dim))
	pdi, pdw := c.f32("dIn", dIn, n), c.f32("dWeight", dWeight, int64(dim))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_rmsnorm_backward(pd, pi, pw, pdi, pdw, r, d, C.float(eps), s)
	})
}

// LayerNorm is (in - mean) / sqrt(var + eps) * weight + bias per row of
// in[rows, dim] (cudann_layernorm).
func LayerNorm[T Float32s](in, weight, bias, out T, rows, dim int, eps float32, stream ...*Stream) error {
	c := newChecker("LayerNorm", stream)
	r, d := c.size("rows", rows), c.size("dim", dim)
	n := c.count(rows, dim)
	pi, pw, pb, po := c.f32("in", in, n), c.f32("weight", weight, int64(dim)), c.f32("bias", bias, int64(dim)), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_layernorm(pi, pw, pb, po, r, d, C.float(eps), s) })
}

// LayerNormBackward writes the gradients of LayerNorm into dIn, dWeight and
// dBias (cudann_layernorm_backward).
func LayerNormBackward[T Float32s](dOut, in, weight, dIn, dWeight, dBias T, rows, dim int, eps float32,
	stream ...*Stream) error {
	c := newChecker("LayerNormBackward", stream)
	r, d := c.size("rows", rows), c.size("dim", dim)
	n := c.count(rows, dim)
	pd, pi, pw := c.f32("dOut", dOut, n), c.f32("in", in, n), c.f32("weight", weight, int64(dim))
	pdi, pdw, pdb := c.f32("dIn", dIn, n), c.f32("dWeight", dWeight, int64(dim)), c.f32("dBias", dBias, int64(dim))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_layernorm_backward(pd, pi, pw, pdi, pdw, pdb, r, d, C.float(eps), s)
	})
}

// BiasAdd is out[r, c] = in[r, c] + bias[c] over in[rows, cols] (cudann_bias_add).
func BiasAdd[T Float32s](in, bias, out T, rows, cols int, stream ...*Stream) error {
	c := newChecker("BiasAdd", stream)
	r, k := c.size("rows", rows), c.size("cols", cols)
	n := c.count(rows, cols)
	pi, pb, po := c.f32("in", in, n), c.f32("bias", bias, int64(cols)), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_bias_add(pi, pb, po, r, k, s) })
}

// BiasBackward writes the column sums of dOut[rows, cols] to dBias
// (cudann_bias_backward).
func BiasBackward[T Float32s](dOut, dBias T, rows, cols int, stream ...*Stream) error {
	c := newChecker("BiasBackward", stream)
	r, k := c.size("rows", rows), c.size("cols", cols)
	pd, pb := c.f32("dOut", dOut, c.count(rows, cols)), c.f32("dBias", dBias, int64(cols))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_bias_backward(pd, pb, r, k, s) })
}

// GEMM.

// Gemm is row-major c[m,n] = alpha * a[m,k] b[k,n] + beta * c (cuda_gemm);
// with beta == 0, c is not read.
func Gemm[T Float32s](a, b, c T, m, n, k int, alpha, beta float32, stream ...*Stream) error {
	ch := newChecker("Gemm", stream)
	cm, cn, ck := ch.size("m", m), ch.size("n", n), ch.size("k", k)
	pa, pb, pc := ch.f32("a", a, ch.count(m, k)), ch.f32("b", b, ch.count(k, n)), ch.f32("c", c, ch.count(m, n))
	return ch.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_gemm(pa, pb, pc, cm, cn, ck, C.float(alpha), C.float(beta), s)
	})
}

// GemmBatched is batch independent Gemms over contiguous matrices
// (cuda_gemm_batched).
func GemmBatched[T Float32s](a, b, c T, batch, m, n, k int, alpha, beta float32, stream ...*Stream) error {
	ch := newChecker("GemmBatched", stream)
	cb, cm, cn, ck := ch.size("batch", batch), ch.size("m", m), ch.size("n", n), ch.size("k", k)
	pa, pb := ch.f32("a", a, ch.count(batch, m, k)), ch.f32("b", b, ch.count(batch, k, n))
	pc := ch.f32("c", c, ch.count(batch, m, n))
	return ch.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_gemm_batched(pa, pb, pc, cb, cm, cn, ck, C.float(alpha), C.float(beta), s)
	})
}

// GemmExParams describes a cudann_gemm_ex call: C_i = Alpha op(A_i) op(B_i)
// + Beta C_i for i < Batch, op(A_i) m x k, op(B_i) k x n, C_i m x n, stored
// row-major with leading dimensions Lda, Ldb, Ldc and strides StrideA,
// StrideB, StrideC (in elements; a stride of 0 reuses one matrix).
type GemmExParams struct {
	TransA, TransB      bool
	M, N, K             int
	Alpha, Beta         float32
	AType, BType, CType DType // the zero value is F32
	Lda, Ldb, Ldc       int64 // 0: the stored matrix's width (packed rows)
	StrideA, StrideB    int64
	StrideC             int64
	Batch               int // 0 means 1
}

// extent is the number of elements a strided operand spans.
func extent(c *checker, name string, rows, cols int, ld, stride int64, batch int) int64 {
	if ld < 0 || stride < 0 {
		c.fail("%s: leading dimension and stride must be >= 0 (got %d, %d)", name, ld, stride)
		return 0
	}
	if rows <= 0 || cols <= 0 || batch <= 0 {
		return 0
	}
	return int64(batch-1)*stride + int64(rows-1)*ld + int64(cols)
}

// gemmArgs are the checked sizes, operand pointers and leading dimensions of
// a strided GEMM.
type gemmArgs struct {
	m, n, k, batch C.int
	a, b, c        unsafe.Pointer
	lda, ldb, ldc  C.int64_t
}

// gemm checks p's sizes, batch (named batchName) and operands a, b, c, each
// of which must hold at least the elements its leading dimension and stride
// span over batch matrices (p.Batch is ignored).
func (ch *checker) gemm(p GemmExParams, batchName string, batch int, a, b, c any) gemmArgs {
	g := gemmArgs{m: ch.size("M", p.M), n: ch.size("N", p.N), k: ch.size("K", p.K), batch: ch.size(batchName, batch)}
	ar, ac := p.M, p.K
	if p.TransA {
		ar, ac = p.K, p.M
	}
	br, bc := p.K, p.N
	if p.TransB {
		br, bc = p.N, p.K
	}
	ld := func(v int64, cols int) int64 {
		if v == 0 {
			return int64(cols)
		}
		return v
	}
	lda, ldb, ldc := ld(p.Lda, ac), ld(p.Ldb, bc), ld(p.Ldc, p.N)
	operand := func(name string, x any, t DType, rows, cols int, ld, stride int64) unsafe.Pointer {
		return ch.typed(name, x, t, extent(ch, name, rows, cols, ld, stride, batch), atLeast)
	}
	g.a = operand("a", a, p.AType, ar, ac, lda, p.StrideA)
	g.b = operand("b", b, p.BType, br, bc, ldb, p.StrideB)
	g.c = operand("c", c, p.CType, p.M, p.N, ldc, p.StrideC)
	g.lda, g.ldb, g.ldc = C.int64_t(lda), C.int64_t(ldb), C.int64_t(ldc)
	return g
}

// GemmEx is the strided, batched GEMM with a data type per matrix
// (cudann_gemm_ex): F32, F16 or BF16 each, accumulated in float32. Each
// operand must hold at least the elements its leading dimension and stride
// span: a []float32 for F32, a []uint16 for F16/BF16, or a *Buffer (counted
// in its data type's size).
func GemmEx[T Floats](p GemmExParams, a, b, c T, stream ...*Stream) error {
	ch := newChecker("GemmEx", stream)
	batch := p.Batch
	if batch == 0 {
		batch = 1
	}
	g := ch.gemm(p, "Batch", batch, a, b, c)
	return ch.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_gemm_ex(boolInt(p.TransA), boolInt(p.TransB), g.m, g.n, g.k, C.float(p.Alpha),
			g.a, C.int(p.AType), g.lda, C.int64_t(p.StrideA),
			g.b, C.int(p.BType), g.ldb, C.int64_t(p.StrideB),
			C.float(p.Beta), g.c, C.int(p.CType), g.ldc, C.int64_t(p.StrideC), g.batch, s)
	})
}

// GemmGroupedParams describes a cudann_gemm_grouped call: the products of
// GemmExParams (op(A_g) m x k, op(B_g) k x n, C_g m x n, the matrices of
// group g StrideA, StrideB, StrideC elements apart), one per group of a
// partition of the rows of C (GroupInner false) or of K (GroupInner true).
type GemmGroupedParams struct {
	GemmExParams      // its Batch is not used: offsets gives the groups
	GroupInner   bool // group K rather than the rows of C
}

// GemmGrouped is the grouped GEMM of a mixture of experts
// (cudann_gemm_grouped): group g covers indices offsets[g] .. offsets[g+1]
// of the grouped dimension, offsets holding groups + 1 int32 (not
// decreasing, within [0, M] or [0, K]). Rows grouped: those rows of C_g are
// Alpha op(A_g) op(B_g) + Beta C_g, and rows in no group are not written.
// GroupInner: C_g = Alpha op(A_g)[:, ks] op(B_g)[ks, :] + Beta C_g over the
// indices ks of group g, for every group (an empty one scales C_g by Beta).
// Operands and types are as GemmEx's, spanning groups matrices each.
// Offsets out of order or range are InvalidValue where the host can read
// them (slices and host memory); a *Buffer of device memory is read on the
// device, which needs no host round trip.
func GemmGrouped[T Floats, I Int32s](p GemmGroupedParams, a, b, c T, offsets I, stream ...*Stream) error {
	ch := newChecker("GemmGrouped", stream)
	entries := length(offsets, 4)
	if entries == 0 {
		ch.fail("offsets must hold groups + 1 elements (got none)")
		entries = 1
	}
	g := ch.gemm(p.GemmExParams, "groups", int(entries-1), a, b, c)
	po := ch.i32("offsets", offsets, entries)
	return ch.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_gemm_grouped(boolInt(p.TransA), boolInt(p.TransB), boolInt(p.GroupInner), g.m, g.n, g.k,
			C.float(p.Alpha), g.a, C.int(p.AType), g.lda, C.int64_t(p.StrideA),
			g.b, C.int(p.BType), g.ldb, C.int64_t(p.StrideB),
			C.float(p.Beta), g.c, C.int(p.CType), g.ldc, C.int64_t(p.StrideC), po, g.batch, s)
	})
}

// Losses.

// CrossEntropyForward writes log_softmax(logits[rows, vocab]) to logProbs and
// the mean negative log-likelihood of targets[rows] to loss[0]; a negative
// target marks a padding row (cuda_cross_entropy_forward).
func CrossEntropyForward[F Float32s, I Int32s](logits F, targets I, loss, logProbs F, rows, vocab int,
	stream ...*Stream) error {
	c := newChecker("CrossEntropyForward", stream)
	r, v := c.size("rows", rows), c.size("vocab", vocab)
	n := c.count(rows, vocab)
	pl, pt := c.f32("logits", logits, n), c.cint("targets", targets, int64(rows))
	ploss, plp := c.f32("loss", loss, 1), c.f32("logProbs", logProbs, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_cross_entropy_forward(pl, pt, ploss, plp, r, v, s) })
}

// CrossEntropyBackward is dLogits = (exp(logProbs) - onehot(targets)) * scale
// (cuda_cross_entropy_backward).
func CrossEntropyBackward[F Float32s, I Int32s](logProbs F, targets I, dLogits F, rows, vocab int, scale float32,
	stream ...*Stream) error {
	c := newChecker("CrossEntropyBackward", stream)
	r, v := c.size("rows", rows), c.size("vocab", vocab)
	n := c.count(rows, vocab)
	plp, pt, pd := c.f32("logProbs", logProbs, n), c.cint("targets", targets, int64(rows)), c.f32("dLogits", dLogits, n)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_cross_entropy_backward(plp, pt, pd, r, v, C.float(scale), s)
	})
}

// AuxLossForward is the MoE load-balancing loss (cuda_aux_loss_forward):
// routerProbs[tokens, experts], expertIndices[tokens, topK] -> auxLoss[1],
// fCounts[experts], pMeans[experts].
func AuxLossForward[F Float32s, I Int32s](routerProbs F, expertIndices I, auxLoss, fCounts, pMeans F,
	tokens, experts, topK int, alpha float32, stream ...*Stream) error {
	c := newChecker("AuxLossForward", stream)
	t, e, k := c.size("tokens", tokens), c.size("experts", experts), c.size("topK", topK)
	pp, pi := c.f32("routerProbs", routerProbs, c.count(tokens, experts)), c.cint("expertIndices", expertIndices, c.count(tokens, topK))
	pl, pf, pm := c.f32("auxLoss", auxLoss, 1), c.f32("fCounts", fCounts, int64(experts)), c.f32("pMeans", pMeans, int64(experts))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_aux_loss_forward(pp, pi, pl, pf, pm, t, e, k, C.float(alpha), s)
	})
}

// AuxLossBackward writes the aux loss's gradient (times scale) into
// dProbs[tokens, experts] (cudann_aux_loss_backward).
func AuxLossBackward[T Float32s](fCounts, dProbs T, tokens, experts int, alpha, scale float32, stream ...*Stream) error {
	c := newChecker("AuxLossBackward", stream)
	t, e := c.size("tokens", tokens), c.size("experts", experts)
	pf, pd := c.f32("fCounts", fCounts, int64(experts)), c.f32("dProbs", dProbs, c.count(tokens, experts))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_aux_loss_backward(pf, pd, t, e, C.float(alpha), C.float(scale), s)
	})
}

// Decoding.

// Argmax writes the first maximal index of each row of logits[rows, vocab]
// to out[rows] (cuda_argmax).
func Argmax[F Float32s, I Int32s](logits F, out I, rows, vocab int, stream ...*Stream) error {
	c := newChecker("Argmax", stream)
	r, v := c.size("rows", rows), c.size("vocab", vocab)
	pl, po := c.f32("logits", logits, c.count(rows, vocab)), c.i32("out", out, int64(rows))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_argmax(pl, po, r, v, s) })
}

// Sample draws one token per row from softmax(logits/temperature), seeded by
// seeds[row]; temperature 0 is argmax (cuda_sample).
func Sample[F Float32s, I Int32s, U Uint64s](logits F, out I, seeds U, rows, vocab int, temperature float32,
	stream ...*Stream) error {
	c := newChecker("Sample", stream)
	r, v := c.size("rows", rows), c.size("vocab", vocab)
	pl, po, ps := c.f32("logits", logits, c.count(rows, vocab)), c.i32("out", out, int64(rows)), c.u64("seeds", seeds, int64(rows))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_sample(pl, po, ps, r, v, C.float(temperature), s) })
}

// TopKSample is Sample restricted to the k largest logits (cuda_topk_sample).
func TopKSample[F Float32s, I Int32s, U Uint64s](logits F, out I, seeds U, rows, vocab, k int, temperature float32,
	stream ...*Stream) error {
	c := newChecker("TopKSample", stream)
	r, v, kk := c.size("rows", rows), c.size("vocab", vocab), c.param("k", k)
	pl, po, ps := c.f32("logits", logits, c.count(rows, vocab)), c.i32("out", out, int64(rows)), c.u64("seeds", seeds, int64(rows))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_topk_sample(pl, po, ps, r, v, kk, C.float(temperature), s)
	})
}

// TopPSample is Sample restricted to the nucleus of probability topP
// (cuda_topp_sample).
func TopPSample[F Float32s, I Int32s, U Uint64s](logits F, out I, seeds U, rows, vocab int, topP, temperature float32,
	stream ...*Stream) error {
	c := newChecker("TopPSample", stream)
	r, v := c.size("rows", rows), c.size("vocab", vocab)
	pl, po, ps := c.f32("logits", logits, c.count(rows, vocab)), c.i32("out", out, int64(rows)), c.u64("seeds", seeds, int64(rows))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_topp_sample(pl, po, ps, r, v, C.float(topP), C.float(temperature), s)
	})
}

// Embeddings.

// Embedding is out[i, :] = table[ids[i], :] for ids[nIDs] and
// table[vocab, dim]; a negative id gives zeros (cudann_embedding, float32).
func Embedding[I Int32s, F Float32s](ids I, table, out F, nIDs, vocab, dim int, stream ...*Stream) error {
	return embedding("Embedding", ids, table, out, nIDs, vocab, dim, F32, stream)
}

// EmbeddingEx is Embedding with table and out of data type dtype, whose rows
// are copied as they are (cudann_embedding's dtype).
func EmbeddingEx[I Int32s, F Floats](ids I, table, out F, nIDs, vocab, dim int, dtype DType, stream ...*Stream) error {
	return embedding("EmbeddingEx", ids, table, out, nIDs, vocab, dim, dtype, stream)
}

func embedding(fn string, ids, table, out any, nIDs, vocab, dim int, dtype DType, stream []*Stream) error {
	c := newChecker(fn, stream)
	n, v, d := c.size("nIDs", nIDs), c.size("vocab", vocab), c.size("dim", dim)
	pi := c.i32("ids", ids, int64(nIDs))
	pt, po := c.typed("table", table, dtype, c.count(vocab, dim), exact), c.typed("out", out, dtype, c.count(nIDs, dim), exact)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_embedding(pi, pt, po, n, v, d, C.int(dtype), s) })
}

// EmbeddingBackward writes dTable[v, :] = the sum of dOut[i, :] over the i
// with ids[i] = v (cudann_embedding_backward).
func EmbeddingBackward[I Int32s, F Float32s](ids I, dOut, dTable F, nIDs, vocab, dim int, stream ...*Stream) error {
	c := newChecker("EmbeddingBackward", stream)
	n, v, d := c.size("nIDs", nIDs), c.size("vocab", vocab), c.size("dim", dim)
	pi, pd, pt := c.i32("ids", ids, int64(nIDs)), c.f32("dOut", dOut, c.count(nIDs, dim)), c.f32("dTable", dTable, c.count(vocab, dim))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_embedding_backward(pi, pd, pt, n, v, d, s) })
}

// ScatterAdd is gradWeight[indices[i], :] += gradOut[i, :] (cuda_scatter_add);
// gradWeight holds rows of dim elements, at least max(indices)+1 of them
// (checked here when indices is a Go slice).
func ScatterAdd[F Float32s, I Int32s](gradOut F, indices I, gradWeight F, numIndices, dim int, stream ...*Stream) error {
	c := newChecker("ScatterAdd", stream)
	n, d := c.size("numIndices", numIndices), c.size("dim", dim)
	pg, pi := c.f32("gradOut", gradOut, c.count(numIndices, dim)), c.cint("indices", indices, int64(numIndices))
	rows := int64(0)
	if dim > 0 {
		rows = length(gradWeight, 4) / int64(dim)
	}
	if ids, ok := any(indices).([]int32); ok && c.err == nil {
		for _, id := range ids {
			if int64(id) >= rows {
				c.fail("index %d is outside gradWeight's %d rows", id, rows)
				break
			}
		}
	}
	pw := c.f32("gradWeight", gradWeight, rows*int64(dim))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_scatter_add(pg, pi, pw, n, d, s) })
}

// Mixture of experts.

// MoeRouterBackward is the gradient through SoftmaxTopK's renormalised
// weights into dLogits[tokens, experts] (cudann_moe_router_backward).
func MoeRouterBackward[F Float32s, I Int32s](weights F, indices I, dWeights, dLogits F, tokens, experts, k int,
	stream ...*Stream) error {
	c := newChecker("MoeRouterBackward", stream)
	t, e, kk := c.size("tokens", tokens), c.size("experts", experts), c.size("k", k)
	nk := c.count(tokens, k)
	pw, pi, pd := c.f32("weights", weights, nk), c.i32("indices", indices, nk), c.f32("dWeights", dWeights, nk)
	pl := c.f32("dLogits", dLogits, c.count(tokens, experts))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_moe_router_backward(pw, pi, pd, pl, t, e, kk, s) })
}

// MoeDispatch groups the token-expert pairs of indices[tokens, k] by expert:
// order[tokens*k], offsets[experts+1] and the rows out[tokens*k, dim]
// (cudann_moe_dispatch).
func MoeDispatch[F Float32s, I Int32s](in F, indices I, out F, order, offsets I, tokens, dim, experts, k int,
	stream ...*Stream) error {
	c := newChecker("MoeDispatch", stream)
	t, d, e, kk := c.size("tokens", tokens), c.size("dim", dim), c.size("experts", experts), c.size("k", k)
	pin, pidx := c.f32("in", in, c.count(tokens, dim)), c.i32("indices", indices, c.count(tokens, k))
	pout, por := c.f32("out", out, c.count(tokens, k, dim)), c.i32("order", order, c.count(tokens, k))
	pof := c.i32("offsets", offsets, int64(experts)+1)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_moe_dispatch(pin, pidx, pout, por, pof, t, d, e, kk, s)
	})
}

// MoeDispatchBackward sums the rows of dOut[tokens*k, dim] a dispatch made of
// each token into dIn[tokens, dim] (cudann_moe_dispatch_backward).
func MoeDispatchBackward[F Float32s, I Int32s](dOut F, order I, dIn F, tokens, dim, k int, stream ...*Stream) error {
	c := newChecker("MoeDispatchBackward", stream)
	t, d, kk := c.size("tokens", tokens), c.size("dim", dim), c.size("k", k)
	pd, po, pi := c.f32("dOut", dOut, c.count(tokens, k, dim)), c.i32("order", order, c.count(tokens, k)), c.f32("dIn", dIn, c.count(tokens, dim))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_moe_dispatch_backward(pd, po, pi, t, d, kk, s) })
}

// MoeCombine is out[t] = Σ_j weights[t, j] * expertOut[row of pair t*k+j]
// (cudann_moe_combine).
func MoeCombine[F Float32s, I Int32s](expertOut, weights F, order I, out F, tokens, dim, k int, stream ...*Stream) error {
	c := newChecker("MoeCombine", stream)
	t, d, kk := c.size("tokens", tokens), c.size("dim", dim), c.size("k", k)
	pe, pw := c.f32("expertOut", expertOut, c.count(tokens, k, dim)), c.f32("weights", weights, c.count(tokens, k))
	po, pout := c.i32("order", order, c.count(tokens, k)), c.f32("out", out, c.count(tokens, dim))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_moe_combine(pe, pw, po, pout, t, d, kk, s) })
}

// MoeCombineBackward writes the gradients of MoeCombine into dExpertOut and
// dWeights (cudann_moe_combine_backward).
func MoeCombineBackward[F Float32s, I Int32s](dOut, expertOut, weights F, order I, dExpertOut, dWeights F,
	tokens, dim, k int, stream ...*Stream) error {
	c := newChecker("MoeCombineBackward", stream)
	t, d, kk := c.size("tokens", tokens), c.size("dim", dim), c.size("k", k)
	pd, pe := c.f32("dOut", dOut, c.count(tokens, dim)), c.f32("expertOut", expertOut, c.count(tokens, k, dim))
	pw, po := c.f32("weights", weights, c.count(tokens, k)), c.i32("order", order, c.count(tokens, k))
	pde, pdw := c.f32("dExpertOut", dExpertOut, c.count(tokens, k, dim)), c.f32("dWeights", dWeights, c.count(tokens, k))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_moe_combine_backward(pd, pe, pw, po, pde, pdw, t, d, kk, s)
	})
}

// Half precision. The Ex ops take tensors of data type dtype (F32, F16 or
// BF16): []float32 for F32, []uint16 (the bits of each value) for F16 and
// BF16, or *Buffer. Half-precision tensors are read, computed in float32 and
// written in the same type: each result is exactly the float32 op on the
// inputs widened to float32, rounded once; the samplers pick exactly the
// float32 sampler's tokens from the widened logits; EmbeddingEx and
// KVCacheWriteEx copy elements as they are. F32 is the original op. The
// forward ops' Ex forms (SwigluEx, EmbeddingEx, AttentionForwardEx,
// KVCacheWriteEx, RopeQKEx) sit beside their float32 forms.
// Half precision runs on the CPU (device buffers: NotAvailable for now).

// Convert converts the elements of src (of type srcType) into dst (of type
// dstType, the same number of elements), each F32, F16 or BF16: to a half type
// rounded to nearest even (overflow to infinity, NaN a quiet NaN of the same
// sign), half to float32 exactly (cudann_convert). The same type copies.
func Convert[S, D Floats](src S, srcType DType, dst D, dstType DType, stream ...*Stream) error {
	c := newChecker("Convert", stream)
	n := c.typedLen("src", src, srcType)
	ps, pd := c.typed("src", src, srcType, n, exact), c.typed("dst", dst, dstType, n, exact)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_convert(ps, C.int(srcType), pd, C.int(dstType), C.int64_t(n), s)
	})
}

// AddEx is out = a + b on tensors of data type dtype (cudann_add_ex).
func AddEx[T Floats](a, b, out T, dtype DType, stream ...*Stream) error {
	c := newChecker("AddEx", stream)
	n := c.typedLen("a", a, dtype)
	pa, pb, po := c.typed("a", a, dtype, n, exact), c.typed("b", b, dtype, n, exact), c.typed("out", out, dtype, n, exact)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_add_ex(pa, pb, po, C.int64_t(n), C.int(dtype), s) })
}

// MulEx is out = a * b on tensors of data type dtype (cudann_mul_ex).
func MulEx[T Floats](a, b, out T, dtype DType, stream ...*Stream) error {
	c := newChecker("MulEx", stream)
	n := c.typedLen("a", a, dtype)
	pa, pb, po := c.typed("a", a, dtype, n, exact), c.typed("b", b, dtype, n, exact), c.typed("out", out, dtype, n, exact)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_mul_ex(pa, pb, po, C.int64_t(n), C.int(dtype), s) })
}

// ScaleEx is out = in * scale on tensors of data type dtype (cudann_scale_ex;
// scale is a float32 either way).
func ScaleEx[T Floats](in, out T, scale float32, dtype DType, stream ...*Stream) error {
	c := newChecker("ScaleEx", stream)
	n := c.typedLen("in", in, dtype)
	pi, po := c.typed("in", in, dtype, n, exact), c.typed("out", out, dtype, n, exact)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_scale_ex(pi, po, C.float(scale), C.int64_t(n), C.int(dtype), s)
	})
}

// SoftmaxEx is Softmax on tensors of data type dtype (cudann_softmax_ex).
func SoftmaxEx[T Floats](in, out T, rows, cols int, dtype DType, stream ...*Stream) error {
	c := newChecker("SoftmaxEx", stream)
	r, k := c.size("rows", rows), c.size("cols", cols)
	n := c.count(rows, cols)
	pi, po := c.typed("in", in, dtype, n, exact), c.typed("out", out, dtype, n, exact)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_softmax_ex(pi, po, r, k, C.int(dtype), s) })
}

// RMSNormEx is RMSNorm with in, weight and out of data type dtype
// (cudann_rmsnorm_ex).
func RMSNormEx[T Floats](in, weight, out T, rows, dim int, eps float32, dtype DType, stream ...*Stream) error {
	c := newChecker("RMSNormEx", stream)
	r, d := c.size("rows", rows), c.size("dim", dim)
	n := c.count(rows, dim)
	pi, pw := c.typed("in", in, dtype, n, exact), c.typed("weight", weight, dtype, int64(dim), exact)
	po := c.typed("out", out, dtype, n, exact)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_rmsnorm_ex(pi, pw, po, r, d, C.float(eps), C.int(dtype), s)
	})
}

// ArgmaxEx is Argmax on logits of data type dtype (cudann_argmax_ex).
func ArgmaxEx[F Floats, I Int32s](logits F, out I, rows, vocab int, dtype DType, stream ...*Stream) error {
	c := newChecker("ArgmaxEx", stream)
	r, v := c.size("rows", rows), c.size("vocab", vocab)
	pl, po := c.typed("logits", logits, dtype, c.count(rows, vocab), exact), c.i32("out", out, int64(rows))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cudann_argmax_ex(pl, po, r, v, C.int(dtype), s) })
}

// SampleEx is Sample on logits of data type dtype (cudann_sample_ex).
func SampleEx[F Floats, I Int32s, U Uint64s](logits F, out I, seeds U, rows, vocab int, temperature float32,
	dtype DType, stream ...*Stream) error {
	c := newChecker("SampleEx", stream)
	r, v := c.size("rows", rows), c.size("vocab", vocab)
	pl := c.typed("logits", logits, dtype, c.count(rows, vocab), exact)
	po, ps := c.i32("out", out, int64(rows)), c.u64("seeds", seeds, int64(rows))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_sample_ex(pl, po, ps, r, v, C.float(temperature), C.int(dtype), s)
	})
}

// TopKSampleEx is TopKSample on logits of data type dtype
// (cudann_topk_sample_ex).
func TopKSampleEx[F Floats, I Int32s, U Uint64s](logits F, out I, seeds U, rows, vocab, k int, temperature float32,
	dtype DType, stream ...*Stream) error {
	c := newChecker("TopKSampleEx", stream)
	r, v, kk := c.size("rows", rows), c.size("vocab", vocab), c.param("k", k)
	pl := c.typed("logits", logits, dtype, c.count(rows, vocab), exact)
	po, ps := c.i32("out", out, int64(rows)), c.u64("seeds", seeds, int64(rows))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_topk_sample_ex(pl, po, ps, r, v, kk, C.float(temperature), C.int(dtype), s)
	})
}

// TopPSampleEx is TopPSample on logits of data type dtype
// (cudann_topp_sample_ex).
func TopPSampleEx[F Floats, I Int32s, U Uint64s](logits F, out I, seeds U, rows, vocab int, topP, temperature float32,
	dtype DType, stream ...*Stream) error {
	c := newChecker("TopPSampleEx", stream)
	r, v := c.size("rows", rows), c.size("vocab", vocab)
	pl := c.typed("logits", logits, dtype, c.count(rows, vocab), exact)
	po, ps := c.i32("out", out, int64(rows)), c.u64("seeds", seeds, int64(rows))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_topp_sample_ex(pl, po, ps, r, v, C.float(topP), C.float(temperature), C.int(dtype), s)
	})
}
