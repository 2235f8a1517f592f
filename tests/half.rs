//! The `_ex` ops in float16 and bfloat16: each result must be exactly the
//! float32 op on the widened inputs, rounded once to the type (the float32 ops
//! are checked against float64 in their own files, and the conversions in
//! tests/convert.rs); samplers must pick the very tokens the float32 sampler
//! picks from the widened logits. In place, bad types and the float32 path too.
mod common;
use std::ffi::c_void;

use common::*;
use cudann::*;

const HALVES: [i32; 2] = [CUDANN_F16, CUDANN_BF16];

/// `x` rounded to `t`: (the half bits, their float32 values).
fn to_half(x: &[f32], t: i32) -> (Vec<u16>, Vec<f32>) {
    let (mut h, mut w) = (vec![0u16; x.len()], vec![0f32; x.len()]);
    unsafe {
        assert_ok(cudann_convert(x.as_ptr().cast(), CUDANN_F32, h.as_mut_ptr().cast(), t, x.len() as i64, NULL));
        assert_ok(cudann_convert(h.as_ptr().cast(), t, w.as_mut_ptr().cast(), CUDANN_F32, x.len() as i64, NULL));
    }
    (h, w)
}

/// Float32 results rounded to `t`.
fn rounded(y: &[f32], t: i32) -> Vec<u16> {
    to_half(y, t).0
}

fn vp<T>(x: &[T]) -> *const c_void {
    x.as_ptr().cast()
}

fn vm<T>(x: &mut [T]) -> *mut c_void {
    x.as_mut_ptr().cast()
}

