//! Attention on the CPU: the unfused scores/output pair of the original ABI
//! (one query row at a time), and general attention (fused, by blocks of
//! queries and keys, forward and backward), which also serves the original
//! fused calls.

use std::ops::Range;

use super::simd::simd;
use rayon::prelude::*;

use super::alloc;
use super::convert::{Element, convert};
use super::gemm::{View, sgemm_view};
use super::math::exp;
use super::par::Shared;
use super::reduce::{dot, exp_in_place, max};

/// `Q`/`output` are `[batch, seq, heads, head_dim]`; `K`/`V` are
/// `[batch, seq, kv_heads, head_dim]` with `kv_heads` = `heads` (multi-head) or 1
/// (one shared KV head).
#[derive(Clone, Copy)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// The K or V vector of key `j` that query head `h` of batch `b` uses.
    fn kv<'a>(&self, kv: &'a [f32], b: usize, j: usize, h: usize) -> &'a [f32] {
        let kvh = if self.kv_heads == 1 { 0 } else { h };
        let start = ((b * self.seq + j) * self.kv_heads + kvh) * self.head_dim;
        &kv[start..start + self.head_dim]
    }

    /// Keys a query may attend to.
    fn keys(&self, i: usize, causal: bool) -> Range<usize> {
        0..if causal { i + 1 } else { self.seq }
    }
}

/// out[j] = scale * q·k_j for the keys in `keys`.
fn scores_row(q: &[f32], k: &[f32], shape: &AttnShape, b: usize, h: usize, keys: Range<usize>, scale: f32, out: &mut [f32]) {
    for (s, j) in out.iter_mut().zip(keys) {
        *s = scale * dot(q, shape.kv(k, b, j, h));
    }
}

/// out = Σ_j w[j] v_j over the keys in `keys`.
fn weighted_values(w: &[f32], v: &[f32], shape: &AttnShape, b: usize, h: usize, keys: Range<usize>, out: &mut [f32]) {
    out.fill(0.0);
    for (&w, j) in w.iter().zip(keys) {
        for (o, &x) in out.iter_mut().zip(shape.kv(v, b, j, h)) {
            *o += w * x;
        }
    }
}

/// Calls `f(b, i, h, output_row)` for every (batch, query, head) row of a
/// `[batch, seq, heads, head_dim]` output, in parallel over tokens.
fn for_each_query(out: &mut [f32], shape: &AttnShape, f: impl Fn(usize, usize, usize, &mut [f32]) + Sync) {
    out.par_chunks_mut(shape.heads * shape.head_dim).enumerate().for_each(|(token, out)| {
        let (b, i) = (token / shape.seq, token % shape.seq);
        for (h, o) in out.chunks_exact_mut(shape.head_dim).enumerate() {
            f(b, i, h, o);
        }
    });
}

/// Query row `i` of head `h` in `[batch, seq, heads, head_dim]`.
fn query<'a>(q: &'a [f32], shape: &AttnShape, b: usize, i: usize, h: usize) -> &'a [f32] {
    let start = ((b * shape.seq + i) * shape.heads + h) * shape.head_dim;
    &q[start..start + shape.head_dim]
}

/// scores[b, h, i, j] = scale·q_i·k_j for j <= i, -inf above the diagonal.
pub fn scores(q: &[f32], k: &[f32], scores: &mut [f32], shape: AttnShape, scale: f32) {
    let seq = shape.seq;
    scores.par_chunks_mut(seq).enumerate().for_each(|(row, out)| {
        let (b, h, i) = (row / (shape.heads * seq), row / seq % shape.heads, row % seq);
        let keys = shape.keys(i, true);
        let (visible, masked) = out.split_at_mut(keys.end);
        scores_row(query(q, &shape, b, i, h), k, &shape, b, h, keys, scale, visible);
        masked.fill(f32::NEG_INFINITY);
    });
}

/// output[b, i, h, :] = Σ_{j <= i} weights[b, h, i, j] · v_j.
pub fn output(weights: &[f32], v: &[f32], out: &mut [f32], shape: AttnShape) {
    let seq = shape.seq;
    for_each_query(out, &shape, |b, i, h, o| {
        let row = ((b * shape.heads + h) * seq + i) * seq;
        let keys = shape.keys(i, true);
        weighted_values(&weights[row..row + keys.end], v, &shape, b, h, keys, o);
    });
}

// ---------------------------------------------------------------------------
// General attention (training and decoding): grouped KV heads, queries at
// positions pos0.., a KV cache of some capacity, an optional additive mask, the
// log-sum-exp for the backward pass. Blocks of queries and keys go through the
// gemm crate on strided views; nothing of size q_len x kv_len is ever held.

