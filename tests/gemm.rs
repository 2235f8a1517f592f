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

/// One strided operand for the gemm_ex tests: the `rows x cols` matrix of
/// batch entry `i` lives at `i * stride` with `ld` elements between rows.
#[derive(Clone, Copy)]
struct Layout {
    rows: usize,
    cols: usize,
    ld: usize,
    stride: usize,
}

impl Layout {
    fn span(&self, batch: usize) -> usize {
        (batch - 1) * self.stride + (self.rows - 1) * self.ld + self.cols
    }
    fn at(&self, x: &[f32], i: usize, r: usize, c: usize) -> f64 {
        x[i * self.stride + r * self.ld + c] as f64
    }
}

/// Rows `rows` of C_i = alpha op(A_i)[:, ks] op(B_i)[ks, :] + beta C_i in
/// float64, over the strided layouts, into `out` (C's layout).
#[allow(clippy::too_many_arguments)]
fn product_ref(out: &mut [f64], i: usize, rows: std::ops::Range<usize>, ks: std::ops::Range<usize>, (ta, tb): (bool, bool), n: usize, alpha: f32, a: &[f32], la: Layout, b: &[f32], lb: Layout, beta: f32, c: &[f32], lc: Layout) {
    for r in rows {
        for col in 0..n {
            let dot: f64 = ks
                .clone()
                .map(|p| (if ta { la.at(a, i, p, r) } else { la.at(a, i, r, p) }) * (if tb { lb.at(b, i, col, p) } else { lb.at(b, i, p, col) }))
                .sum();
            let prior = if beta == 0.0 { 0.0 } else { beta as f64 * lc.at(c, i, r, col) };
            out[i * lc.stride + r * lc.ld + col] = alpha as f64 * dot + prior;
        }
    }
}

/// C_i = alpha op(A_i) op(B_i) + beta C_i in float64, over the strided layouts.
fn gemm_ex_ref(ta: bool, tb: bool, m: usize, n: usize, k: usize, alpha: f32, a: &[f32], la: Layout, b: &[f32], lb: Layout, beta: f32, c: &[f32], lc: Layout, batch: usize) -> Vec<f64> {
    let mut out = f64s(c);
    for i in 0..batch {
        product_ref(&mut out, i, 0..m, 0..k, (ta, tb), n, alpha, a, la, b, lb, beta, c, lc);
    }
    out
}

#[test]
fn gemm_ex_matches_float64_for_every_transpose_and_layout() {
    let mut rng = Rng::new(33);
    for (m, n, k, batch) in [(1, 1, 1, 1), (1, 300, 70, 2), (31, 33, 17, 3), (65, 9, 130, 1), (4, 1100, 40, 2)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for (pad, shared_b) in [(0, false), (3, false), (5, true)] {
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let la = Layout { rows: ar, cols: ac, ld: ac + pad, stride: ar * (ac + pad) + pad };
                let lb = Layout { rows: br, cols: bc, ld: bc + pad, stride: if shared_b { 0 } else { br * (bc + pad) } };
                let lc = Layout { rows: m, cols: n, ld: n + pad, stride: m * (n + pad) + 2 * pad };
                let a = rng.vec(la.span(batch), 1.0);
                let b = rng.vec(lb.span(batch), 1.0);
                for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, -2.0)] {
                    let c0 = rng.vec(lc.span(batch), 1.0);
                    // beta == 0 must not read C: its old values are NaN.
                    let mut c = if beta == 0.0 { vec![f32::NAN; c0.len()] } else { c0.clone() };
                    let code = unsafe {
                        cudann_gemm_ex(
                            ta as i32, tb as i32, m as i32, n as i32, k as i32, alpha,
                            a.as_ptr().cast(), CUDANN_F32, la.ld as i64, la.stride as i64,
                            b.as_ptr().cast(), CUDANN_F32, lb.ld as i64, lb.stride as i64,
                            beta, c.as_mut_ptr().cast(), CUDANN_F32, lc.ld as i64, lc.stride as i64,
                            batch as i32, NULL,
                        )
                    };
                    assert_ok(code);
                    let mut want = gemm_ex_ref(ta, tb, m, n, k, alpha, &a, la, &b, lb, beta, &c0, lc, batch);
                    // Padding between rows and matrices is never written.
                    if beta == 0.0 {
                        for (w, g) in want.iter_mut().zip(&c) {
                            if g.is_nan() {
                                *w = f64::NAN;
                            }
                        }
                        let written = c.iter().filter(|v| !v.is_nan()).count();
                        assert_eq!(written, batch * m * n, "elements written");
                    }
                    let what = format!("gemm_ex ta={ta} tb={tb} {m}x{n}x{k} batch {batch} pad {pad}");
                    assert_close(&c, &want, tol(k), tol(k), &what);
                }
            }
        }
    }
}

