//! Row-major SGEMM through the `gemm` crate (packed, SIMD, rayon-parallel).

use gemm::Parallelism;

/// C[M,N] = alpha * A[M,K] * B[K,N] + beta * C; with beta == 0, C is never read.
pub fn sgemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize, alpha: f32, beta: f32) {
    if k == 0 || alpha == 0.0 {
        // No product term: C = beta * C (and C = 0 without reading it when beta == 0).
        for c in c.iter_mut() {
            *c = if beta == 0.0 { 0.0 } else { beta * *c };
        }
        return;
    }
    let threads = if m * n * k < 64 * 64 * 64 { Parallelism::None } else { Parallelism::Rayon(rayon::current_num_threads()) };
    // SAFETY: the slices hold M*K, K*N and M*N elements (checked by the caller);
    // strides are those of dense row-major matrices. The crate computes
    // dst = alpha' * dst + beta' * lhs * rhs, so its alpha/beta are our beta/alpha.
    unsafe {
        gemm::gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize,
            beta != 0.0,
            a.as_ptr(), 1, k as isize,
            b.as_ptr(), 1, n as isize,
            beta, alpha,
            false, false, false,
            threads,
        );
    }
}

/// `batch` independent products over contiguous matrices (C must be non-empty).
pub fn sgemm_batched(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize, alpha: f32, beta: f32) {
    for (i, c) in c.chunks_mut(m * n).enumerate() {
        sgemm(&a[i * m * k..(i + 1) * m * k], &b[i * k * n..(i + 1) * k * n], c, m, n, k, alpha, beta);
    }
}