/// Rows of queries (and keys, in the backward) per block.
const BLOCK: usize = 64;

/// `Q`, `output` `[batch, q_len, heads, head_dim]`; `K`, `V`
/// `[batch, kv_capacity, kv_heads, head_dim]` of which keys `0..kv_len` are
/// used; query `i` is at position `pos0 + i` and, when causal, sees keys
/// `j <= pos0 + i`; `mask` is additive `[q_len, kv_len]`.
#[derive(Clone, Copy)]
pub struct Attention {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub kv_capacity: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub pos0: usize,
    pub causal: bool,
    pub scale: f32,
}

impl Attention {
    /// The KV head query head `n` reads.
    fn group(&self, n: usize) -> usize {
        n / (self.heads / self.kv_heads)
    }

    /// Keys query `i` may see: `0..visible(i)`.
    fn visible(&self, i: usize) -> usize {
        if self.causal { self.kv_len.min(self.pos0 + i + 1) } else { self.kv_len }
    }

    /// Rows `i0..` of head `n` in a `[batch, q_len, heads, head_dim]` tensor.
    fn q_rows<T: Copy>(&self, base: T, b: usize, n: usize, i0: usize, offset: impl Fn(T, usize) -> T) -> View<T> {
        let start = ((b * self.q_len + i0) * self.heads + n) * self.head_dim;
        View { ptr: offset(base, start), rs: self.heads * self.head_dim, cs: 1 }
    }

    /// Rows `j0..` of KV head `g` in a `[batch, capacity, kv_heads, head_dim]` tensor.
    fn kv_rows<T: Copy>(&self, base: T, capacity: usize, b: usize, g: usize, j0: usize, offset: impl Fn(T, usize) -> T) -> View<T> {
        let start = ((b * capacity + j0) * self.kv_heads + g) * self.head_dim;
        View { ptr: offset(base, start), rs: self.kv_heads * self.head_dim, cs: 1 }
    }
}

fn at(p: *const f32, n: usize) -> *const f32 {
    p.wrapping_add(n)
}

fn at_mut(p: *mut f32, n: usize) -> *mut f32 {
    p.wrapping_add(n)
}

fn transposed<T>(v: View<T>) -> View<T> {
    View { ptr: v.ptr, rs: v.cs, cs: v.rs }
}

/// One block of scores: `s[r, c] = scale q_{i0+r}·k_{j0+c} + mask[i0+r, j0+c]`
/// for `qn` queries of head `n` and `kn` keys, -inf where causality hides the
/// key. `s` is `qn x kn`, row-major.
fn score_block(a: &Attention, q: &[f32], k: &[f32], mask: Option<&[f32]>, b: usize, n: usize, i0: usize, qn: usize, j0: usize, kn: usize, s: &mut [f32]) {
    let qv = a.q_rows(q.as_ptr(), b, n, i0, at);
    let kv = a.kv_rows(k.as_ptr(), a.kv_capacity, b, a.group(n), j0, at);
    // SAFETY: the views lie inside q and k (shapes checked by the caller); s holds qn * kn.
    unsafe { sgemm_view(qv, transposed(kv), View { ptr: s.as_mut_ptr(), rs: kn, cs: 1 }, qn, kn, a.head_dim, a.scale, 0.0) };
    for (r, row) in s.chunks_exact_mut(kn).enumerate() {
        let i = i0 + r;
        if let Some(mask) = mask {
            let m = &mask[i * a.kv_len + j0..i * a.kv_len + j0 + kn];
            row.iter_mut().zip(m).for_each(|(s, &m)| *s += m);
        }
        let hidden_from = a.visible(i).saturating_sub(j0).min(kn);
        row[hidden_from..].fill(f32::NEG_INFINITY);
    }
}