/// Products of 128 rows or more and depth 512 or more copy a transposed B
/// of up to 2^21 floats to rows first: here with padded rows.
#[test]
fn gemm_ex_transposed_b_copied_to_rows() {
    let mut rng = Rng::new(34);
    let (m, n, k, pad) = (130, 300, 4100, 3);
    for ta in [false, true] {
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let la = Layout { rows: ar, cols: ac, ld: ac + pad, stride: 0 };
        let lb = Layout { rows: n, cols: k, ld: k + pad, stride: 0 };
        let lc = Layout { rows: m, cols: n, ld: n + pad, stride: 0 };
        let (a, b, c0) = (rng.vec(la.span(1), 1.0), rng.vec(lb.span(1), 1.0), rng.vec(lc.span(1), 1.0));
        let mut c = c0.clone();
        let code = unsafe {
            cudann_gemm_ex(
                ta as i32, 1, m as i32, n as i32, k as i32, 0.5,
                a.as_ptr().cast(), CUDANN_F32, la.ld as i64, 0,
                b.as_ptr().cast(), CUDANN_F32, lb.ld as i64, 0,
                -2.0, c.as_mut_ptr().cast(), CUDANN_F32, lc.ld as i64, 0,
                1, NULL,
            )
        };
        assert_ok(code);
        let want = gemm_ex_ref(ta, true, m, n, k, 0.5, &a, la, &b, lb, -2.0, &c0, lc, 1);
        assert_close(&c, &want, tol(k), tol(k), &format!("gemm_ex ta={ta} tb=true {m}x{n}x{k}"));
    }
}

/// cudann_gemm_ex with every argument contiguous, for the invalid-argument checks.
unsafe fn gemm_ex_plain(ta: i32, tb: i32, a: *const f32, b: *const f32, c: *mut f32, types: [i32; 3], lds: [i64; 3], strides: [i64; 3], batch: i32) -> i32 {
    unsafe {
        cudann_gemm_ex(
            ta, tb, 4, 4, 4, 1.0, a.cast(), types[0], lds[0], strides[0], b.cast(), types[1], lds[1], strides[1],
            0.0, c.cast(), types[2], lds[2], strides[2], batch, NULL,
        )
    }
}

