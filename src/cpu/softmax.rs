//! Row-wise softmax and the MoE router's top-k.

use super::simd::simd;
use rayon::prelude::*;

use super::alloc;
use super::par::{Src, blocks, row_groups, row_pairs};
use super::convert::{Element, SCRATCH_KEEP, to_bf16};
use half::f16;
use super::reduce::{dot, exp_into, exp_of_bf16, max, max_bf16};
#[cfg(target_arch = "x86_64")]
use super::softmax_avx512 as avx512;

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
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() == super::simd::Level::Avx512 {
        if is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512dq") {
            use avx512::Bf16Native as Native;
            return softmax_half_avx512(Native::of(x), Native::of_mut(y), cols, Native(0), |e, s, y| scale_to_bf16(e, s, Native::bits_mut(y)));
        }
        return softmax_half_avx512(x, y, cols, 0, |e, s, y| scale_to_bf16(e, s, y));
    }
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

/// [`softmax`] of float16 rows into distinct float16 rows, bitwise the
/// float32 op on the widened rows, rounded once. At the AVX-512 level each
/// element is widened in a register (as bf16's); at the others a row is
/// widened into float32 first (F16C at AVX2) for [`softmax_row`]. Rows stay
/// in L1 throughout.
pub fn softmax_f16(x: &[f16], y: &mut [f16], cols: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() == super::simd::Level::Avx512 {
        return softmax_half_avx512(x, y, cols, f16::ZERO, |e, s, y| {
            scale_in_place(e, s);
            f16::store(e, y)
        });
    }
    row_pairs(x, y, cols, |x, y| {
        alloc::with_scratch(&EXPONENTIALS, 2 * x.len(), SCRATCH_KEEP, |scratch| {
            let (wide, e) = scratch.split_at_mut(x.len());
            f16::load(x, wide);
            softmax_row(wide, e);
            f16::store(e, y);
        });
    });
}

/// Where the second row of exponentials starts past the first: 256 bytes
/// more than a row, so that a row's loads from one and stores to the other
/// at the same column do not alias in the low 12 address bits (which stalls
/// the loads as if they depended on the stores).
#[cfg(target_arch = "x86_64")]
const SECOND_ROW_PAD: usize = 64;

/// Half-precision softmax at the AVX-512 level, a group of rows at a time:
/// each row's scaling and rounding runs in the loop of the next row's
/// exponentials (a pass of its own stalled on its stores), the rows widened
/// in registers. `zero` fills an all -inf row; `nan_row(e, s, y)` scales and
/// rounds a row with a NaN (whose products `Rounded::scaled` does not take). The bits
/// of the float32 op on the widened rows, rounded once.
#[cfg(target_arch = "x86_64")]
fn softmax_half_avx512<T: avx512::Rounded + Copy + Send + Sync>(x: &[T], y: &mut [T], cols: usize, zero: T, nan_row: impl Fn(&mut [f32], f32, &mut [T]) + Sync + Send) {
    row_groups(x, y, cols, |x, y| {
        alloc::with_scratch(&EXPONENTIALS, 2 * cols + SECOND_ROW_PAD, SCRATCH_KEEP, |scratch| {
            let (e, rest) = scratch.split_at_mut(cols);
            let (mut e, mut e_pending) = (e, &mut rest[SECOND_ROW_PAD..]);
            // A row whose exponentials are in e_pending, to be scaled by s.
            let mut pending: Option<(&mut [T], f32)> = None;
            for (x, y) in x.chunks(cols).zip(y.chunks_mut(cols)) {
                // SAFETY (of each avx512 call): the AVX-512 level runs only
                // where the CPU has AVX-512 (F, BW, VL, as it is compiled for).
                let m = unsafe { avx512::max(x) };
                if m == f32::NEG_INFINITY {
                    y.fill(zero);
                    continue;
                }
                let ahead = x.as_ptr_range().end;
                let total = match pending.take() {
                    Some((y_pending, s)) => unsafe { avx512::exp_sum_with(x, m, e, ahead, &mut T::scaled(e_pending, s, y_pending)) },
                    None => unsafe { avx512::exp_sum(x, m, e, ahead) },
                };
                let s = 1.0 / total;
                if s.is_nan() {
                    nan_row(e, s, y);
                } else {
                    pending = Some((y, s));
                    std::mem::swap(&mut e, &mut e_pending);
                }
            }
            if let Some((y, s)) = pending {
                unsafe { T::scaled(e_pending, s, y).run(cols) };
            }
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