/// Forward: `output = softmax(s) · V` row by row and, when asked, each row's
/// `lse = ln Σ_j e^(s_j)` (`[batch, q_len, heads]`). A row with no visible key
/// (or only -inf scores) gets zeros and lse = -inf.
pub fn attention_forward(a: &Attention, q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>, out: &mut [f32], lse: Option<&mut [f32]>) {
    let (out_ptr, lse_ptr) = (Shared(out.as_mut_ptr()), lse.map(|l| Shared(l.as_mut_ptr())));
    let q_blocks = a.q_len.div_ceil(BLOCK);
    (0..a.batch * a.heads * q_blocks).into_par_iter().for_each(|task| {
        let (b, n, qb) = (task / (a.heads * q_blocks), task / q_blocks % a.heads, task % q_blocks);
        let (i0, qn) = (qb * BLOCK, BLOCK.min(a.q_len - qb * BLOCK));
        let kn = a.visible(i0 + qn - 1);
        let mut p = alloc::filled(qn * kn.max(1), 0.0f32);
        if kn > 0 {
            score_block(a, q, k, mask, b, n, i0, qn, 0, kn, &mut p);
        }
        for (r, row) in p.chunks_exact_mut(kn.max(1)).enumerate() {
            let row_lse = if kn == 0 { f32::NEG_INFINITY } else { softmax_with_lse(row) };
            if let Some(Shared(lse)) = lse_ptr {
                // SAFETY: entry (b, i0 + r, n) belongs to this task alone.
                unsafe { *lse.add((b * a.q_len + i0 + r) * a.heads + n) = row_lse };
            }
        }
        let ov = a.q_rows(out_ptr, b, n, i0, |p, o| Shared(at_mut(p.0, o)));
        let ov = View { ptr: ov.ptr.0, rs: ov.rs, cs: ov.cs };
        let vv = a.kv_rows(v.as_ptr(), a.kv_capacity, b, a.group(n), 0, at);
        // SAFETY: this task's output rows (head n, queries i0..i0+qn) are its own.
        unsafe { sgemm_view(View { ptr: p.as_ptr(), rs: kn.max(1), cs: 1 }, vv, ov, qn, a.head_dim, kn, 1.0, 0.0) };
    });
}

/// [`attention_forward`] on tensors of any element type: half-precision Q
/// and the `kv_len` used positions of K and V are widened to float32, and the
/// output is rounded once (float32 runs in place, with no copy).
pub fn attention_forward_ex<T: Element>(a: &Attention, q: &[T], k: &[T], v: &[T], mask: Option<&[f32]>, out: &mut [T], lse: Option<&mut [f32]>) {
    if let Some(out) = T::as_f32_mut(out) {
        return attention_forward(a, &T::wide(q), &T::wide(k), &T::wide(v), mask, out, lse);
    }
    let row = a.kv_heads * a.head_dim;
    let used = |x: &[T]| {
        let mut wide = alloc::filled(a.batch * a.kv_len * row, 0.0f32);
        for (b, w) in wide.chunks_exact_mut((a.kv_len * row).max(1)).enumerate() {
            let start = b * a.kv_capacity * row;
            convert(&x[start..start + w.len()], w);
        }
        wide
    };
    let mut wide_out = alloc::filled(out.len(), 0.0f32);
    let compact = Attention { kv_capacity: a.kv_len, ..*a };
    attention_forward(&compact, &T::wide(q), &used(k), &used(v), mask, &mut wide_out, lse);
    convert(&wide_out, out);
}

/// Softmax of one row of scores in place; returns ln Σ e^s (-inf, and a row of
/// zeros, when every score is -inf).
fn softmax_with_lse(row: &mut [f32]) -> f32 {
    let m = max(row);
    if m == f32::NEG_INFINITY {
        row.fill(0.0);
        return f32::NEG_INFINITY;
    }
    let total = exp_in_place(row, m);
    let inv = 1.0 / total;
    row.iter_mut().for_each(|p| *p *= inv);
    (m as f64 + (total as f64).ln()) as f32
}

/// D_i = Σ_d dO_i·O_i for every row and head (`[batch, q_len, heads]`).
fn output_dots(a: &Attention, d_out: &[f32], out: &[f32]) -> Vec<f32> {
    let h = a.head_dim;
    let mut d = alloc::filled(a.batch * a.q_len * a.heads, 0.0f32);
    d.par_iter_mut().enumerate().for_each(|(row, d)| *d = dot(&d_out[row * h..(row + 1) * h], &out[row * h..(row + 1) * h]));
    d
}

