//! RMSNorm.

use multiversion::multiversion;

use super::par::{Src, blocks};
use super::reduce::sum_squares;

#[multiversion(targets = "simd")]
fn scale_by_weight(x: &[f32], w: &[f32], r: f32, y: &mut [f32]) {
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
        *y = x * r * w;
    }
}

/// y = x / sqrt(mean(x²) + eps) * weight, row by row.
pub fn rmsnorm(x: Src, weight: &[f32], y: &mut [f32], hidden: usize, eps: f32) {
    blocks([x], y, hidden, |_, [x], y| {
        let mean_square = sum_squares(x) / hidden as f32;
        let r = 1.0 / (mean_square + eps).sqrt();
        scale_by_weight(x, weight, r, y);
    });
}
