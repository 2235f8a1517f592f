//! Mixture-of-experts routing: the router's backward, and the dispatch of
//! token rows to experts and their weighted combination, with backwards.
//! A token-expert pair is `t * k + j` (token t's j-th choice); the dispatched
//! layout lists the pairs grouped by expert, `order[p]` being the pair at row p.

use rayon::prelude::*;

use super::alloc;
use super::reduce::dot;

/// The gradient through `cuda_softmax_topk`'s renormalised weights into the
/// router logits. The weights are the softmax of the chosen logits alone, so
/// d_logit[e_j] = w_j (dw_j - Σ_i w_i dw_i), and every other logit gets 0.
pub fn router_backward(weights: &[f32], indices: &[i32], d_weights: &[f32], d_logits: &mut [f32], n_experts: usize, k: usize) {
    d_logits.par_chunks_mut(n_experts).enumerate().for_each(|(t, d)| {
        let (w, dw, idx) = (&weights[t * k..][..k], &d_weights[t * k..][..k], &indices[t * k..][..k]);
        let mean = dot(w, dw);
        d.fill(0.0);
        for ((&w, &dw), &e) in w.iter().zip(dw).zip(idx) {
            d[e as usize] += w * (dw - mean);
        }
    });
}

/// The stable grouping of pairs by expert: (order, offsets). Experts must be
/// in [0, n_experts) (checked by the caller).
pub fn group_by_expert(indices: &[i32], n_experts: usize) -> (Vec<i32>, Vec<i32>) {
    let mut offsets = alloc::filled(n_experts + 1, 0i32);
    for &e in indices {
        offsets[e as usize + 1] += 1;
    }
    for e in 0..n_experts {
        offsets[e + 1] += offsets[e];
    }
    let mut next = alloc::copy(&offsets[..n_experts]);
    let mut order = alloc::filled(indices.len(), 0i32);
    for (pair, &e) in indices.iter().enumerate() {
        order[next[e as usize] as usize] = pair as i32;
        next[e as usize] += 1;
    }
    (order, offsets)
}

/// Row p of the dispatched layout = the input row of pair order[p]'s token.
pub fn dispatch(input: &[f32], order: &[i32], output: &mut [f32], dim: usize, k: usize) {
    if dim == 0 {
        return; // rows of nothing (the order and offsets still matter)
    }
    output.par_chunks_mut(dim).zip(order).for_each(|(row, &pair)| {
        let t = pair as usize / k;
        row.copy_from_slice(&input[t * dim..(t + 1) * dim]);
    });
}

/// row[p] of each pair p = t * k + j: where that pair sits in the dispatched
/// layout (the inverse of `order`, a permutation checked by the caller).
pub fn rows_of_pairs(order: &[i32]) -> Vec<usize> {
    let mut rows = alloc::filled(order.len(), 0usize);
    for (p, &pair) in order.iter().enumerate() {
        rows[pair as usize] = p;
    }
    rows
}

/// d_input[t] = Σ_j d_output[row of (t, j)], in j order.
pub fn dispatch_backward(d_output: &[f32], order: &[i32], d_input: &mut [f32], dim: usize, k: usize) {
    let rows = rows_of_pairs(order);
    d_input.par_chunks_mut(dim).enumerate().for_each(|(t, d)| {
        d.fill(0.0);
        for &p in &rows[t * k..(t + 1) * k] {
            d.iter_mut().zip(&d_output[p * dim..(p + 1) * dim]).for_each(|(d, &g)| *d += g);
        }
    });
}

/// output[t] = Σ_j weights[t, j] * expert_output[row of (t, j)], in j order.
pub fn combine(expert_output: &[f32], weights: &[f32], order: &[i32], output: &mut [f32], dim: usize, k: usize) {
    let rows = rows_of_pairs(order);
    output.par_chunks_mut(dim).enumerate().for_each(|(t, y)| {
        y.fill(0.0);
        for (&p, &w) in rows[t * k..(t + 1) * k].iter().zip(&weights[t * k..(t + 1) * k]) {
            y.iter_mut().zip(&expert_output[p * dim..(p + 1) * dim]).for_each(|(y, &x)| *y += w * x);
        }
    });
}

/// d_expert_output[row of (t, j)] = w[t, j] d_output[t];
/// d_weights[t, j] = d_output[t] · expert_output[row of (t, j)].
pub fn combine_backward(d_output: &[f32], expert_output: &[f32], weights: &[f32], order: &[i32], d_expert_output: &mut [f32], d_weights: &mut [f32], dim: usize, k: usize) {
    // (With dim 0 there are no rows, and every weight's gradient is 0.)
    d_expert_output.par_chunks_mut(dim.max(1)).zip(order).for_each(|(d, &pair)| {
        let (t, w) = (pair as usize / k, weights[pair as usize]);
        d.iter_mut().zip(&d_output[t * dim..(t + 1) * dim]).for_each(|(d, &g)| *d = w * g);
    });
    let rows = rows_of_pairs(order);
    d_weights.par_iter_mut().zip(&rows).enumerate().for_each(|(pair, (dw, &p))| {
        let t = pair / k;
        *dw = dot(&d_output[t * dim..(t + 1) * dim], &expert_output[p * dim..(p + 1) * dim]);
    });
}
