//! Attention on the CPU. One query row at a time: its scores (O(seq) scratch,
//! never the seq x seq matrix), a softmax, then the weighted sum of values.

use std::ops::Range;

use rayon::prelude::*;

use super::alloc;
use super::softmax::softmax_row;

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

/// Which scores are masked out.
#[derive(Clone, Copy)]
pub enum Mask<'a> {
    None,
    Causal,
    /// Additive `[seq, seq]` mask (0 / -inf).
    Additive(&'a [f32]),
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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

/// Fused attention: softmax(scale·QKᵀ + mask)·V. A query whose keys are all
/// masked gets zeros.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], shape: AttnShape, scale: f32, mask: Mask) {
    for_each_query(out, &shape, |b, i, h, o| {
        let q = query(q, &shape, b, i, h);
        let keys = shape.keys(i, matches!(mask, Mask::Causal));
        let mut scores = alloc::filled(keys.len(), 0.0f32);
        scores_row(q, k, &shape, b, h, keys.clone(), scale, &mut scores);
        if let Mask::Additive(mask) = mask {
            for (s, &m) in scores.iter_mut().zip(&mask[i * shape.seq..(i + 1) * shape.seq]) {
                *s += m;
            }
        }
        let mut weights = alloc::filled(keys.len(), 0.0f32);
        softmax_row(&scores, &mut weights);
        weighted_values(&weights, v, &shape, b, h, keys, o);
    });
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
