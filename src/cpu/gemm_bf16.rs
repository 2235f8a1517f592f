//! bfloat16 x bfloat16 products on CPUs with AVX512-BF16 (its `vdpbf16ps`
//! adds two bf16 products into each float32 lane: twice the multiply-adds of
//! a float32 FMA per instruction, at the same instruction rate; measured on
//! the dev machine's Zen 4: 231 against 116 GFLOP/s a thread). Widening both
//! operands for the `gemm` crate runs at float32 speed minus the widening, so
//! at 1024^3 it was 0.95x float32; this kernel reads half the bytes and does
//! half the instructions.
//!
//! Both operands are packed as k pairs (the instruction's layout): A in
//! panels of MR rows, B in panels of NR columns, zero past the edges. Each
//! MR x NR tile of C is summed by one task over all of k in order (two
//! products per lane at a time), so results do not depend on the thread
//! count. Subnormal inputs and partial sums are flushed to zero by the
//! instruction (it ignores MXCSR): this path is for values of normal range,
//! as weights and activations are.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::alloc;
use super::gemm::View;
use super::par::Shared;

/// Rows of A per register tile.
const MR: usize = 8;
/// Columns of B per register tile: two 16-lane vectors.
const NR: usize = 32;
/// Row panels per task (one B panel stays in L2 while they pass).
const PANELS_PER_TASK: usize = 8;

/// Whether this CPU, at the SIMD level in use, runs [`gemm`].
pub fn available() -> bool {
    super::simd::level() == super::simd::Level::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// A pair of bf16 elements `(x(2p), x(2p + 1))` as one u32 (low half first),
/// zero past `k`.
fn pair(at: impl Fn(usize) -> u16, p: usize, k: usize) -> u32 {
    let lo = at(2 * p) as u32;
    let hi = if 2 * p + 1 < k { at(2 * p + 1) as u32 } else { 0 };
    lo | hi << 16
}

/// C = alpha op(A) op(B) + beta C (C float32, not read when beta is 0) for
/// bfloat16 A and B (their bits). Call only when [`available`].
/// SAFETY: as `gemm::sgemm_view`: the views hold the m x k, k x n and m x n
/// matrices.
pub unsafe fn gemm(a: View<*const u16>, b: View<*const u16>, c: View<*mut f32>, m: usize, n: usize, k: usize, alpha: f32, beta: f32) {
    let pairs = k.div_ceil(2);
    let (a_panels, b_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let (pa, pb) = (Shared(a.ptr.cast_mut()), Shared(b.ptr.cast_mut()));
    // A: panel i, pair p, row r at (i * pairs + p) * MR + r.
    let mut packed_a = alloc::filled(a_panels * pairs * MR, 0u32);
    packed_a.par_chunks_mut(pairs * MR).enumerate().for_each(|(i, panel)| {
        for r in 0..MR.min(m - i * MR) {
            let row = i * MR + r;
            let at = |q: usize| unsafe { *pa.ptr().add(row * a.rs + q * a.cs) };
            for p in 0..pairs {
                panel[p * MR + r] = pair(at, p, k);
            }
        }
    });
    // B: panel j, pair p, column q at (j * pairs + p) * NR + q.
    let mut packed_b = alloc::filled(b_panels * pairs * NR, 0u32);
    packed_b.par_chunks_mut(pairs * NR).enumerate().for_each(|(j, panel)| {
        // Pair by pair: along B's rows, where a row-major B is contiguous.
        for p in 0..pairs {
            for q in 0..NR.min(n - j * NR) {
                let col = j * NR + q;
                panel[p * NR + q] = pair(|row| unsafe { *pb.ptr().add(row * b.rs + col * b.cs) }, p, k);
            }
        }
    });
    let out = Shared(c.ptr);
    let groups = a_panels.div_ceil(PANELS_PER_TASK);
    (0..b_panels * groups).into_par_iter().for_each(|task| {
        let (j, g) = (task / groups, task % groups);
        let b_panel = &packed_b[j * pairs * NR..(j + 1) * pairs * NR];
        for i in g * PANELS_PER_TASK..a_panels.min((g + 1) * PANELS_PER_TASK) {
            let a_panel = &packed_a[i * pairs * MR..(i + 1) * pairs * MR];
            // SAFETY: `available()` was checked by the caller.
            let tile = unsafe { tile(a_panel, b_panel, pairs) };
            for (r, row) in tile.iter().enumerate().take(MR.min(m - i * MR)) {
                for (q, &sum) in row.iter().enumerate().take(NR.min(n - j * NR)) {
                    // SAFETY: element (i MR + r, j NR + q) of C, written by this task alone.
                    let c = unsafe { &mut *out.ptr().add((i * MR + r) * c.rs + (j * NR + q) * c.cs) };
                    *c = if beta == 0.0 { alpha * sum } else { alpha * sum + beta * *c };
                }
            }
        }
    });
}

/// One MR x NR tile: the sums over every pair of one A panel and one B panel.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(a: &[u32], b: &[u32], pairs: usize) -> [[f32; NR]; MR] {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pairs {
        // SAFETY: each panel holds `pairs` rows of NR (B) and MR (A) pairs.
        let (b0, b1): (__m512bh, __m512bh) = unsafe {
            let at = b.as_ptr().add(p * NR);
            (std::mem::transmute(_mm512_loadu_si512(at.cast())), std::mem::transmute(_mm512_loadu_si512(at.add(16).cast())))
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let x: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(a[p * MR + r] as i32)) };
            acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
        }
    }
    // SAFETY: two 16-lane float vectors are 32 floats.
    acc.map(|row| unsafe { std::mem::transmute::<[__m512; 2], [f32; NR]>(row) })
}
