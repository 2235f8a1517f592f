package cudann

/*
#include "cudann.h"
*/
import "C"

import "unsafe"

// Attention. Tensors are row-major: Q and outputs [batch, seq, heads, headDim].

// AttentionScores is scores[batch, heads, seq, seq] = scale * Q Kᵀ with one
// shared KV head k[batch, seq, headDim], -inf above the diagonal
// (cuda_attention_scores).
func AttentionScores[T Float32s](q, k, scores T, batch, heads, seq, headDim int, scale float32, stream ...*Stream) error {
	c := newChecker("AttentionScores", stream)
	b, h, sl, d := c.size("batch", batch), c.size("heads", heads), c.size("seq", seq), c.size("headDim", headDim)
	pq, pk := c.f32("q", q, c.count(batch, seq, heads, headDim)), c.f32("k", k, c.count(batch, seq, headDim))
	ps := c.f32("scores", scores, c.count(batch, heads, seq, seq))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_attention_scores(pq, pk, ps, b, h, sl, d, C.float(scale), s)
	})
}

// AttentionOutput is out[batch, seq, heads, headDim] = weights[batch, heads,
// seq, seq] · v[batch, seq, headDim], causal (cuda_attention_output).
func AttentionOutput[T Float32s](weights, v, out T, batch, heads, seq, headDim int, stream ...*Stream) error {
	c := newChecker("AttentionOutput", stream)
	b, h, sl, d := c.size("batch", batch), c.size("heads", heads), c.size("seq", seq), c.size("headDim", headDim)
	pw, pv := c.f32("weights", weights, c.count(batch, heads, seq, seq)), c.f32("v", v, c.count(batch, seq, headDim))
	po := c.f32("out", out, c.count(batch, seq, heads, headDim))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_attention_output(pw, pv, po, b, h, sl, d, s) })
}

// FlashAttention is out = softmax(scale Q Kᵀ [+ causal mask]) V, all four
// [batch, seq, heads, headDim] (cuda_flash_attention).
func FlashAttention[T Float32s](q, k, v, out T, batch, seq, heads, headDim int, scale float32, causal bool,
	stream ...*Stream) error {
	c := newChecker("FlashAttention", stream)
	b, sl, h, d := c.size("batch", batch), c.size("seq", seq), c.size("heads", heads), c.size("headDim", headDim)
	n := c.count(batch, seq, heads, headDim)
	pq, pk, pv, po := c.f32("q", q, n), c.f32("k", k, n), c.f32("v", v, n), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_flash_attention(pq, pk, pv, po, b, sl, h, d, C.float(scale), boolInt(causal), s)
	})
}

// MQAAttention is fused attention with one shared KV head, k and v [batch,
// seq, headDim]; mask is nil (causal) or an additive [seq, seq] mask
// (cuda_mqa_attention).
func MQAAttention[T Float32s](q, k, v, out, mask T, batch, seq, heads, headDim int, scale float32,
	stream ...*Stream) error {
	c := newChecker("MQAAttention", stream)
	b, sl, h, d := c.size("batch", batch), c.size("seq", seq), c.size("heads", heads), c.size("headDim", headDim)
	n, nkv := c.count(batch, seq, heads, headDim), c.count(batch, seq, headDim)
	pq, pk, pv, po := c.f32("q", q, n), c.f32("k", k, nkv), c.f32("v", v, nkv), c.f32("out", out, n)
	pm := c.optF32("mask", mask, c.count(seq, seq))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_mqa_attention(pq, pk, pv, po, pm, b, sl, h, d, C.float(scale), s)
	})
}

// AttentionParams is the shape of AttentionForward and AttentionBackward:
// queries i < QLen at positions Pos0+i over keys j < KVLen of a KV tensor of
// KVCapacity positions (0: KVLen; the backward takes exactly KVLen), Heads
// query heads sharing KVHeads KV heads (MHA, GQA, MQA).
type AttentionParams struct {
	Batch, QLen, KVLen, KVCapacity int
	Heads, KVHeads, HeadDim        int
	Pos0                           int
	Causal                         bool
	Scale                          float32
}