#[test]
fn gemm_ex_bad_arguments() {
    let (a, b) = (vec![1.0f32; 64], vec![1.0f32; 64]);
    let mut c = poisoned(64);
    let f = CUDANN_F32;
    let (lds, strides) = ([4i64; 3], [16i64; 3]);
    let cp = c.as_mut_ptr();
    unsafe {
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp, [CUDANN_I32, f, f], lds, strides, 1), "cudann_gemm_ex", "a_type must be CUDANN_F32 (0), CUDANN_F16 (1) or CUDANN_BF16 (2) (got 3)");
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp, [f, 9, f], lds, strides, 1), "cudann_gemm_ex", "b_type must be");
        // A half C is 2 bytes an element: misaligned by one byte is refused.
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp.cast::<u8>().add(1).cast(), [f, f, CUDANN_BF16], lds, strides, 1), "cudann_gemm_ex", "C is not aligned to 2 bytes");
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp, [f, f, 9], lds, strides, 1), "cudann_gemm_ex", "c_type must be CUDANN_F32 (0)");
        assert_invalid(gemm_ex_plain(2, 0, a.as_ptr(), b.as_ptr(), cp, [f; 3], lds, strides, 1), "cudann_gemm_ex", "trans_a must be 0 or 1");
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp, [f; 3], [3, 4, 4], strides, 1), "cudann_gemm_ex", "lda must be >= 4");
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp, [f; 3], [4, 4, 0], strides, 1), "cudann_gemm_ex", "ldc must be >= 4");
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp, [f; 3], lds, [16, -1, 16], 1), "cudann_gemm_ex", "stride_b must be >= 0");
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp, [f; 3], lds, [16, 16, 15], 2), "cudann_gemm_ex", "stride_c must be >= (m-1)*ldc + n = 16");
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp, [f; 3], lds, [i64::MAX / 2, 16, 16], 3), "cudann_gemm_ex", "overflows");
        assert_invalid(gemm_ex_plain(0, 0, std::ptr::null(), b.as_ptr(), cp, [f; 3], lds, strides, 1), "cudann_gemm_ex", "A is NULL");
        assert_invalid(gemm_ex_plain(0, 0, a.as_ptr(), b.as_ptr(), cp, [f; 3], lds, strides, -1), "cudann_gemm_ex", "batch must be >= 0");
        // C overlapping A without being exactly A's span.
        let mut shared = vec![1.0f32; 40];
        let code = gemm_ex_plain(0, 0, shared.as_ptr(), b.as_ptr(), shared.as_mut_ptr().add(4), [f; 3], lds, strides, 1);
        assert_invalid(code, "cudann_gemm_ex", "partially overlaps");
    }
    assert_untouched(&c, "C");
}

#[test]
fn gemm_ex_in_place_and_empty() {
    let mut rng = Rng::new(34);
    let n = 5;
    let a = rng.vec(n * n, 1.0);
    let b = rng.vec(n * n, 1.0);
    let mut c = a.clone();
    let f = CUDANN_F32;
    let l = n as i64;
    // C is A's very buffer: computed from A's old values.
    let code = unsafe { cudann_gemm_ex(1, 0, 5, 5, 5, 1.0, c.as_ptr().cast(), f, l, 0, b.as_ptr().cast(), f, l, 0, 1.0, c.as_mut_ptr().cast(), f, l, 0, 1, NULL) };
    assert_ok(code);
    let lay = Layout { rows: n, cols: n, ld: n, stride: 0 };
    let want = gemm_ex_ref(true, false, n, n, n, 1.0, &a, lay, &b, lay, 1.0, &a, lay, 1);
    assert_close(&c, &want, tol(n), tol(n), "in place");
    // An empty product touches nothing; NULL is fine there.
    let null = std::ptr::null();
    assert_ok(unsafe { cudann_gemm_ex(0, 0, 0, 5, 5, 1.0, null, f, 5, 0, null, f, 5, 0, 0.0, std::ptr::null_mut(), f, 5, 0, 3, NULL) });
    assert_ok(unsafe { cudann_gemm_ex(0, 0, 5, 5, 5, 1.0, null, f, 5, 0, null, f, 5, 0, 0.0, std::ptr::null_mut(), f, 5, 0, 0, NULL) });
}