/// The gradients of general attention from the forward's output and lse:
/// with P = e^(S - lse), dP = dO·Vᵀ, dS = P ⊙ (dP - D):
/// dV = Pᵀ·dO, dK = scale dSᵀ·Q (both summed over the heads of a group),
/// dQ = scale dS·K. K and V (and dK, dV) are `[batch, kv_len, kv_heads,
/// head_dim]`. One task per (batch, KV head) owns every output row it writes,
/// and sums in a fixed order: deterministic.
pub fn attention_backward(a: &Attention, d_out: &[f32], q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>, out: &[f32], lse: &[f32], dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let d = output_dots(a, d_out, out);
    let (dq, dk, dv) = (Shared(dq.as_mut_ptr()), Shared(dk.as_mut_ptr()), Shared(dv.as_mut_ptr()));
    let h = a.head_dim;
    let per_group = a.heads / a.kv_heads;
    (0..a.batch * a.kv_heads).into_par_iter().for_each(|task| {
        let (b, g) = (task / a.kv_heads, task % a.kv_heads);
        let shared = |s: Shared<f32>, o: usize| Shared(at_mut(s.0, o));
        let raw = |v: View<Shared<f32>>| View { ptr: v.ptr.0, rs: v.rs, cs: v.cs };
        // This task's rows of dK and dV (and of dQ, below) start at zero.
        for j in 0..a.kv_len {
            let row = ((b * a.kv_len + j) * a.kv_heads + g) * h;
            // SAFETY: rows (b, j, g) of dK and dV belong to this task alone.
            unsafe {
                std::slice::from_raw_parts_mut(dk.0.add(row), h).fill(0.0);
                std::slice::from_raw_parts_mut(dv.0.add(row), h).fill(0.0);
            }
        }
        let mut p = alloc::filled(BLOCK * BLOCK, 0.0f32);
        let mut dp = alloc::filled(BLOCK * BLOCK, 0.0f32);
        for n in g * per_group..(g + 1) * per_group {
            for i0 in (0..a.q_len).step_by(BLOCK) {
                let qn = BLOCK.min(a.q_len - i0);
                let dqv = raw(a.q_rows(dq, b, n, i0, shared));
                for i in 0..qn {
                    // SAFETY: rows (b, i0 + i, n) of dQ belong to this task alone.
                    unsafe { std::slice::from_raw_parts_mut(dqv.ptr.add(i * dqv.rs), h).fill(0.0) };
                }
                let keys = a.visible(i0 + qn - 1);
                for j0 in (0..keys).step_by(BLOCK) {
                    let kn = BLOCK.min(keys - j0);
                    let (p, dp) = (&mut p[..qn * kn], &mut dp[..qn * kn]);
                    score_block(a, q, k, mask, b, n, i0, qn, j0, kn, p);
                    let dov = a.q_rows(d_out.as_ptr(), b, n, i0, at);
                    let kv = a.kv_rows(k.as_ptr(), a.kv_len, b, g, j0, at);
                    let vv = a.kv_rows(v.as_ptr(), a.kv_len, b, g, j0, at);
                    let qv = a.q_rows(q.as_ptr(), b, n, i0, at);
                    let pm = View { ptr: p.as_ptr(), rs: kn, cs: 1 };
                    // SAFETY: every view lies inside its tensor; dp holds qn * kn.
                    unsafe { sgemm_view(dov, transposed(vv), View { ptr: dp.as_mut_ptr(), rs: kn, cs: 1 }, qn, kn, h, 1.0, 0.0) };
                    for r in 0..qn {
                        let row = (b * a.q_len + i0 + r) * a.heads + n;
                        score_gradients(&mut p[r * kn..(r + 1) * kn], &mut dp[r * kn..(r + 1) * kn], lse[row], d[row]);
                    }
                    let dsm = View { ptr: dp.as_ptr(), rs: kn, cs: 1 };
                    let dkv = raw(a.kv_rows(dk, a.kv_len, b, g, j0, shared));
                    let dvv = raw(a.kv_rows(dv, a.kv_len, b, g, j0, shared));
                    // SAFETY: the output rows are this task's (see above).
                    unsafe {
                        sgemm_view(transposed(pm), dov, dvv, kn, h, qn, 1.0, 1.0);
                        sgemm_view(transposed(dsm), qv, dkv, kn, h, qn, a.scale, 1.0);
                        sgemm_view(dsm, kv, dqv, qn, h, kn, a.scale, 1.0);
                    }
                }
            }
        }
    });
}

/// One row of a block: p = e^(s - lse) (0 where s is -inf or the row has no
/// key), then ds = p (dp - D) in place of dp.
#[simd]
fn score_gradients(s_to_p: &mut [f32], dp_to_ds: &mut [f32], lse: f32, d: f32) {
    if lse == f32::NEG_INFINITY {
        s_to_p.fill(0.0);
        dp_to_ds.fill(0.0);
        return;
    }
    for (p, dp) in s_to_p.iter_mut().zip(dp_to_ds.iter_mut()) {
        *p = exp(*p - lse);
        *dp = *p * (*dp - d);
    }
}

/// Copies `new[batch, new_len, row]` into `cache[batch, max_seq, row]` at
/// sequence positions `pos..pos + new_len` (a row is kv_heads * head_dim).
pub fn kv_cache_write<T: Copy + Send + Sync>(new: &[T], cache: &mut [T], new_len: usize, max_seq: usize, row: usize, pos: usize) {
    cache.par_chunks_mut(max_seq * row).zip(new.par_chunks(new_len * row)).for_each(|(cache, new)| {
        cache[pos * row..(pos + new_len) * row].copy_from_slice(new);
    });
}