func (p AttentionParams) check(c *checker) (b, ql, kl, cap, h, kvh, hd, pos C.int, nq, nkv int64) {
	capacity := p.KVCapacity
	if capacity == 0 {
		capacity = p.KVLen
	}
	b, ql, kl, cap = c.size("Batch", p.Batch), c.size("QLen", p.QLen), c.size("KVLen", p.KVLen), c.size("KVCapacity", capacity)
	h, kvh, hd, pos = c.size("Heads", p.Heads), c.size("KVHeads", p.KVHeads), c.size("HeadDim", p.HeadDim), c.param("Pos0", p.Pos0)
	return b, ql, kl, cap, h, kvh, hd, pos, c.count(p.Batch, p.QLen, p.Heads, p.HeadDim), c.count(p.Batch, capacity, p.KVHeads, p.HeadDim)
}

// AttentionForward is out = softmax(scale Q Kᵀ + mask) V for training and
// for decoding against a KV cache (cudann_attention_forward, float32): q and
// out [Batch, QLen, Heads, HeadDim], k and v [Batch, KVCapacity, KVHeads,
// HeadDim], mask nil or an additive [QLen, KVLen] mask, lse nil or
// [Batch, QLen, Heads] (each row's log-sum-exp, for the backward).
func AttentionForward[T Float32s](q, k, v, mask, out, lse T, p AttentionParams, stream ...*Stream) error {
	return attentionForward("AttentionForward", q, k, v, mask, out, lse, p, F32, stream)
}

// AttentionForwardEx is AttentionForward with q, k, v and out of data type
// dtype (computed in float32, out rounded once; only the KVLen used positions
// of k and v are read); mask and lse stay float32 (cudann_attention_forward's
// dtype). With both nil, name the types: AttentionForwardEx[[]uint16, []float32].
func AttentionForwardEx[T Floats, F Float32s](q, k, v T, mask F, out T, lse F, p AttentionParams, dtype DType,
	stream ...*Stream) error {
	return attentionForward("AttentionForwardEx", q, k, v, mask, out, lse, p, dtype, stream)
}

func attentionForward(fn string, q, k, v, mask, out, lse any, p AttentionParams, dtype DType, stream []*Stream) error {
	c := newChecker(fn, stream)
	b, ql, kl, cp, h, kvh, hd, pos, nq, nkv := p.check(c)
	pq, pk, pv := c.typed("q", q, dtype, nq, exact), c.typed("k", k, dtype, nkv, exact), c.typed("v", v, dtype, nkv, exact)
	pm, po := c.optF32("mask", mask, c.count(p.QLen, p.KVLen)), c.typed("out", out, dtype, nq, exact)
	pl := c.optF32("lse", lse, c.count(p.Batch, p.QLen, p.Heads))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_attention_forward(pq, pk, pv, pm, po, pl, b, ql, kl, cp, h, kvh, hd, pos, boolInt(p.Causal),
			C.float(p.Scale), C.int(dtype), s)
	})
}

// AttentionBackward writes the gradients of AttentionForward's output into
// dq, dk and dv (cudann_attention_backward); k, v, dk, dv hold exactly KVLen
// positions, and lse is required.
func AttentionBackward[T Float32s](dOut, q, k, v, mask, out, lse, dq, dk, dv T, p AttentionParams,
	stream ...*Stream) error {
	c := newChecker("AttentionBackward", stream)
	if p.KVCapacity != 0 && p.KVCapacity != p.KVLen {
		c.fail("KVCapacity must be 0 or KVLen (the backward has no KV capacity)")
	}
	b, ql, kl, _, h, kvh, hd, pos, nq, nkv := p.check(c)
	pdo, pq, pk, pv := c.f32("dOut", dOut, nq), c.f32("q", q, nq), c.f32("k", k, nkv), c.f32("v", v, nkv)
	pm, po, pl := c.optF32("mask", mask, c.count(p.QLen, p.KVLen)), c.f32("out", out, nq), c.f32("lse", lse, c.count(p.Batch, p.QLen, p.Heads))
	pdq, pdk, pdv := c.f32("dq", dq, nq), c.f32("dk", dk, nkv), c.f32("dv", dv, nkv)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_attention_backward(pdo, pq, pk, pv, pm, po, pl, pdq, pdk, pdv, b, ql, kl, h, kvh, hd, pos,
			boolInt(p.Causal), C.float(p.Scale), s)
	})
}