/// The few-row kernels (up to 32 rows of op(A)), A transposed or not: `x·Wᵀ`
/// (trans_b = 1: row and column tails of its 4 x 4 tiles, k tails of its 16
/// lanes, k blocks (more than 4 rows and k > 2048), more than one task of 256
/// rows of W) and `x·B` (trans_b = 0: row tails of its 4 x 64 tiles, lane
/// group and column tails, k tails of its passes over B's rows, more than one
/// band of 1024 columns); padding, alpha and beta (beta = 0 with NaN in C); and
/// the same bits on 1 and 4 threads. 33 rows take the general path.
#[test]
fn gemm_ex_few_rows_every_transpose() {
    let mut rng = Rng::new(35);
    let shapes = [(1, 1, 1), (1, 300, 7), (3, 5, 16), (4, 4, 33), (5, 9, 600), (6, 10, 2100), (17, 257, 70), (32, 6, 1100), (33, 8, 40), (1, 2083, 19), (2, 1125, 37), (5, 1090, 300), (32, 1131, 45), (1, 40, 1100), (1, 300, 83)];
    for (m, n, k) in shapes {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let pad = 3;
            let (ar, ac) = if ta { (k, m) } else { (m, k) };
            let (br, bc) = if tb { (n, k) } else { (k, n) };
            let la = Layout { rows: ar, cols: ac, ld: ac + pad, stride: 0 };
            let lb = Layout { rows: br, cols: bc, ld: bc + pad, stride: 0 };
            let lc = Layout { rows: m, cols: n, ld: n + pad, stride: 0 };
            let (a, b) = (rng.vec(la.span(1), 1.0), rng.vec(lb.span(1), 1.0));
            for (alpha, beta) in [(1.5f32, -0.5f32), (0.75, 0.0)] {
                let c0 = if beta == 0.0 { vec![f32::NAN; lc.span(1)] } else { rng.vec(lc.span(1), 1.0) };
                let run = |threads: usize| {
                    let mut c = c0.clone();
                    let code = with_threads(threads, || unsafe {
                        cudann_gemm_ex(
                            ta as i32, tb as i32, m as i32, n as i32, k as i32, alpha, a.as_ptr().cast(), CUDANN_F32, la.ld as i64, 0,
                            b.as_ptr().cast(), CUDANN_F32, lb.ld as i64, 0, beta, c.as_mut_ptr().cast(), CUDANN_F32, lc.ld as i64, 0, 1, NULL,
                        )
                    });
                    assert_ok(code);
                    c
                };
                let c = run(4);
                // The reference keeps C's row padding (NaN with beta = 0): it must stay.
                let want = gemm_ex_ref(ta, tb, m, n, k, alpha, &a, la, &b, lb, beta, &c0, lc, 1);
                let what = format!("few rows m={m} n={n} k={k} ta={ta} tb={tb} beta={beta}");
                assert_close(&c, &want, tol(k), tol(k), &what);
                let same = run(1).iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "1 and 4 threads differ ({what})");
            }
        }
    }
}

/// `x` rounded to a half type and back (cudann_convert, tested on its own):
/// the half operand's bits and the float32 values they stand for.
fn rounded(x: &[f32], dtype: i32) -> (Vec<u16>, Vec<f32>) {
    let (mut half, mut back) = (vec![0u16; x.len()], vec![0f32; x.len()]);
    unsafe {
        assert_ok(cudann_convert(x.as_ptr().cast(), CUDANN_F32, half.as_mut_ptr().cast(), dtype, x.len() as i64, NULL));
        assert_ok(cudann_convert(half.as_ptr().cast(), dtype, back.as_mut_ptr().cast(), CUDANN_F32, x.len() as i64, NULL));
    }
    (half, back)
}

