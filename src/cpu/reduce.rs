//! Row reductions shared by softmax, norms and losses. Each sums in a fixed lane
//! order, so results are bitwise reproducible whatever the thread count.

use super::simd::simd;
use rayon::prelude::*;

use super::alloc;
use super::math::{exp, exp_with};

pub(crate) const LANES: usize = 16;
/// Elements summed in f32 before the partial sum moves to f64: 64 terms per
/// lane keep each block's rounding near 1e-6 relative, and the f64 running total
/// keeps that bound for rows of any length (a single f32 total loses ~1e-3 at
/// 2^24 terms).
pub(crate) const BLOCK: usize = 64 * LANES;

/// Sum of f(a_i, b_i, c_i) over at most BLOCK elements with LANES independent
/// f32 accumulators (so the loop vectorises), combined in a fixed order.
#[inline(always)]
fn block_sum<T: Copy>(a: &[T], b: &[T], c: &[T], f: &impl Fn(T, T, T) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (chunks_a, chunks_b, chunks_c) = (a.chunks_exact(LANES), b.chunks_exact(LANES), c.chunks_exact(LANES));
    let tails = (chunks_a.remainder(), chunks_b.remainder(), chunks_c.remainder());
    for ((ca, cb), cc) in chunks_a.zip(chunks_b).zip(chunks_c) {
        for (i, acc) in acc.iter_mut().enumerate() {
            *acc += f(ca[i], cb[i], cc[i]);
        }
    }
    for (i, acc) in acc.iter_mut().enumerate().take(tails.0.len()) {
        *acc += f(tails.0[i], tails.1[i], tails.2[i]);
    }
    lane_total(acc)
}

/// Σ of 16 lanes by a fixed tree (halves added pairwise), so a sum never
/// depends on how the lanes were filled.
#[inline(always)]
pub(crate) fn lane_total(mut v: [f32; LANES]) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            v[i] += v[i + width];
        }
    }
    v[0]
}

/// Sum of f(a_i, b_i, c_i) over slices of one length: f32 blocks, totalled in
/// f64 in block order, so the result is accurate and bitwise reproducible at
/// any length.
#[inline(always)]
fn triple_sum<T: Copy>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> f32) -> f32 {
    if a.len() <= BLOCK {
        return block_sum(a, b, c, &f);
    }
    let blocks = a.chunks(BLOCK).zip(b.chunks(BLOCK)).zip(c.chunks(BLOCK));
    blocks.map(|((a, b), c)| block_sum(a, b, c, &f) as f64).sum::<f64>() as f32
}

/// Sum of f(x) over the slice, as [`triple_sum`].
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    triple_sum(x, x, x, |v, _, _| f(v))
}

/// Largest of value(x_i), ignoring NaN; -inf for an empty slice. Four sets of
/// lanes, so that consecutive maxima do not wait on each other; the maximum
/// of a set does not depend on the order it is taken in.
#[inline(always)]
fn lane_max<T: Copy>(x: &[T], value: impl Fn(T) -> f32) -> f32 {
    const SETS: usize = 4;
    let mut acc = [f32::NEG_INFINITY; SETS * LANES];
    let chunks = x.chunks_exact(SETS * LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = a.max(value(v));
        }
    }
    tail.iter().map(|&v| value(v)).chain(acc).fold(f32::NEG_INFINITY, |m, v| m.max(v))
}

/// Largest element, ignoring NaN; -inf for an empty slice.
#[simd]
pub fn max(x: &[f32]) -> f32 {
    lane_max(x, |v| v)
}

/// [`max`] of bfloat16 bits, each widened in a register (the same lanes and order).
#[simd]
pub fn max_bf16(x: &[u16]) -> f32 {
    lane_max(x, super::convert::bf16_unquieted)
}

/// Σ x².
#[simd]
pub fn sum_squares(x: &[f32]) -> f32 {
    lane_sum(x, |v| v * v)
}

/// Σ x² of bfloat16 bits, each widened in a register: bitwise
/// [`sum_squares`] of the widened values (the same lanes and order).
#[simd]
pub fn sum_squares_bf16(x: &[u16]) -> f32 {
    triple_sum(x, x, x, |v, _, _| {
        let v = super::convert::bf16_unquieted(v);
        v * v
    })
}

/// Σ x.
#[simd]
pub fn sum(x: &[f32]) -> f32 {
    lane_sum(x, |v| v)
}

/// Σ (x - shift)².
#[simd]
pub fn sum_squares_shifted(x: &[f32], shift: f32) -> f32 {
    lane_sum(x, |v| (v - shift) * (v - shift))
}

