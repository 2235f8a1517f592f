//! The limits of the contract: sizes past what memory can address, empty sides
//! of two-tensor calls, and reductions over rows far longer than a SIMD block.
//! Each test here reproduces a break once found by fuzzing (see "Limits" in docs/ABI.md).
mod common;
use common::*;
use cudann::*;

/// Flat counts whose size in bytes overflows: each call must refuse them with
/// -2 and leave its (small, poisoned) buffers untouched, not crash.
#[test]
fn flat_counts_past_addressable_memory_are_invalid() {
    for n in [1i64 << 62, 1 << 61, (1 << 60) + 1, i64::MAX] {
        let x = poisoned(64);
        let mut y = poisoned(64);
        let mut z = poisoned(64);
        let mut w = poisoned(64);
        let mut norm = poisoned(1);
        unsafe {
            assert_invalid(cuda_zero_grad(y.as_mut_ptr(), n, NULL), "cuda_zero_grad", "overflows");
            assert_invalid(cuda_silu(x.as_ptr(), y.as_mut_ptr(), n, NULL), "cuda_silu", "overflows");
            assert_invalid(cuda_add(x.as_ptr(), x.as_ptr(), y.as_mut_ptr(), n, NULL), "cuda_add", "overflows");
            assert_invalid(cuda_mul(x.as_ptr(), x.as_ptr(), y.as_mut_ptr(), n, NULL), "cuda_mul", "overflows");
            assert_invalid(cuda_scale(x.as_ptr(), y.as_mut_ptr(), 2.0, n, NULL), "cuda_scale", "overflows");
            let code = cuda_adamw_step(y.as_mut_ptr(), x.as_ptr(), z.as_mut_ptr(), w.as_mut_ptr(), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, n, NULL);
            assert_invalid(code, "cuda_adamw_step", "overflows");
            let code = cuda_grad_clip(y.as_mut_ptr(), z.as_mut_ptr(), norm.as_mut_ptr(), 1.0, n, NULL);
            assert_invalid(code, "cuda_grad_clip", "overflows");
        }
        for (buf, name) in [(&x, "x"), (&y, "y"), (&z, "z"), (&w, "w"), (&norm, "norm")] {
            assert_untouched(buf, name);
        }
    }
}

/// A zero dimension is an empty tensor even when the others multiply past
/// what a usize holds (here batch x seq x heads = 2^90 with head_dim 0).
#[test]
fn a_zero_dimension_is_a_no_op_whatever_the_others() {
    let big = 1 << 30;
    let (r, w) = (std::ptr::null(), std::ptr::null_mut());
    unsafe {
        assert_ok(cuda_flash_attention(r, r, r, w, big, big, big, 0, 1.0, 1, NULL));
        assert_ok(cuda_mqa_attention(r, r, r, w, r, big, big, big, 0, 1.0, NULL));
    }
}

/// rope_qk with no heads on one side rotates the other side, returns 0, and
/// never reads or writes the empty side's (NULL) pointers.
#[test]
fn rope_qk_with_one_side_empty_rotates_the_other() {
    let (batch, seq, heads, d, offset) = (2, 5, 3, 8, 2);
    let mut f = poisoned((seq + offset) * d / 2);
    let x = Rng::new(90).vec(batch * seq * heads * d, 1.0);
    let mut want = poisoned(x.len());
    let null = std::ptr::null_mut();
    unsafe {
        assert_ok(cuda_rope_freqs(f.as_mut_ptr(), (seq + offset) as i32, d as i32, 10000.0, 1.0, NULL));
        let (b, s, h, dd, o) = (batch as i32, seq as i32, heads as i32, d as i32, offset as i32);
        assert_ok(cuda_rope_forward(x.as_ptr(), f.as_ptr(), want.as_mut_ptr(), b, s, h, dd, o, NULL));
        let mut q_out = poisoned(x.len());
        assert_ok(cuda_rope_qk(x.as_ptr(), null, f.as_ptr(), q_out.as_mut_ptr(), null, b, s, h, 0, dd, o, NULL));
        assert_eq!(q_out, want, "q side with n_kv_heads = 0");
        let mut k_out = poisoned(x.len());
        assert_ok(cuda_rope_qk(null, x.as_ptr(), f.as_ptr(), null, k_out.as_mut_ptr(), b, s, 0, h, dd, o, NULL));
        assert_eq!(k_out, want, "k side with n_q_heads = 0");
    }
}