/// Half-precision A and B (and C): within float32 accumulation error of the
/// float64 product of the rounded inputs; a half C within its own rounding
/// more; the gaps between C's rows untouched.
#[test]
fn gemm_ex_half_operands_match_float64_of_the_rounded_inputs() {
    let mut rng = Rng::new(34);
    // One row (W read in place, whole rows), a row tile of 3, 7 rows (k
    // blocks of 2048, tails past 16 lanes), and 70 and 130 rows of odd depth
    // (bf16 x bf16 there runs the AMX or AVX512-BF16 kernel where the CPU has
    // one: tiles past the edges, a k pair cut short, several tasks).
    for (m, n, k, batch) in [(1, 45, 600, 2), (3, 45, 130, 2), (7, 45, 2100, 2), (70, 45, 131, 2), (130, 70, 1001, 1)] {
        for types in [[CUDANN_F16, CUDANN_F16, CUDANN_F32], [CUDANN_BF16, CUDANN_BF16, CUDANN_F32], [CUDANN_BF16, CUDANN_BF16, CUDANN_BF16], [CUDANN_F16, CUDANN_F16, CUDANN_F16], [CUDANN_F32, CUDANN_BF16, CUDANN_F32]] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let la = Layout { rows: ar, cols: ac, ld: ac + 2, stride: ar * (ac + 2) };
                let lb = Layout { rows: br, cols: bc, ld: bc, stride: 0 };
                let lc = Layout { rows: m, cols: n, ld: n + 3, stride: m * (n + 3) + 1 };
                let a32 = rng.vec(la.span(batch), 1.0);
                let b32 = rng.vec(lb.span(1), 1.0);
                let c32 = rng.vec(lc.span(batch), 1.0);
                // Each operand as the call gets it (bits) and as float32 values.
                let as_type = |x: &[f32], t: i32| if t == CUDANN_F32 { (x.iter().map(|v| v.to_bits() as u64).collect::<Vec<_>>(), x.to_vec()) } else { let (h, v) = rounded(x, t); (h.iter().map(|&b| b as u64).collect(), v) };
                let (a_bits, a) = as_type(&a32, types[0]);
                let (b_bits, b) = as_type(&b32, types[1]);
                let (c_bits, c0) = as_type(&c32, types[2]);
                // Pack the bits at each type's width.
                let pack = |bits: &[u64], t: i32| -> Vec<u8> { bits.iter().flat_map(|&v| if t == CUDANN_F32 { (v as u32).to_le_bytes().to_vec() } else { (v as u16).to_le_bytes().to_vec() }).collect() };
                let (pa, pb, mut pc) = (pack(&a_bits, types[0]), pack(&b_bits, types[1]), pack(&c_bits, types[2]));
                // Aligned storage for the packed bytes.
                let aligned = |bytes: &[u8]| -> Vec<u32> { let mut v = vec![0u32; bytes.len().div_ceil(4)]; unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast(), bytes.len()) }; v };
                let (da, db, mut dc) = (aligned(&pa), aligned(&pb), aligned(&pc));
                // C read (beta != 0) and not read (beta == 0).
                let beta = if ta { 0.0 } else { -1.5 };
                let code = unsafe {
                    cudann_gemm_ex(
                        ta as i32, tb as i32, m as i32, n as i32, k as i32, 0.5,
                        da.as_ptr().cast(), types[0], la.ld as i64, la.stride as i64,
                        db.as_ptr().cast(), types[1], lb.ld as i64, 0,
                        beta, dc.as_mut_ptr().cast(), types[2], lc.ld as i64, lc.stride as i64,
                        batch as i32, NULL,
                    )
                };
                assert_ok(code);
                unsafe { std::ptr::copy_nonoverlapping(dc.as_ptr().cast::<u8>(), pc.as_mut_ptr(), pc.len()) };
                let got: Vec<f32> = if types[2] == CUDANN_F32 {
                    pc.chunks(4).map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()
                } else {
                    let bits: Vec<u16> = pc.chunks(2).map(|w| u16::from_le_bytes([w[0], w[1]])).collect();
                    let mut wide = vec![0f32; bits.len()];
                    assert_ok(unsafe { cudann_convert(bits.as_ptr().cast(), types[2], wide.as_mut_ptr().cast(), CUDANN_F32, bits.len() as i64, NULL) });
                    wide
                };
                let want = gemm_ex_ref(ta, tb, m, n, k, 0.5, &a, la, &b, lb, beta, &c0, lc, batch);
                // float32 accumulation of k products of |a||b| <= ~4, plus the output's own rounding.
                let out_rel = match types[2] { t if t == CUDANN_BF16 => 2f64.powi(-8), t if t == CUDANN_F16 => 2f64.powi(-11), _ => 0.0 };
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * k as f64 + out_rel * w.abs();
                    assert!((g as f64 - w).abs() <= tol, "{types:?} ta={ta} tb={tb} element {i}: {g} vs {w}");
                }
                // Row gaps and the gap between matrices keep C's old values.
                let gaps: Vec<usize> = (0..lc.span(batch)).filter(|&i| (i % lc.stride) % lc.ld >= n || i % lc.stride >= m * lc.ld).collect();
                assert!(!gaps.is_empty());
                for i in gaps {
                    assert_eq!(got[i].to_bits(), c0[i].to_bits(), "{types:?}: gap element {i} was written");
                }
            }
        }
    }
}

