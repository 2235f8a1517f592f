//! Row-wise softmax and the MoE router's top-k.

use super::simd::simd;
use rayon::prelude::*;

use super::alloc;
use super::par::{Src, blocks, row_pairs};
use super::convert::{Element, SCRATCH_KEEP, to_bf16};
use half::f16;
use super::reduce::{dot, exp_into, exp_of_bf16, max, max_bf16};

#[simd]
fn scale_in_place(y: &mut [f32], s: f32) {
    for y in y {
        *y *= s;
    }
}

/// One row: stable (max subtracted); -inf entries get 0; an all -inf row is zeros.
pub fn softmax_row(x: &[f32], y: &mut [f32]) {
    let m = max(x);
    if m == f32::NEG_INFINITY {
        y.fill(0.0);
        return;
    }
    // The next row (rows are contiguous) is fetched while this one computes.
    let total = exp_into(x, m, y, x.as_ptr_range().end);
    scale_in_place(y, 1.0 / total);
}

pub fn softmax(x: Src, y: &mut [f32], cols: usize) {
    blocks([x], y, cols, |_, [x], y| softmax_row(x, y));
}

#[simd]
fn scale_to_bf16(e: &[f32], s: f32, y: &mut [u16]) {
    for (y, &e) in y.iter_mut().zip(e) {
        *y = to_bf16(e * s).to_bits();
    }
}

/// [`softmax`] of bfloat16 rows into distinct bfloat16 rows, each element
/// widened in a register and the exponentials kept in a float32 row: bitwise
/// the float32 op on the widened rows, rounded once, without the passes that
/// widen the row and round the result.
pub fn softmax_bf16(x: &[u16], y: &mut [u16], cols: usize) {
    row_pairs(x, y, cols, |x, y| {
        let m = max_bf16(x);
        if m == f32::NEG_INFINITY {
            return y.fill(0); // +0
        }
        alloc::with_scratch(&EXPONENTIALS, x.len(), SCRATCH_KEEP, |e| {
            let total = exp_of_bf16(x, m, e, x.as_ptr_range().end);
            scale_to_bf16(e, 1.0 / total, y);
        });
    });
}

/// [`softmax`] of float16 rows into distinct float16 rows, one row at a
/// time, bitwise the float32 op on the widened rows, rounded once. At the
/// AVX-512 level each element is widened in a register (as bf16's); at the
/// others a row is widened into float32 first (F16C at AVX2) for
/// [`softmax_row`]. Rows stay in L1 throughout; at AVX-512 the next row is
/// fetched while the exponentials run.
pub fn softmax_f16(x: &[f16], y: &mut [f16], cols: usize) {
    row_pairs(x, y, cols, |x, y| {
        #[cfg(target_arch = "x86_64")]
        if super::simd::level() == super::simd::Level::Avx512 {
            use super::softmax_avx512 as avx512;
            // SAFETY (of each avx512 call): the AVX-512 level runs only where
            // the CPU has AVX-512 (F, BW, VL, as the level is compiled for).
            let m = unsafe { avx512::max(x) };
            if m == f32::NEG_INFINITY {
                return y.fill(f16::ZERO);
            }
            return alloc::with_scratch(&EXPONENTIALS, x.len(), SCRATCH_KEEP, |e| {
                let s = 1.0 / unsafe { avx512::exp_sum(x, m, e, x.as_ptr_range().end) };
                if s.is_nan() {
                    // A NaN row: the float32 op's own scaling picks its NaNs.
                    scale_in_place(e, s);
                    return f16::store(e, y);
                }
                unsafe { avx512::scale_to_f16(e, s, y) };
            });
        }
        alloc::with_scratch(&EXPONENTIALS, 2 * x.len(), SCRATCH_KEEP, |scratch| {
            let (wide, e) = scratch.split_at_mut(x.len());
            f16::load(x, wide);
            softmax_row(wide, e);
            f16::store(e, y);
        });
    });
}

thread_local! {
    /// A row of exponentials per worker, kept between calls (up to SCRATCH_KEEP).
    static EXPONENTIALS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

#[simd]
fn softmax_dx(dy: &[f32], y: &[f32], c: f32, dx: &mut [f32]) {
    for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
        *dx = y * (dy - c);
    }
}

/// dx = y * (dy - Σ dy·y), row by row, from the softmax output y.
pub fn softmax_backward(dy: Src, y: Src, dx: &mut [f32], cols: usize) {
    blocks([dy, y], dx, cols, |_, [dy, y], dx| softmax_dx(dy, y, dot(dy, y), dx));
}

/// Whether column `a` ranks before `b`: larger logit first, then lower index.
/// (Probabilities are monotone in the logits, so ranking logits ranks probabilities.)
fn ranks_before(x: &[f32], a: usize, b: usize) -> std::cmp::Ordering {
    x[b].total_cmp(&x[a]).then(a.cmp(&b))
}

/// Indices of the `k` best columns of `x` in rank order.
pub fn top_k_indices(x: &[f32], k: usize) -> Vec<usize> {
    let mut order = alloc::collect(0..x.len());
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, |&a, &b| ranks_before(x, a, b));
        order.truncate(k);
    }
    order.sort_unstable_by(|&a, &b| ranks_before(x, a, b));
    order
}

/// Router top-k: per row the `k` most probable columns and their probabilities
/// renormalised over those `k`.
pub fn softmax_topk(x: &[f32], weights: &mut [f32], indices: &mut [i32], cols: usize, k: usize) {
    weights
        .par_chunks_mut(k)
        .zip(indices.par_chunks_mut(k))
        .zip(x.par_chunks(cols))
        .for_each(|((w, idx), x)| {
            let best = top_k_indices(x, k);
            let m = x[best[0]];
            let kept: Vec<f32> = best.iter().map(|&j| x[j]).collect();
            if m == f32::NEG_INFINITY {
                w.fill(0.0);
            } else {
                let total = exp_into(&kept, m, w, std::ptr::null::<f32>());
                scale_in_place(w, 1.0 / total);
            }
            for (out, &j) in idx.iter_mut().zip(&best) {
                *out = j as i32;
            }
        });
}