// KVCacheWrite writes kNew and vNew [batch, newLen, kvHeads, headDim] into
// the caches [batch, maxSeq, kvHeads, headDim] at positions pos..pos+newLen
// (cudann_kv_cache_write, float32).
func KVCacheWrite[T Float32s](kNew, vNew, kCache, vCache T, batch, newLen, maxSeq, kvHeads, headDim, pos int,
	stream ...*Stream) error {
	return kvCacheWrite("KVCacheWrite", kNew, vNew, kCache, vCache, batch, newLen, maxSeq, kvHeads, headDim, pos, F32, stream)
}

// KVCacheWriteEx is KVCacheWrite on tensors of data type dtype, copied as
// they are (cudann_kv_cache_write's dtype).
func KVCacheWriteEx[T Floats](kNew, vNew, kCache, vCache T, batch, newLen, maxSeq, kvHeads, headDim, pos int,
	dtype DType, stream ...*Stream) error {
	return kvCacheWrite("KVCacheWriteEx", kNew, vNew, kCache, vCache, batch, newLen, maxSeq, kvHeads, headDim, pos, dtype,
		stream)
}

func kvCacheWrite(fn string, kNew, vNew, kCache, vCache any, batch, newLen, maxSeq, kvHeads, headDim, pos int,
	dtype DType, stream []*Stream) error {
	c := newChecker(fn, stream)
	b, nl, ms := c.size("batch", batch), c.size("newLen", newLen), c.size("maxSeq", maxSeq)
	kvh, hd, ps := c.size("kvHeads", kvHeads), c.size("headDim", headDim), c.param("pos", pos)
	nn, nc := c.count(batch, newLen, kvHeads, headDim), c.count(batch, maxSeq, kvHeads, headDim)
	pkn, pvn := c.typed("kNew", kNew, dtype, nn, exact), c.typed("vNew", vNew, dtype, nn, exact)
	pkc, pvc := c.typed("kCache", kCache, dtype, nc, exact), c.typed("vCache", vCache, dtype, nc, exact)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_kv_cache_write(pkn, pvn, pkc, pvc, b, nl, ms, kvh, hd, ps, C.int(dtype), s)
	})
}

// RoPE. Tables hold rotation angles, rows of headDim/2; a table must hold at
// least the rows the positions reach (it may be longer).

// RopeFreqs fills freqs[maxSeqLen, headDim/2] with rotation angles
// (cuda_rope_freqs); alpha 1 is plain RoPE, other values NTK-aware.
func RopeFreqs[T Float32s](freqs T, maxSeqLen, headDim int, base, alpha float32, stream ...*Stream) error {
	c := newChecker("RopeFreqs", stream)
	m, d := c.size("maxSeqLen", maxSeqLen), c.size("headDim", headDim)
	pf := c.f32("freqs", freqs, c.count(maxSeqLen, headDim/2))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_rope_freqs(pf, m, d, C.float(base), C.float(alpha), s) })
}

// RopeForward rotates in[batch, seq, heads, headDim] into out, positions from
// offset (cuda_rope_forward).
func RopeForward[T Float32s](in, freqs, out T, batch, seq, heads, headDim, offset int, stream ...*Stream) error {
	c := newChecker("RopeForward", stream)
	b, sl, h, d, o := c.size("batch", batch), c.size("seq", seq), c.size("heads", heads), c.size("headDim", headDim), c.size("offset", offset)
	n := c.count(batch, seq, heads, headDim)
	pi, pf, po := c.f32("in", in, n), c.minF32("freqs", freqs, c.count(seq+offset, headDim/2)), c.f32("out", out, n)
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_rope_forward(pi, pf, po, b, sl, h, d, o, s) })
}

// RopeQK rotates q[batch, seq, qHeads, headDim] into qOut and k[batch, seq,
// kvHeads, headDim] into kOut (cuda_rope_qk).
func RopeQK[T Float32s](q, k, freqs, qOut, kOut T, batch, seq, qHeads, kvHeads, headDim, offset int,
	stream ...*Stream) error {
	return ropeQK("RopeQK", ropeF32, q, k, freqs, qOut, kOut, batch, seq, qHeads, kvHeads, headDim, offset, F32, stream)
}