#[test]
fn elementwise_ex_is_the_float32_op_rounded_once() {
    let mut rng = Rng::new(61);
    for t in HALVES {
        for n in [1usize, 33, 16_385, 100_003] {
            let (ha, a) = to_half(&rng.vec(n, 3.0), t);
            let (hb, b) = to_half(&rng.vec(n, 3.0), t);
            let (mut want, mut got) = (vec![0f32; n], vec![0u16; n]);
            let ni = n as i64;
            unsafe {
                assert_ok(cuda_add(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
                assert_ok(cudann_add_ex(vp(&ha), vp(&hb), vm(&mut got), ni, t, NULL));
                assert_eq!(got, rounded(&want, t), "add type {t} n {n}");
                assert_ok(cuda_mul(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
                assert_ok(cudann_mul_ex(vp(&ha), vp(&hb), vm(&mut got), ni, t, NULL));
                assert_eq!(got, rounded(&want, t), "mul type {t} n {n}");
                assert_ok(cuda_scale(a.as_ptr(), want.as_mut_ptr(), -0.3, ni, NULL));
                assert_ok(cudann_scale_ex(vp(&ha), vm(&mut got), -0.3, ni, t, NULL));
                assert_eq!(got, rounded(&want, t), "scale type {t} n {n}");
                // In place: the output is the input.
                let mut inplace = ha.clone();
                assert_ok(cudann_add_ex(vp(&inplace), vp(&hb), vm(&mut inplace), ni, t, NULL));
                assert_ok(cuda_add(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
                assert_eq!(inplace, rounded(&want, t), "add in place type {t} n {n}");
            }
        }
    }
}

#[test]
fn row_ops_ex_are_the_float32_op_rounded_once() {
    let mut rng = Rng::new(62);
    for t in HALVES {
        for (rows, cols) in [(1, 1), (3, 31), (7, 1000), (2, 40_000), (600, 7)] {
            let n = rows * cols;
            let (hx, x) = to_half(&rng.vec(n, 3.0), t);
            let (hw, w) = to_half(&rng.vec(cols, 1.0), t);
            let (mut want, mut got) = (vec![0f32; n], vec![0u16; n]);
            let (r, c) = (rows as i32, cols as i32);
            unsafe {
                assert_ok(cuda_softmax(x.as_ptr(), want.as_mut_ptr(), r, c, NULL));
                assert_ok(cudann_softmax_ex(vp(&hx), vm(&mut got), r, c, t, NULL));
                assert_eq!(got, rounded(&want, t), "softmax type {t} {rows}x{cols}");
                assert_ok(cuda_rmsnorm(x.as_ptr(), w.as_ptr(), want.as_mut_ptr(), r, c, 1e-5, NULL));
                assert_ok(cudann_rmsnorm_ex(vp(&hx), vp(&hw), vm(&mut got), r, c, 1e-5, t, NULL));
                assert_eq!(got, rounded(&want, t), "rmsnorm type {t} {rows}x{cols}");
                let mut inplace = hx.clone();
                assert_ok(cudann_rmsnorm_ex(vp(&inplace), vp(&hw), vm(&mut inplace), r, c, 1e-5, t, NULL));
                assert_eq!(inplace, rounded(&want, t), "rmsnorm in place type {t} {rows}x{cols}");
            }
        }
    }
}

#[test]
fn samplers_ex_pick_the_float32_samplers_tokens() {
    let mut rng = Rng::new(63);
    let (batch, vocab) = (9, 5003);
    for t in HALVES {
        let (hx, x) = to_half(&rng.vec(batch * vocab, 4.0), t);
        let seeds: Vec<u64> = (0..batch as u64).map(|i| i * 7919 + 3).collect();
        let (mut want, mut got) = (vec![-1i32; batch], vec![-1i32; batch]);
        let (b, v) = (batch as i32, vocab as i32);
        unsafe {
            assert_ok(cuda_argmax(x.as_ptr(), want.as_mut_ptr(), b, v, NULL));
            assert_ok(cudann_argmax_ex(vp(&hx), got.as_mut_ptr(), b, v, t, NULL));
            assert_eq!(got, want, "argmax type {t}");
            assert_ok(cuda_sample(x.as_ptr(), want.as_mut_ptr(), seeds.as_ptr(), b, v, 0.8, NULL));
            assert_ok(cudann_sample_ex(vp(&hx), got.as_mut_ptr(), seeds.as_ptr(), b, v, 0.8, t, NULL));
            assert_eq!(got, want, "sample type {t}");
            assert_ok(cuda_topk_sample(x.as_ptr(), want.as_mut_ptr(), seeds.as_ptr(), b, v, 40, 1.1, NULL));
            assert_ok(cudann_topk_sample_ex(vp(&hx), got.as_mut_ptr(), seeds.as_ptr(), b, v, 40, 1.1, t, NULL));
            assert_eq!(got, want, "top-k type {t}");
            assert_ok(cuda_topp_sample(x.as_ptr(), want.as_mut_ptr(), seeds.as_ptr(), b, v, 0.9, 0.7, NULL));
            assert_ok(cudann_topp_sample_ex(vp(&hx), got.as_mut_ptr(), seeds.as_ptr(), b, v, 0.9, 0.7, t, NULL));
            assert_eq!(got, want, "top-p type {t}");
        }
    }
}

#[test]
fn the_float32_type_is_the_plain_op() {
    let mut rng = Rng::new(64);
    let x = rng.vec(4 * 300, 2.0);
    let w = rng.vec(300, 1.0);
    let (mut want, mut got) = (vec![0f32; x.len()], poisoned(x.len()));
    unsafe {
        assert_ok(cuda_rmsnorm(x.as_ptr(), w.as_ptr(), want.as_mut_ptr(), 4, 300, 1e-6, NULL));
        assert_ok(cudann_rmsnorm_ex(vp(&x), vp(&w), vm(&mut got), 4, 300, 1e-6, CUDANN_F32, NULL));
        assert_eq!(got, want);
        assert_ok(cuda_softmax(x.as_ptr(), want.as_mut_ptr(), 4, 300, NULL));
        assert_ok(cudann_softmax_ex(vp(&x), vm(&mut got), 4, 300, CUDANN_F32, NULL));
        assert_eq!(got, want);
    }
}

#[test]
fn bad_arguments_are_refused_and_nothing_is_written() {
    let x = vec![0x3c00u16; 64];
    let mut y = vec![0x5555u16; 64];
    let mut tokens = vec![-7i32; 2];
    unsafe {
        assert_invalid(cudann_add_ex(vp(&x), vp(&x), vm(&mut y), 64, 5, NULL), "cudann_add_ex", "dtype must be CUDANN_F32 (0), CUDANN_F16 (1) or CUDANN_BF16 (2) (got 5)");
        assert_invalid(cudann_softmax_ex(vp(&x), vm(&mut y), 2, 32, CUDANN_I32, NULL), "cudann_softmax_ex", "dtype must be");
        assert_invalid(cudann_rmsnorm_ex(vp(&x), vp(&x), vm(&mut y), 2, 32, -1.0, CUDANN_BF16, NULL), "cudann_rmsnorm_ex", "eps must be finite and >= 0");
        assert_invalid(cudann_scale_ex(vp(&x), vm(&mut y), 2.0, -1, CUDANN_F16, NULL), "cudann_scale_ex", "n must be >= 0");
        assert_invalid(cudann_add_ex(vp(&x), vp(&x), x.as_ptr().cast::<u8>().add(1).cast_mut().cast(), 8, CUDANN_F16, NULL), "cudann_add_ex", "output is not aligned to 2 bytes");
        let overlap = y.as_mut_ptr();
        assert_invalid(cudann_add_ex(overlap.add(1).cast(), vp(&x), overlap.cast(), 32, CUDANN_BF16, NULL), "cudann_add_ex", "partially overlaps");
        assert_invalid(cudann_topk_sample_ex(vp(&x), tokens.as_mut_ptr(), [1u64, 2].as_ptr(), 2, 32, 0, 1.0, CUDANN_BF16, NULL), "cudann_topk_sample_ex", "k must be >= 1");
        assert_invalid(cudann_sample_ex(vp(&x), tokens.as_mut_ptr(), [1u64, 2].as_ptr(), 2, 32, -1.0, CUDANN_F16, NULL), "cudann_sample_ex", "temperature must be >= 0");
        assert_invalid(cudann_argmax_ex(vp(&x), tokens.as_mut_ptr(), 2, 32, 3, NULL), "cudann_argmax_ex", "dtype must be");
    }
    assert!(y.iter().all(|&v| v == 0x5555), "outputs after refused calls");
    assert_eq!(tokens, [-7, -7]);
}
