//! GEMM and batched GEMM against float64.
mod common;
use common::*;
use cudann::*;

fn gemm_ref(a: &[f32], b: &[f32], c: &[f32], m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
            let prior = if beta == 0.0 { 0.0 } else { beta as f64 * c[i * n + j] as f64 };
            out[i * n + j] = alpha as f64 * dot + prior;
        }
    }
    out
}

/// Tolerance for a K-term f32 dot product of unit-scale values.
fn tol(k: usize) -> f64 {
    4.0 * f32::EPSILON as f64 * (k as f64).sqrt().max(1.0) * 4.0
}

#[test]
fn gemm_matches_float64() {
    let mut rng = Rng::new(30);
    for (m, n, k) in [(1, 1, 1), (31, 33, 17), (64, 65, 66), (128, 1, 300), (1, 200, 513), (257, 129, 64)] {
        for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 2.0), (-1.0, 1.0)] {
            let (a, b) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0));
            let c0 = rng.vec(m * n, 1.0);
            let mut c = if beta == 0.0 { vec![f32::NAN; m * n] } else { c0.clone() };
            assert_ok(unsafe { cuda_gemm(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), m as i32, n as i32, k as i32, alpha, beta, NULL) });
            let want = gemm_ref(&a, &b, &c0, m, n, k, alpha, beta);
            assert_close(&c, &want, tol(k), tol(k), &format!("gemm {m}x{n}x{k} a={alpha} b={beta}"));
        }
    }
}

#[test]
fn gemm_with_k_zero_scales_c() {
    let mut c = vec![2.0f32; 6];
    assert_ok(unsafe { cuda_gemm(std::ptr::null(), std::ptr::null(), c.as_mut_ptr(), 2, 3, 0, 1.0, 0.5, NULL) });
    assert_eq!(c, vec![1.0; 6]);
    let mut c = vec![f32::NAN; 6];
    assert_ok(unsafe { cuda_gemm(std::ptr::null(), std::ptr::null(), c.as_mut_ptr(), 2, 3, 0, 1.0, 0.0, NULL) });
    assert_eq!(c, vec![0.0; 6]);
}

#[test]
fn batched_gemm_matches_float64() {
    let mut rng = Rng::new(31);
    let (batch, m, n, k) = (5, 17, 9, 33);
    let (a, b, c0) = (rng.vec(batch * m * k, 1.0), rng.vec(batch * k * n, 1.0), rng.vec(batch * m * n, 1.0));
    let mut c = c0.clone();
    assert_ok(unsafe { cuda_gemm_batched(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), batch as i32, m as i32, n as i32, k as i32, 1.5, -0.5, NULL) });
    for i in 0..batch {
        let want = gemm_ref(&a[i * m * k..][..m * k], &b[i * k * n..][..k * n], &c0[i * m * n..][..m * n], m, n, k, 1.5, -0.5);
        assert_close(&c[i * m * n..][..m * n], &want, tol(k), tol(k), &format!("batch {i}"));
    }
}

#[test]
fn gemm_bad_arguments() {
    let a = vec![1.0f32; 64];
    let mut c = poisoned(64);
    unsafe {
        assert_invalid(cuda_gemm(a.as_ptr(), a.as_ptr(), c.as_mut_ptr(), -8, 8, 8, 1.0, 0.0, NULL), "cuda_gemm", "M must be >= 0 (got -8)");
        assert_invalid(cuda_gemm(std::ptr::null(), a.as_ptr(), c.as_mut_ptr(), 8, 8, 8, 1.0, 0.0, NULL), "cuda_gemm", "A is NULL");
        assert_invalid(cuda_gemm_batched(a.as_ptr(), a.as_ptr(), c.as_mut_ptr(), i32::MAX, i32::MAX, 8, 8, 1.0, 0.0, NULL), "cuda_gemm_batched", "overflows");
        assert_invalid(cuda_gemm_batched(a.as_ptr(), a.as_ptr(), c.as_mut_ptr(), -1, 8, 8, 8, 1.0, 0.0, NULL), "cuda_gemm_batched", "batch must be >= 0");
    }
    assert_untouched(&c, "C");
    let mut buf = poisoned(65);
    let p = buf.as_mut_ptr();
    unsafe { assert_invalid(cuda_gemm(p, a.as_ptr(), p.add(1), 8, 8, 8, 1.0, 0.0, NULL), "cuda_gemm", "C partially overlaps A") };
    assert_untouched(&buf, "C");
}

#[test]
fn gemm_in_place_on_a_or_b_uses_the_original_values() {
    // C may be the very buffer of A (K == N) or B (K == M): ABI.md allows in place.
    let mut rng = Rng::new(32);
    let n = 24;
    let (a, b) = (rng.vec(n * n, 1.0), rng.vec(n * n, 1.0));
    let want = gemm_ref(&a, &b, &a, n, n, n, 1.0, 0.5);
    let mut ca = a.clone();
    assert_ok(unsafe { cuda_gemm(ca.as_ptr(), b.as_ptr(), ca.as_mut_ptr(), n as i32, n as i32, n as i32, 1.0, 0.5, NULL) });
    assert_close(&ca, &want, tol(n), tol(n), "C == A");
    let want = gemm_ref(&a, &b, &b, n, n, n, 1.0, 0.5);
    let mut cb = b.clone();
    assert_ok(unsafe { cuda_gemm(a.as_ptr(), cb.as_ptr(), cb.as_mut_ptr(), n as i32, n as i32, n as i32, 1.0, 0.5, NULL) });
    assert_close(&cb, &want, tol(n), tol(n), "C == B");
}
