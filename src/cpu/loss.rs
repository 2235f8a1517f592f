//! Cross-entropy and the MoE auxiliary (load-balancing) loss.

use super::simd::simd;
use rayon::prelude::*;

use super::math::exp;
use super::par::{Src, blocks};
use super::reduce::{max, sum_exp, sum_f64};

#[simd]
fn shift_into(x: &[f32], shift: f32, y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x - shift;
    }
}

#[simd]
fn softmax_grad(log_probs: &[f32], scale: f32, d: &mut [f32]) {
    for (d, &lp) in d.iter_mut().zip(log_probs) {
        *d = exp(lp) * scale;
    }
}

/// log_probs = log_softmax(logits) row-wise; returns the mean negative
/// log-likelihood over rows whose target is >= 0 (0 when every row is padding).
/// Targets must be < vocab (checked by the caller).
pub fn cross_entropy_forward(logits: Src, targets: &[i32], log_probs: &mut [f32], vocab: usize) -> f32 {
    let nll = blocks([logits], log_probs, vocab, |row, [x], y| {
        let m = max(x);
        let lse = m as f64 + (sum_exp(x, m) as f64).ln();
        shift_into(x, lse as f32, y);
        usize::try_from(targets[row]).ok().map(|t| lse - x[t] as f64)
    });
    let counted: Vec<f64> = nll.into_iter().flatten().collect();
    if counted.is_empty() { 0.0 } else { (sum_f64(counted.iter().copied()) / counted.len() as f64) as f32 }
}

/// d_logits = (exp(log_probs) - onehot(target)) * scale; padding rows get 0.
pub fn cross_entropy_backward(log_probs: Src, targets: &[i32], d_logits: &mut [f32], vocab: usize, scale: f32) {
    blocks([log_probs], d_logits, vocab, |row, [lp], d| match usize::try_from(targets[row]) {
        Ok(t) => {
            softmax_grad(lp, scale, d);
            d[t] = (exp(lp[t]) - 1.0) * scale;
        }
        Err(_) => d.fill(0.0),
    });
}

/// Outputs of the auxiliary loss.
pub struct AuxLoss {
    pub loss: f32,
    pub f_counts: Vec<f32>,
    pub p_means: Vec<f32>,
}

/// f_counts[e]: fraction of tokens routed to e (a token counts once per expert);
/// p_means[e]: mean router probability of e; loss = alpha * E * Σ f·p.
/// Expert indices must be in [0, n_experts) (checked by the caller).
pub fn aux_loss(probs: &[f32], experts: &[i32], n_experts: usize, top_k: usize, alpha: f32) -> AuxLoss {
    let tokens = probs.len() / n_experts;
    let mut routed = vec![0u64; n_experts];
    let mut prob_sums = vec![0.0f64; n_experts];
    let mut seen = vec![usize::MAX; n_experts];
    for (t, (p, chosen)) in probs.chunks_exact(n_experts).zip(experts.chunks_exact(top_k)).enumerate() {
        for &e in chosen {
            let e = e as usize;
            if seen[e] != t {
                seen[e] = t;
                routed[e] += 1;
            }
        }
        for (sum, &p) in prob_sums.iter_mut().zip(p) {
            *sum += p as f64;
        }
    }
    let f: Vec<f64> = routed.iter().map(|&c| c as f64 / tokens as f64).collect();
    let p: Vec<f64> = prob_sums.iter().map(|&s| s / tokens as f64).collect();
    let dot = sum_f64(f.iter().zip(&p).map(|(f, p)| f * p));
    AuxLoss {
        loss: (alpha as f64 * n_experts as f64 * dot) as f32,
        f_counts: f.iter().map(|&v| v as f32).collect(),
        p_means: p.iter().map(|&v| v as f32).collect(),
    }
}

/// scale * alpha * E / tokens in f64: the factor of [`aux_loss_backward`] (the
/// GPU kernel takes it from here, so both backends round the same product).
pub fn aux_loss_backward_factor(alpha: f32, scale: f32, tokens: usize, n_experts: usize) -> f64 {
    scale as f64 * alpha as f64 * n_experts as f64 / tokens as f64
}

/// d_probs[t, e] = scale * alpha * E * f_counts[e] / tokens: the gradient of
/// the auxiliary loss (f_counts a constant) into the router probabilities.
pub fn aux_loss_backward(f_counts: &[f32], d_probs: &mut [f32], alpha: f32, scale: f32) {
    let n_experts = f_counts.len();
    let factor = aux_loss_backward_factor(alpha, scale, d_probs.len() / n_experts, n_experts);
    let row: Vec<f32> = f_counts.iter().map(|&f| (factor * f as f64) as f32).collect();
    d_probs.par_chunks_mut(n_experts).for_each(|d| d.copy_from_slice(&row));
}
