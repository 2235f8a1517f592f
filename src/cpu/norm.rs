//! RMSNorm and LayerNorm, forward and backward. The backward passes recompute
//! each row's statistics from the input (one cheap reduction) rather than take
//! them from the forward.

use super::simd::simd;

use super::par::{Src, blocks, row_pairs};

use super::convert::{bf16_unquieted, to_bf16};
use super::reduce::{add_into, column_sums, dot, sum, sum_squares, sum_squares_bf16, sum_squares_shifted, weighted_dot};

#[simd]
fn scale_by_weight(x: &[f32], w: &[f32], r: f32, y: &mut [f32]) {
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
        *y = x * r * w;
    }
}

/// 1 / sqrt(mean(x²) + eps).
fn rms_inverse(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_squares(x) / x.len() as f32 + eps).sqrt()
}

/// y = x / sqrt(mean(x²) + eps) * weight, row by row.
pub fn rmsnorm(x: Src, weight: &[f32], y: &mut [f32], hidden: usize, eps: f32) {
    blocks([x], y, hidden, |_, [x], y| scale_by_weight(x, weight, rms_inverse(x, eps), y));
}

#[simd]
fn scale_by_weight_bf16(x: &[u16], w: &[f32], r: f32, y: &mut [u16]) {
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
        *y = to_bf16(bf16_unquieted(x) * r * w).to_bits();
    }
}

/// [`rmsnorm`] of bfloat16 rows into distinct bfloat16 rows, in two passes
/// that widen each element in a register (half the bytes of float32):
/// bitwise the float32 op on the widened rows, rounded once.
pub fn rmsnorm_bf16(x: &[u16], weight: &[f32], y: &mut [u16], hidden: usize, eps: f32) {
    row_pairs(x, y, hidden, |x, y| {
        let r = 1.0 / (sum_squares_bf16(x) / x.len() as f32 + eps).sqrt();
        scale_by_weight_bf16(x, weight, r, y);
    });
}

/// dx = r (g - x r² mean(g x)) with g = dy * w, r = 1 / rms(x).
#[simd]
fn rmsnorm_dx(dy: &[f32], x: &[f32], w: &[f32], r: f32, c: f32, dx: &mut [f32]) {
    for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(w) {
        *dx = r * (dy * w - x * c);
    }
}

#[simd]
fn add_product_into(acc: &mut [f32], a: &[f32], b: &[f32], s: f32) {
    for ((acc, &a), &b) in acc.iter_mut().zip(a).zip(b) {
        *acc += a * b * s;
    }
}

/// RMSNorm backward: `d_weight = Σ_rows dy * x * r` (written first: `dx` may be
/// `dy`'s or `x`'s very buffer), then `dx` row by row.
pub fn rmsnorm_backward(dy: Src, x: Src, weight: &[f32], dx: &mut [f32], d_weight: &mut [f32], eps: f32) {
    let hidden = weight.len();
    {
        let (dy, x) = (dy.values(dx), x.values(dx));
        let sums = column_sums(dx.len() / hidden, hidden, |row, acc| {
            let span = row * hidden..(row + 1) * hidden;
            add_product_into(acc, &dy[span.clone()], &x[span.clone()], rms_inverse(&x[span], eps));
        });
        d_weight.copy_from_slice(&sums);
    }
    blocks([dy, x], dx, hidden, |_, [dy, x], dx| {
        let r = rms_inverse(x, eps);
        // mean(g x) over the row, with g = dy * w.
        let gx = weighted_dot(dy, weight, x) / hidden as f32;
        rmsnorm_dx(dy, x, weight, r, gx * r * r, dx);
    });
}

/// (mean, 1 / sqrt(var + eps)) of a row, both passes blocked in f64.
fn mean_rstd(x: &[f32], eps: f32) -> (f32, f32) {
    let mean = sum(x) / x.len() as f32;
    (mean, 1.0 / (sum_squares_shifted(x, mean) / x.len() as f32 + eps).sqrt())
}

#[simd]
fn layernorm_row(x: &[f32], w: &[f32], b: &[f32], mean: f32, rstd: f32, y: &mut [f32]) {
    for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
        *y = (x - mean) * rstd * w + b;
    }
}

/// y = (x - mean) / sqrt(var + eps) * weight + bias, row by row.
pub fn layernorm(x: Src, weight: &[f32], bias: &[f32], y: &mut [f32], eps: f32) {
    blocks([x], y, weight.len(), |_, [x], y| {
        let (mean, rstd) = mean_rstd(x, eps);
        layernorm_row(x, weight, bias, mean, rstd, y);
    });
}

/// dx = rstd (g - mean(g) - x̂ mean(g x̂)), g = dy * w, x̂ = (x - mean) rstd.
#[simd]
fn layernorm_dx(dy: &[f32], x: &[f32], w: &[f32], mean: f32, rstd: f32, g_mean: f32, gx_mean: f32, dx: &mut [f32]) {
    for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(w) {
        let xhat = (x - mean) * rstd;
        *dx = rstd * (dy * w - g_mean - xhat * gx_mean);
    }
}

/// LayerNorm backward: `d_weight = Σ_rows dy * x̂`, `d_bias = Σ_rows dy`
/// (written first, as for RMSNorm), then `dx` row by row.
pub fn layernorm_backward(dy: Src, x: Src, weight: &[f32], dx: &mut [f32], d_weight: &mut [f32], d_bias: &mut [f32], eps: f32) {
    let hidden = weight.len();
    {
        let (dy, x) = (dy.values(dx), x.values(dx));
        // One pass for both: columns [0, hidden) sum dy * x̂, [hidden, 2 hidden) sum dy.
        let sums = column_sums(dx.len() / hidden, 2 * hidden, |row, acc| {
            let span = row * hidden..(row + 1) * hidden;
            let (x, dy) = (&x[span.clone()], &dy[span]);
            let (mean, rstd) = mean_rstd(x, eps);
            let (acc_w, acc_b) = acc.split_at_mut(hidden);
            acc_w.iter_mut().zip(x).zip(dy).for_each(|((a, &x), &dy)| *a += dy * (x - mean) * rstd);
            add_into(acc_b, dy);
        });
        d_weight.copy_from_slice(&sums[..hidden]);
        d_bias.copy_from_slice(&sums[hidden..]);
    }
    blocks([dy, x], dx, hidden, |_, [dy, x], dx| {
        let (mean, rstd) = mean_rstd(x, eps);
        let g_mean = dot(dy, weight) / hidden as f32;
        // mean(g x̂) = rstd (mean(g x) - mean * mean(g)).
        let gx_mean = rstd * (weighted_dot(dy, weight, x) / hidden as f32 - mean * g_mean);
        layernorm_dx(dy, x, weight, mean, rstd, g_mean, gx_mean, dx);
    });
}