/// Σ a·b.
#[simd]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    triple_sum(a, b, b, |x, y, _| x * y)
}

/// Σ a·w·b.
#[simd]
pub fn weighted_dot(a: &[f32], w: &[f32], b: &[f32]) -> f32 {
    triple_sum(a, w, b, |x, w, y| x * w * y)
}

/// Σ e^(x - shift).
#[simd]
pub fn sum_exp(x: &[f32], shift: f32) -> f32 {
    lane_sum(x, |v| exp(v - shift))
}

/// y = f(x) elementwise; returns Σ y, bitwise [`lane_sum`] of the written y
/// (the same lanes, blocks and order), in the same pass. Meanwhile the cache
/// lines of x's length in `A` from `ahead` on are asked for (see [`prefetch`]).
#[inline(always)]
fn map_sum<T: Copy, A>(x: &[T], y: &mut [f32], ahead: *const A, f: impl Fn(T) -> f32) -> f32 {
    if x.len() <= BLOCK {
        return map_block_sum(x, y, ahead, &f);
    }
    let blocks = x.chunks(BLOCK).zip(y.chunks_mut(BLOCK)).enumerate();
    blocks.map(|(i, (x, y))| map_block_sum(x, y, ahead.wrapping_add(i * BLOCK), &f) as f64).sum::<f64>() as f32
}

/// [`map_sum`] of at most BLOCK elements, with [`block_sum`]'s lanes. (A
/// function, not a closure: closures do not inherit `#[simd]`'s features.)
#[inline(always)]
fn map_block_sum<T: Copy, A>(x: &[T], y: &mut [f32], ahead: *const A, f: &impl Fn(T) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (mut xs, mut ys) = (x.chunks_exact(LANES), y.chunks_exact_mut(LANES));
    for (i, (xc, yc)) in (&mut xs).zip(&mut ys).enumerate() {
        prefetch(ahead.wrapping_add(i * LANES).cast());
        for ((a, y), &x) in acc.iter_mut().zip(yc).zip(xc) {
            *y = f(x);
            *a += *y;
        }
    }
    for ((a, y), &x) in acc.iter_mut().zip(ys.into_remainder()).zip(xs.remainder()) {
        *y = f(x);
        *a += *y;
    }
    lane_total(acc)
}

/// Asks the CPU to start loading the cache line at `p`: a hint, which never
/// faults, so `p` may point anywhere (null included).
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: prefetching is a hint; it reads nothing and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// y = e^(x - shift); returns Σ y. The exponential's multiply-adds fused
/// (softmax: 20% fewer operations; no sampler uses this). `ahead`: memory
/// to fetch meanwhile, x's length of `A` (softmax's next row), or null.
#[simd]
#[allow(clippy::not_unsafe_ptr_arg_deref)] // `ahead` is prefetched, never read
pub fn exp_into<A>(x: &[f32], shift: f32, y: &mut [f32], ahead: *const A) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if LEVEL == super::simd::Level::Avx512 {
        // SAFETY: this copy runs only where the CPU has AVX-512.
        return unsafe { super::softmax_avx512::exp_sum(x, shift, y, ahead) };
    }
    map_sum(x, y, ahead, |x| exp_with::<true>(x - shift))
}

/// [`exp_into`] of bfloat16 bits, each widened in a register.
#[simd]
#[allow(clippy::not_unsafe_ptr_arg_deref)] // `ahead` is prefetched, never read
pub fn exp_of_bf16<A>(x: &[u16], shift: f32, y: &mut [f32], ahead: *const A) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if LEVEL == super::simd::Level::Avx512 {
        // SAFETY: this copy runs only where the CPU has AVX-512.
        return unsafe { super::softmax_avx512::exp_sum(x, shift, y, ahead) };
    }
    map_sum(x, y, ahead, |x| exp_with::<true>(super::convert::bf16_unquieted(x) - shift))
}

/// x = e^(x - shift) in place; returns Σ x.
#[simd]
pub fn exp_in_place(x: &mut [f32], shift: f32) -> f32 {
    for x in x.iter_mut() {
        *x = exp(*x - shift);
    }
    lane_sum(x, |v| v)
}

/// Σ x in f64, sequentially: for the few scalar results (losses, norms) where
/// the terms are already per-row values.
pub fn sum_f64(x: impl IntoIterator<Item = f64>) -> f64 {
    x.into_iter().sum()
}

/// acc += x, elementwise.
#[simd]
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