// RopeQKEx is RopeQK with q, k, qOut and kOut of data type dtype, rotated in
// float32 and rounded once; freqs stays float32 (cudann_rope_qk_ex).
func RopeQKEx[T Floats, F Float32s](q, k T, freqs F, qOut, kOut T, batch, seq, qHeads, kvHeads, headDim, offset int,
	dtype DType, stream ...*Stream) error {
	return ropeQK("RopeQKEx", ropeTyped, q, k, freqs, qOut, kOut, batch, seq, qHeads, kvHeads, headDim, offset, dtype,
		stream)
}

// RopeBackward rotates the gradients dq and dk back into dqOut and dkOut
// (cudann_rope_backward); a head count of 0 leaves that side empty.
func RopeBackward[T Float32s](dq, dk, freqs, dqOut, dkOut T, batch, seq, qHeads, kvHeads, headDim, offset int,
	stream ...*Stream) error {
	return ropeQK("RopeBackward", ropeInverse, dq, dk, freqs, dqOut, dkOut, batch, seq, qHeads, kvHeads, headDim, offset,
		F32, stream)
}

// The entry points of ropeQK.
const (
	ropeF32     = iota // cuda_rope_qk
	ropeTyped          // cudann_rope_qk_ex
	ropeInverse        // cudann_rope_backward
)

func ropeQK(fn string, entry int, q, k, freqs, qOut, kOut any, batch, seq, qHeads, kvHeads, headDim, offset int,
	dtype DType, stream []*Stream) error {
	c := newChecker(fn, stream)
	b, sl, qh, kh := c.size("batch", batch), c.size("seq", seq), c.size("qHeads", qHeads), c.size("kvHeads", kvHeads)
	d, o := c.size("headDim", headDim), c.size("offset", offset)
	nq, nk := c.count(batch, seq, qHeads, headDim), c.count(batch, seq, kvHeads, headDim)
	pq, pk := c.typed("q", q, dtype, nq, exact), c.typed("k", k, dtype, nk, exact)
	pf := c.minF32("freqs", freqs, c.count(seq+offset, headDim/2))
	pqo, pko := c.typed("qOut", qOut, dtype, nq, exact), c.typed("kOut", kOut, dtype, nk, exact)
	return c.run(func(s unsafe.Pointer) C.int32_t {
		switch entry {
		case ropeTyped:
			return C.cudann_rope_qk_ex(pq, pk, pf, pqo, pko, b, sl, qh, kh, d, o, C.int(dtype), s)
		case ropeInverse:
			return C.cudann_rope_backward((*C.float)(pq), (*C.float)(pk), pf, (*C.float)(pqo), (*C.float)(pko), b, sl, qh,
				kh, d, o, s)
		}
		return C.cuda_rope_qk((*C.float)(pq), (*C.float)(pk), pf, (*C.float)(pqo), (*C.float)(pko), b, sl, qh, kh, d, o, s)
	})
}

// Rope rotates q and k, both [batch, seq, heads, headDim], in place,
// positions from 0 (cuda_rope).
func Rope[T Float32s](q, k, freqs T, batch, seq, heads, headDim int, stream ...*Stream) error {
	c := newChecker("Rope", stream)
	b, sl, h, d := c.size("batch", batch), c.size("seq", seq), c.size("heads", heads), c.size("headDim", headDim)
	n := c.count(batch, seq, heads, headDim)
	pq, pk, pf := c.f32("q", q, n), c.f32("k", k, n), c.minF32("freqs", freqs, c.count(seq, headDim/2))
	return c.run(func(s unsafe.Pointer) C.int32_t { return C.cuda_rope(pq, pk, pf, b, sl, h, d, s) })
}

// RopeNTK is Rope with dynamic NTK scaling when seq > origLen (cuda_rope_ntk).
func RopeNTK[T Float32s](q, k, freqs T, batch, seq, heads, headDim int, alpha float32, origLen int,
	stream ...*Stream) error {
	c := newChecker("RopeNTK", stream)
	b, sl, h, d := c.size("batch", batch), c.size("seq", seq), c.size("heads", heads), c.size("headDim", headDim)
	ol := c.param("origLen", origLen)
	n := c.count(batch, seq, heads, headDim)
	pq, pk, pf := c.f32("q", q, n), c.f32("k", k, n), c.minF32("freqs", freqs, c.count(seq, headDim/2))
	return c.run(func(s unsafe.Pointer) C.int32_t {
		return C.cuda_rope_ntk(pq, pk, pf, b, sl, h, d, C.float(alpha), ol, s)
	})
}
