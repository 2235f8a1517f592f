//! Row-major SGEMM through the `gemm` crate (packed, SIMD, rayon-parallel).

use gemm::Parallelism;
use rayon::prelude::*;

/// Products with at most this many rows of A are bound by streaming B; they run
/// as independent column bands (one single-threaded crate call each), which
/// beats the crate's own threading there.
const FEW_ROWS: usize = 64;
/// Columns per band: fixed, so results do not depend on the thread count.
const BAND: usize = 1024;

/// One single- or multi-threaded crate call on a row-major view: C is `m x w`
/// with row stride `ldc`, B is `k x w` with row stride `ldb`.
///
/// SAFETY: the pointers cover these views; the crate computes
/// dst = alpha' * dst + beta' * lhs * rhs, so its alpha/beta are our beta/alpha.
unsafe fn crate_gemm(a: *const f32, b: *const f32, c: *mut f32, m: usize, w: usize, k: usize, ldb: usize, ldc: usize, alpha: f32, beta: f32, threads: Parallelism) {
    unsafe {
        gemm::gemm(
            m, w, k,
            c, 1, ldc as isize,
            beta != 0.0,
            a, 1, k as isize,
            b, 1, ldb as isize,
            beta, alpha,
            false, false, false,
            threads,
        );
    }
}

/// C[M,N] = alpha * A[M,K] * B[K,N] + beta * C; with beta == 0, C is never read.
pub fn sgemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize, alpha: f32, beta: f32) {
    if k == 0 || alpha == 0.0 {
        // No product term: C = beta * C (and C = 0 without reading it when beta == 0).
        for c in c.iter_mut() {
            *c = if beta == 0.0 { 0.0 } else { beta * *c };
        }
    } else if m <= FEW_ROWS && n > BAND {
        // Column bands of C are disjoint; the address travels as usize to be Send.
        let c_addr = c.as_mut_ptr() as usize;
        (0..n.div_ceil(BAND)).into_par_iter().for_each(|band| {
            let (j0, w) = (band * BAND, BAND.min(n - band * BAND));
            let c = (c_addr as *mut f32).wrapping_add(j0);
            // SAFETY: band `j0..j0+w` of B and C lies inside the checked slices.
            unsafe { crate_gemm(a.as_ptr(), b.as_ptr().add(j0), c, m, w, k, n, n, alpha, beta, Parallelism::None) };
        });
    } else {
        let threads = if m * n * k < 64 * 64 * 64 { Parallelism::None } else { Parallelism::Rayon(rayon::current_num_threads()) };
        // SAFETY: the slices hold M*K, K*N and M*N elements (checked by the caller).
        unsafe { crate_gemm(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), m, n, k, n, n, alpha, beta, threads) };
    }
}

/// `batch` independent products over contiguous matrices (C must be non-empty).
pub fn sgemm_batched(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize, alpha: f32, beta: f32) {
    for (i, c) in c.chunks_mut(m * n).enumerate() {
        sgemm(&a[i * m * k..(i + 1) * m * k], &b[i * k * n..(i + 1) * k * n], c, m, n, k, alpha, beta);
    }
}