/// cudann_gemm_grouped in float64: group `g` covers `offsets[g]..offsets[g+1]`
/// of m (`inner` false: those rows of C_g) or of k (`inner` true: C_g whole,
/// the sum over those indices); C's other elements keep `c`'s values.
#[allow(clippy::too_many_arguments)]
fn grouped_ref(ta: bool, tb: bool, inner: bool, m: usize, n: usize, k: usize, alpha: f32, a: &[f32], la: Layout, b: &[f32], lb: Layout, beta: f32, c: &[f32], lc: Layout, offsets: &[i32]) -> Vec<f64> {
    let mut out = f64s(c);
    for g in 0..offsets.len() - 1 {
        let range = offsets[g] as usize..offsets[g + 1] as usize;
        let (rows, ks) = if inner { (0..m, range) } else { (range, 0..k) };
        product_ref(&mut out, g, rows, ks, (ta, tb), n, alpha, a, la, b, lb, beta, c, lc);
    }
    out
}

/// Grouped products, rows grouped (per-expert weights `stride_b` apart, as an
/// MoE layer's forward and input gradient) and k grouped (per-expert weight
/// gradients `stride_c` apart): every transpose, padded rows, empty groups,
/// rows before the first group and after the last left untouched, beta 0
/// (C not read) and not; same bits on 1 and 4 threads.
#[test]
fn gemm_grouped_matches_float64() {
    let mut rng = Rng::new(36);
    for inner in [false, true] {
        for (m, n, k, offsets) in [(40, 33, 17, vec![0, 40]), (70, 21, 45, vec![3, 3, 20, 21, 50, 50, 66]), (9, 300, 70, vec![0, 0, 4, 9])] {
            let groups = offsets.len() - 1;
            // k grouped: the same cuts, scaled from [0, m] into [0, k].
            let offsets: Vec<i32> = offsets.iter().map(|&o| if inner { o * k / m } else { o } as i32).collect();
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let pad = 2;
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                // The grouped operands are shared (stride 0), the per-group ones strided.
                let per_group = |rows: usize, cols: usize, grouped: bool| Layout { rows, cols, ld: cols + pad, stride: if grouped { rows * (cols + pad) + 1 } else { 0 } };
                let (la, lb, lc) = if inner { (per_group(ar, ac, false), per_group(br, bc, false), per_group(m, n, true)) } else { (per_group(ar, ac, false), per_group(br, bc, true), per_group(m, n, false)) };
                let a = rng.vec(la.span(groups), 1.0);
                let b = rng.vec(lb.span(groups), 1.0);
                for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, -2.0)] {
                    let c0 = rng.vec(lc.span(groups), 1.0);
                    let run = |threads: usize| {
                        let mut c = c0.clone();
                        let code = with_threads(threads, || unsafe {
                            cudann_gemm_grouped(
                                ta as i32, tb as i32, inner as i32, m as i32, n as i32, k as i32, alpha,
                                a.as_ptr().cast(), CUDANN_F32, la.ld as i64, la.stride as i64,
                                b.as_ptr().cast(), CUDANN_F32, lb.ld as i64, lb.stride as i64,
                                beta, c.as_mut_ptr().cast(), CUDANN_F32, lc.ld as i64, lc.stride as i64,
                                offsets.as_ptr(), groups as i32, NULL,
                            )
                        });
                        assert_ok(code);
                        c
                    };
                    let c = run(4);
                    let want = grouped_ref(ta, tb, inner, m, n, k, alpha, &a, la, &b, lb, beta, &c0, lc, &offsets);
                    let what = format!("grouped inner={inner} ta={ta} tb={tb} {m}x{n}x{k} offsets {offsets:?} beta {beta}");
                    assert_close(&c, &want, tol(k), tol(k), &what);
                    let same = run(1).iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "1 and 4 threads differ ({what})");
                }
            }
        }
    }
}

