//! silu, add, mul, scale against float64.
mod common;
use common::*;
use cudann::*;

fn silu_ref(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[test]
fn silu_matches_float64_within_a_few_ulp() {
    let mut rng = Rng::new(1);
    for n in SIZES {
        let mut x = rng.vec(n, 6.0);
        x[0] = [-120.0, -90.0, 0.0, 100.0, -0.0, 1e-30][n % 6];
        let mut y = poisoned(n);
        assert_ok(unsafe { cuda_silu(x.as_ptr(), y.as_mut_ptr(), n as i64, NULL) });
        let want: Vec<f64> = x.iter().map(|&v| silu_ref(v as f64)).collect();
        assert_close(&y, &want, 4.0 * f32::EPSILON as f64, 1e-44, "silu");
    }
}

#[test]
fn add_mul_scale_are_exact_float32_ops() {
    let mut rng = Rng::new(2);
    for n in SIZES {
        let (a, b) = (rng.vec(n, 3.0), rng.vec(n, 3.0));
        let mut y = poisoned(n);
        assert_ok(unsafe { cuda_add(a.as_ptr(), b.as_ptr(), y.as_mut_ptr(), n as i64, NULL) });
        assert_close(&y, &a.iter().zip(&b).map(|(&a, &b)| (a as f64 + b as f64) as f32 as f64).collect::<Vec<_>>(), 0.0, 0.0, "add");
        assert_ok(unsafe { cuda_mul(a.as_ptr(), b.as_ptr(), y.as_mut_ptr(), n as i64, NULL) });
        assert_close(&y, &a.iter().zip(&b).map(|(&a, &b)| (a as f64 * b as f64) as f32 as f64).collect::<Vec<_>>(), 0.0, 0.0, "mul");
        assert_ok(unsafe { cuda_scale(a.as_ptr(), y.as_mut_ptr(), -1.5, n as i64, NULL) });
        assert_close(&y, &a.iter().map(|&a| (a as f64 * -1.5) as f32 as f64).collect::<Vec<_>>(), 0.0, 0.0, "scale");
    }
}

#[test]
fn in_place_calls_match_out_of_place() {
    let mut rng = Rng::new(3);
    let n = 40_000; // several parallel blocks
    let (a, b) = (rng.vec(n, 2.0), rng.vec(n, 2.0));
    let mut want = vec![0.0f32; n];

    let mut x = a.clone();
    unsafe {
        cuda_silu(a.as_ptr(), want.as_mut_ptr(), n as i64, NULL);
        assert_ok(cuda_silu(x.as_ptr(), x.as_mut_ptr(), n as i64, NULL));
    }
    assert_eq!(x, want, "silu in place");

    unsafe { cuda_add(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), n as i64, NULL) };
    let (mut x, mut y) = (a.clone(), b.clone());
    unsafe {
        assert_ok(cuda_add(x.as_ptr(), b.as_ptr(), x.as_mut_ptr(), n as i64, NULL));
        assert_ok(cuda_add(a.as_ptr(), y.as_ptr(), y.as_mut_ptr(), n as i64, NULL));
    }
    assert_eq!(x, want, "add into a");
    assert_eq!(y, want, "add into b");

    let mut x = a.clone();
    unsafe { assert_ok(cuda_mul(x.as_ptr(), x.as_ptr(), x.as_mut_ptr(), n as i64, NULL)) };
    assert_eq!(x, a.iter().map(|v| v * v).collect::<Vec<_>>(), "mul with a == b == output");

    let mut x = a.clone();
    unsafe { assert_ok(cuda_scale(x.as_ptr(), x.as_mut_ptr(), 0.5, n as i64, NULL)) };
    assert_eq!(x, a.iter().map(|v| v * 0.5).collect::<Vec<_>>(), "scale in place");
}

#[test]
fn size_zero_is_a_no_op_even_with_null() {
    let null = std::ptr::null_mut::<f32>();
    unsafe {
        assert_ok(cuda_silu(null, null, 0, NULL));
        assert_ok(cuda_add(null, null, null, 0, NULL));
        assert_ok(cuda_mul(null, null, null, 0, NULL));
        assert_ok(cuda_scale(null, null, 2.0, 0, NULL));
    }
}

#[test]
fn bad_arguments_are_rejected_and_outputs_untouched() {
    let x = vec![1.0f32; 64];
    let mut y = poisoned(64);
    let null = std::ptr::null::<f32>();
    unsafe {
        assert_invalid(cuda_silu(null, y.as_mut_ptr(), 64, NULL), "cuda_silu", "input is NULL");
        assert_invalid(cuda_silu(x.as_ptr(), y.as_mut_ptr(), -1, NULL), "cuda_silu", "n must be >= 0 (got -1)");
        assert_invalid(cuda_add(x.as_ptr(), null, y.as_mut_ptr(), 64, NULL), "cuda_add", "b is NULL");
        assert_invalid(cuda_mul(x.as_ptr(), x.as_ptr(), std::ptr::null_mut(), 64, NULL), "cuda_mul", "output is NULL");
        assert_invalid(cuda_scale(x.as_ptr(), y.as_mut_ptr(), 1.0, i64::MIN, NULL), "cuda_scale", "n must be >= 0");
        assert_untouched(&y, "output");
        // Partial overlap: output starts one element into the input.
        let mut buf = poisoned(65);
        let p = buf.as_mut_ptr();
        assert_invalid(cuda_silu(p, p.add(1), 64, NULL), "cuda_silu", "output partially overlaps input");
        assert_invalid(cuda_add(p.add(1), x.as_ptr(), p, 64, NULL), "cuda_add", "output partially overlaps a");
        assert_untouched(&buf, "overlapping buffer");
        // A misaligned float pointer is refused rather than read.
        let misaligned = (y.as_mut_ptr() as *mut u8).add(1) as *mut f32;
        assert_invalid(cuda_silu(x.as_ptr(), misaligned, 4, NULL), "cuda_silu", "output is not aligned");
        assert_untouched(&y, "output");
    }
}

#[test]
fn silu_keeps_precision_in_the_deep_negative_tail() {
    // silu(x) ~ x e^x is normal down to x ~ -87 but e^x alone is subnormal there.
    let x: Vec<f32> = (0..2000).map(|i| -80.0 - i as f32 * 0.0121).collect();
    let mut y = poisoned(x.len());
    assert_ok(unsafe { cuda_silu(x.as_ptr(), y.as_mut_ptr(), x.len() as i64, NULL) });
    for (&x, &y) in x.iter().zip(&y) {
        let want = silu_ref(x as f64);
        let ulp = if want.abs() < f32::MIN_POSITIVE as f64 { 1.4e-45 } else { (want.abs() as f32).next_up() as f64 - want.abs() as f32 as f64 };
        assert!((y as f64 - want).abs() <= 4.0 * ulp, "silu({x}) = {y}, want {want}");
    }
}

#[test]
fn silu_at_infinities_and_nan() {
    let x = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN, -250.0];
    let mut y = poisoned(4);
    assert_ok(unsafe { cuda_silu(x.as_ptr(), y.as_mut_ptr(), 4, NULL) });
    assert_eq!((y[0], y[0].is_sign_negative()), (0.0, true), "silu(-inf) is -0, the limit");
    assert_eq!(y[1], f32::INFINITY);
    assert!(y[2].is_nan());
    assert_eq!(y[3], 0.0);
}
