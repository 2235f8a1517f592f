//! Row reductions shared by softmax, norms and losses. Each sums in a fixed lane
//! order, so results are bitwise reproducible whatever the thread count.

use multiversion::multiversion;
use rayon::prelude::*;

use super::alloc;
use super::math::exp;

const LANES: usize = 16;
/// Elements summed in f32 before the partial sum moves to f64: 64 terms per
/// lane keep each block's rounding near 1e-6 relative, and the f64 running total
/// keeps that bound for rows of any length (a single f32 total loses ~1e-3 at
/// 2^24 terms).
const BLOCK: usize = 64 * LANES;

/// Sum of f(x) over at most BLOCK elements with LANES independent f32
/// accumulators (so the loop vectorises), combined in a fixed order.
#[inline(always)]
fn block_sum(x: &[f32], f: &impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += f(v);
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

/// Sum of f(x) over the slice: f32 blocks, totalled in f64 in block order, so
/// the result is accurate and bitwise reproducible at any length.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    if x.len() <= BLOCK {
        return block_sum(x, &f);
    }
    x.chunks(BLOCK).map(|block| block_sum(block, &f) as f64).sum::<f64>() as f32
}

/// Largest element, ignoring NaN; -inf for an empty slice.
#[multiversion(targets = "simd")]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = a.max(v);
        }
    }
    tail.iter().chain(acc.iter()).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Σ x².
#[multiversion(targets = "simd")]
pub fn sum_squares(x: &[f32]) -> f32 {
    lane_sum(x, |v| v * v)
}

/// Σ e^(x - shift).
#[multiversion(targets = "simd")]
pub fn sum_exp(x: &[f32], shift: f32) -> f32 {
    lane_sum(x, |v| exp(v - shift))
}

/// y = e^(x - shift); returns Σ y.
#[multiversion(targets = "simd")]
pub fn exp_into(x: &[f32], shift: f32, y: &mut [f32]) -> f32 {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = exp(x - shift);
    }
    lane_sum(y, |v| v)
}

/// Σ x in f64, sequentially: for the few scalar results (losses, norms) where
/// the terms are already per-row values.
pub fn sum_f64(x: impl IntoIterator<Item = f64>) -> f64 {
    x.into_iter().sum()
}

/// acc += x, elementwise.
#[multiversion(targets = "simd")]
pub fn add_into(acc: &mut [f32], x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// Sums over rows of per-row vectors of `width` (bias, norm-weight and
/// embedding gradients): `add_row(r, acc)` adds row r's terms into `acc`.
/// Rows go in a fixed number of contiguous groups (in parallel), each summing
/// blocks of 32 rows in f32 into an f64 total; the groups are combined in
/// order. The result depends only on `rows`, never on the thread count, and
/// keeps f32 accuracy for any number of rows.
pub fn column_sums(rows: usize, width: usize, add_row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    const GROUPS: usize = 64;
    const BLOCK_ROWS: usize = 32;
    let per_group = rows.div_ceil(GROUPS).max(1);
    let groups: Vec<Vec<f64>> = (0..rows.div_ceil(per_group))
        .into_par_iter()
        .map(|g| {
            let end = rows.min((g + 1) * per_group);
            let mut total = alloc::filled(width, 0.0f64);
            let mut block = alloc::filled(width, 0.0f32);
            for start in (g * per_group..end).step_by(BLOCK_ROWS) {
                block.fill(0.0);
                (start..end.min(start + BLOCK_ROWS)).for_each(|r| add_row(r, &mut block));
                total.iter_mut().zip(&block).for_each(|(t, &b)| *t += b as f64);
            }
            total
        })
        .collect();
    let mut sums = alloc::filled(width, 0.0f64);
    for group in &groups {
        sums.iter_mut().zip(group).for_each(|(s, &g)| *s += g);
    }
    alloc::collect(sums.iter().map(|&s| s as f32))
}