/// Half weights (one half type among A and B, C float32, as decoding with
/// bf16 or f16 experts): the float64 product of the rounded weights.
#[test]
fn gemm_grouped_half_weights() {
    let mut rng = Rng::new(37);
    let (m, n, k, offsets) = (30, 19, 40, [0i32, 7, 7, 30]);
    for dtype in [CUDANN_BF16, CUDANN_F16] {
        let x = rng.vec(m * k, 1.0);
        let (w_bits, w) = rounded(&rng.vec(3 * n * k, 1.0), dtype);
        let mut c = poisoned(m * n);
        let code = unsafe {
            cudann_gemm_grouped(0, 1, 0, m as i32, n as i32, k as i32, 1.0, x.as_ptr().cast(), CUDANN_F32, k as i64, 0,
                w_bits.as_ptr().cast(), dtype, k as i64, (n * k) as i64, 0.0, c.as_mut_ptr().cast(), CUDANN_F32, n as i64, 0, offsets.as_ptr(), 3, NULL)
        };
        assert_ok(code);
        let (la, lb, lc) = (Layout { rows: m, cols: k, ld: k, stride: 0 }, Layout { rows: n, cols: k, ld: k, stride: n * k }, Layout { rows: m, cols: n, ld: n, stride: 0 });
        let want = grouped_ref(false, true, false, m, n, k, 1.0, &x, la, &w, lb, 0.0, &c, lc, &offsets);
        assert_close(&c, &want, tol(k), tol(k), &format!("grouped half weights, type {dtype}"));
    }
}

#[test]
fn gemm_grouped_bad_arguments() {
    let (a, b) = (vec![1.0f32; 64], vec![1.0f32; 64]);
    let mut c = poisoned(64);
    let f = CUDANN_F32;
    let cp = c.as_mut_ptr();
    let call = |inner: i32, a: *const f32, c: *mut f32, stride_c: i64, offsets: &[i32]| unsafe {
        cudann_gemm_grouped(0, 0, inner, 4, 4, 4, 1.0, a.cast(), f, 4, 0, b.as_ptr().cast(), f, 4, 16, 0.0, c.cast(), f, 4, stride_c, offsets.as_ptr(), offsets.len() as i32 - 1, NULL)
    };
    let name = "cudann_gemm_grouped";
    assert_invalid(call(0, a.as_ptr(), cp, 0, &[0, 3, 2]), name, "offsets[2] = 2 is less than offsets[1] = 3 (offsets may not decrease)");
    assert_invalid(call(0, a.as_ptr(), cp, 0, &[0, 2, 5]), name, "offsets[2] = 5 is outside [0, m = 4]");
    assert_invalid(call(1, a.as_ptr(), cp, 16, &[-1, 2, 4]), name, "offsets[0] = -1 is outside [0, k = 4]");
    assert_invalid(call(2, a.as_ptr(), cp, 0, &[0, 4]), name, "group_inner must be 0 or 1");
    assert_invalid(call(1, a.as_ptr(), cp, 8, &[0, 2, 4]), name, "stride_c must be >= (m-1)*ldc + n = 16 (the groups' C may not overlap) (got 8)");
    assert_invalid(call(0, a.as_ptr(), cp, 8, &[0, 2, 4]), name, "stride_c must be >= (m-1)*ldc + n = 16 (the groups' C may not overlap), or 0 (got 8)");
    assert_invalid(unsafe { cudann_gemm_grouped(0, 0, 0, 4, 4, 4, 1.0, a.as_ptr().cast(), f, 4, 0, b.as_ptr().cast(), f, 4, 0, 0.0, cp.cast(), f, 4, 0, std::ptr::null(), 1, NULL) }, name, "offsets is NULL");
    assert_untouched(&c, "C");
    // C may not be A (each group would read rows another has overwritten).
    let mut shared = vec![1.0f32; 16];
    let sp = shared.as_mut_ptr();
    assert_invalid(call(0, sp, sp, 0, &[0, 2, 4]), name, "C may not be A or B in a grouped product");
    assert!(shared.iter().all(|&v| v == 1.0), "A/C untouched");
    // No groups: nothing to do, nothing read.
    assert_ok(unsafe { cudann_gemm_grouped(0, 0, 0, 4, 4, 4, 1.0, a.as_ptr().cast(), f, 4, 0, b.as_ptr().cast(), f, 4, 0, 0.0, cp.cast(), f, 4, 0, std::ptr::null(), 0, NULL) });
    assert_untouched(&c, "C");
}
