//! AdamW, zero_grad, gradient clipping, embedding scatter-add.

use super::simd::simd;
use rayon::prelude::*;

use super::alloc;
use super::par::CHUNK;
use super::reduce::{sum_f64, sum_squares};

/// Scalars of one AdamW step, bias corrections folded in (computed in f64).
#[derive(Clone, Copy)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: i32,
}

impl AdamW {
    /// 1 / (1 - beta^step) for both moments, computed in f64.
    pub fn inverse_bias_corrections(&self) -> (f32, f32) {
        let inverse = |beta: f32| (1.0 / (1.0 - (beta as f64).powi(self.step))) as f32;
        (inverse(self.beta1), inverse(self.beta2))
    }
}

#[simd]
fn adamw_block(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW, inv_bc1: f32, inv_bc2: f32) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = h.beta1 * *m + (1.0 - h.beta1) * g;
        *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
        let m_hat = *m * inv_bc1;
        let v_hat = *v * inv_bc2;
        *p -= h.lr * (m_hat / (v_hat.sqrt() + h.eps) + h.weight_decay * *p);
    }
}

/// One decoupled-weight-decay Adam step on every element.
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW) {
    let (inv_bc1, inv_bc2) = h.inverse_bias_corrections();
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| adamw_block(p, g, m, v, h, inv_bc1, inv_bc2));
}

pub fn zero(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0));
}

/// Scales `grad` by clip_norm/‖grad‖ when the norm exceeds clip_norm; returns the
/// norm before clipping. Blocks of fixed size make it independent of threads.
pub fn clip(grad: &mut [f32], clip_norm: f32) -> f32 {
    let partial: Vec<f64> = grad.par_chunks(CHUNK).map(|c| sum_squares(c) as f64).collect();
    let norm = sum_f64(partial).sqrt() as f32;
    if norm > clip_norm {
        let s = clip_norm / norm;
        grad.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|g| *g *= s));
    }
    norm
}

/// grad_weight[indices[i], :] += grad_output[i, :]; negative indices skipped.
/// Each destination row is summed by one task, in ascending i, so duplicates
/// accumulate deterministically.
pub fn scatter_add(grad_output: &[f32], indices: &[i32], grad_weight: &mut [f32], dim: usize) {
    let mut order = alloc::with_capacity(indices.len());
    order.extend(indices.iter().enumerate().filter_map(|(i, &r)| usize::try_from(r).ok().map(|r| (r, i))));
    order.sort_unstable();
    grad_weight.par_chunks_mut(dim).enumerate().for_each(|(r, row)| {
        let first = order.partition_point(|&(rr, _)| rr < r);
        for &(_, i) in order[first..].iter().take_while(|&&(rr, _)| rr == r) {
            for (w, &g) in row.iter_mut().zip(&grad_output[i * dim..(i + 1) * dim]) {
                *w += g;
            }
        }
    });
}