/// Relative error of `got` against the float64 `want`, as the largest
/// |got - want| over the largest |want|.
fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    got.iter().zip(want).fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs())) / scale
}

/// One long row: softmax sums 2^24 terms, each about 2^-24 of the total. A
/// float32 running sum lost 1.5e-3 here; the ABI promises 1e-5.
#[test]
fn softmax_of_a_long_row_keeps_float32_accuracy() {
    let cols = 1 << 24;
    let x = Rng::new(91).vec(cols, 1.0);
    let mut y = vec![0.0f32; cols];
    assert_ok(unsafe { cuda_softmax(x.as_ptr(), y.as_mut_ptr(), 1, cols as i32, NULL) });
    let err = relative_error(&y, &softmax_ref(&f64s(&x)));
    assert!(err < 1e-5, "softmax relative error {err} at {cols} columns");
    let total: f64 = y.iter().map(|&v| v as f64).sum();
    assert!((total - 1.0).abs() < 1e-5, "row sums to {total}");
}

/// The other row reductions over a row of 2^22: log-softmax (cross-entropy),
/// RMSNorm and the grad-clip norm.
#[test]
fn row_reductions_of_long_rows_keep_float32_accuracy() {
    let cols = 1 << 22;
    let x = Rng::new(92).vec(cols, 2.0);
    let xd = f64s(&x);
    let m = xd.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + xd.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    let target = [7i32];
    let (mut loss, mut log_probs) = (poisoned(1), poisoned(cols));
    assert_ok(unsafe { cuda_cross_entropy_forward(x.as_ptr(), target.as_ptr(), loss.as_mut_ptr(), log_probs.as_mut_ptr(), 1, cols as i32, NULL) });
    assert!(((loss[0] as f64) - (lse - xd[7])).abs() <= 1e-5 * (lse - xd[7]).abs(), "loss {} want {}", loss[0], lse - xd[7]);
    let want: Vec<f64> = xd.iter().map(|v| v - lse).collect();
    assert_close(&log_probs, &want, 1e-5, 1e-5, "log_probs");

    let weight = vec![1.0f32; cols];
    let mut y = poisoned(cols);
    assert_ok(unsafe { cuda_rmsnorm(x.as_ptr(), weight.as_ptr(), y.as_mut_ptr(), 1, cols as i32, 0.0, NULL) });
    let r = (xd.iter().map(|v| v * v).sum::<f64>() / cols as f64).sqrt();
    assert!(relative_error(&y, &xd.iter().map(|v| v / r).collect::<Vec<_>>()) < 1e-5, "rmsnorm");

    let mut g = x.clone();
    let (mut partial, mut norm) = (poisoned(cols.div_ceil(256)), poisoned(1));
    assert_ok(unsafe { cuda_grad_clip(g.as_mut_ptr(), partial.as_mut_ptr(), norm.as_mut_ptr(), f32::MAX, cols as i64, NULL) });
    let want = xd.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(((norm[0] as f64) - want).abs() <= 1e-5 * want, "norm {} want {want}", norm[0]);
}

/// Tensors of more than 2^31 elements (8 GiB each, in place): run by
/// `make limits`, not by `make test`, for the memory it needs.
#[test]
#[ignore = "needs 9 GiB of memory: make limits"]
fn more_than_two_to_the_31_elements() {
    let n = (1usize << 31) + 5;
    let value = |i: usize| ((i % 1013) as f32 - 506.0) * 0.01;
    let mut x: Vec<f32> = (0..n).map(value).collect();
    assert_ok(unsafe { cuda_silu(x.as_ptr(), x.as_mut_ptr(), n as i64, NULL) });
    for i in [0, 1 << 20, (1 << 31) - 1, 1 << 31, n - 1] {
        let v = value(i) as f64;
        let want = v / (1.0 + (-v).exp());
        assert!((x[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1e-30), "silu[{i}] = {} want {want}", x[i]);
    }
    drop(x);
    let (rows, cols) = (65_537usize, 32_769usize);
    let mut x: Vec<f32> = (0..rows * cols).map(value).collect();
    assert_ok(unsafe { cuda_softmax(x.as_ptr(), x.as_mut_ptr(), rows as i32, cols as i32, NULL) });
    for row in [0, rows / 2, rows - 1] {
        let logits: Vec<f32> = (row * cols..(row + 1) * cols).map(value).collect();
        let want = softmax_ref(&f64s(&logits));
        assert_close(&x[row * cols..(row + 1) * cols], &want, 1e-5, 1e-12, &format!("softmax row {row}"));
    }
}
