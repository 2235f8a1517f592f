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

/// 0.5 x (1 + tanh u), written as x / (1 + e^(-2u)) (the same function) so
/// that float64 keeps the tiny values of the negative tail.
fn gelu_ref(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
    x / (1.0 + (-2.0 * u).exp())
}

/// f'(x) by a central difference in float64.
fn derivative(f: fn(f64) -> f64, x: f64) -> f64 {
    numeric_grad(&[x], |v| f(v[0]))[0]
}

/// Inputs with the awkward values of an activation's backward: 0, large
/// magnitudes, infinities.
fn activation_inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x = rng.vec(n, 4.0);
    let specials = [0.0, -0.0, 30.0, -30.0, 150.0, -150.0, f32::INFINITY, f32::NEG_INFINITY];
    for (v, s) in x.iter_mut().zip(specials) {
        *v = s;
    }
    x
}

/// d_input of an activation backward against dy * f'(x) from central
/// differences of the float64 forward (its limit 0 or 1 at ±inf).
fn check_activation_backward(name: &str, f: fn(f64) -> f64, backward: unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64, *mut std::ffi::c_void) -> i32) {
    let mut rng = Rng::new(4);
    for n in SIZES {
        let x = activation_inputs(&mut rng, n);
        let dy = rng.vec(n, 1.0);
        let mut dx = poisoned(n);
        assert_ok(unsafe { backward(dy.as_ptr(), x.as_ptr(), dx.as_mut_ptr(), n as i64, NULL) });
        let want: Vec<f64> = x
            .iter()
            .zip(&dy)
            .map(|(&x, &dy)| {
                let slope = if x.is_infinite() { if x > 0.0 { 1.0 } else { 0.0 } } else { derivative(f, x as f64) };
                dy as f64 * slope
            })
            .collect();
        assert_close(&dx, &want, 1e-5, 1e-6, name);
        // In place on either input gives the same values.
        for alias in [0, 1] {
            let (mut dy2, mut x2) = (dy.clone(), x.clone());
            let out = if alias == 0 { dy2.as_mut_ptr() } else { x2.as_mut_ptr() };
            assert_ok(unsafe { backward(dy2.as_ptr(), x2.as_ptr(), out, n as i64, NULL) });
            assert_eq!(if alias == 0 { &dy2 } else { &x2 }, &dx, "{name} in place");
        }
    }
}

#[test]
fn silu_and_gelu_backward_match_finite_differences() {
    check_activation_backward("silu_backward", silu_ref, cudann_silu_backward);
    check_activation_backward("gelu_backward", gelu_ref, cudann_gelu_backward);
}

/// GELU within a few ulp times its condition number |x g'(x) / g(x)|: deep
/// in the negative tail (values below 1e-20) an ulp of x moves the result by
/// up to ~70 ulp, in any float32 implementation.
#[test]
fn gelu_matches_float64() {
    let mut rng = Rng::new(5);
    for n in SIZES {
        let x = activation_inputs(&mut rng, n);
        let mut y = poisoned(n);
        assert_ok(unsafe { cudann_gelu(x.as_ptr(), y.as_mut_ptr(), n as i64, NULL) });
        for (i, (&x, &y)) in x.iter().zip(&y).enumerate() {
            let (xd, yd) = (x as f64, y as f64);
            if x.is_infinite() {
                assert_eq!(yd, if x > 0.0 { xd } else { -0.0 }, "gelu({x})");
                continue;
            }
            let want = gelu_ref(xd);
            let condition = if want == 0.0 { 1.0 } else { (xd * derivative(gelu_ref, xd) / want).abs() };
            let tol = 4.0 * f32::EPSILON as f64 * (1.0 + condition) * want.abs() + 1e-44;
            assert!((yd - want).abs() <= tol, "gelu[{i}]({x}) = {y}, want {want}");
        }
    }
}

#[test]
fn swiglu_and_its_backward_match_float64_and_finite_differences() {
    let mut rng = Rng::new(6);
    for n in SIZES {
        let (g, u, dy) = (rng.vec(n, 3.0), rng.vec(n, 2.0), rng.vec(n, 1.0));
        let mut y = poisoned(n);
        assert_ok(unsafe { cudann_swiglu(g.as_ptr().cast(), u.as_ptr().cast(), y.as_mut_ptr().cast(), n as i64, CUDANN_F32, NULL) });
        let want: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| silu_ref(g as f64) * u as f64).collect();
        assert_close(&y, &want, 8.0 * f32::EPSILON as f64, 1e-30, "swiglu");

        let (mut dg, mut du) = (poisoned(n), poisoned(n));
        assert_ok(unsafe { cudann_swiglu_backward(dy.as_ptr(), g.as_ptr(), u.as_ptr(), dg.as_mut_ptr(), du.as_mut_ptr(), n as i64, NULL) });
        // Per element: ∂(dy silu(g) u)/∂g and /∂u by central differences.
        let want_dg: Vec<f64> = (0..n).map(|i| dy[i] as f64 * u[i] as f64 * derivative(silu_ref, g[i] as f64)).collect();
        let want_du: Vec<f64> = (0..n).map(|i| dy[i] as f64 * silu_ref(g[i] as f64)).collect();
        assert_close(&dg, &want_dg, 1e-5, 1e-6, "swiglu d_gate");
        assert_close(&du, &want_du, 1e-5, 1e-6, "swiglu d_up");
        // In place: gradients over their inputs.
        let (mut g2, mut u2) = (g.clone(), u.clone());
        assert_ok(unsafe { cudann_swiglu_backward(dy.as_ptr(), g2.as_ptr(), u2.as_ptr(), g2.as_mut_ptr(), u2.as_mut_ptr(), n as i64, NULL) });
        assert_eq!((g2, u2), (dg, du), "swiglu_backward in place");
    }
}

#[test]
fn bias_add_and_backward_match_float64() {
    let mut rng = Rng::new(7);
    for (rows, cols) in [(1, 1), (3, 31), (70, 33), (1000, 17), (2, 40_000)] {
        let (x, b, dy) = (rng.vec(rows * cols, 1.0), rng.vec(cols, 1.0), rng.vec(rows * cols, 1.0));
        let mut y = poisoned(rows * cols);
        assert_ok(unsafe { cudann_bias_add(x.as_ptr(), b.as_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, NULL) });
        let want: Vec<f64> = (0..rows * cols).map(|i| x[i] as f64 + b[i % cols] as f64).collect();
        assert_close(&y, &want, f32::EPSILON as f64, 0.0, "bias_add");
        let mut db = poisoned(cols);
        assert_ok(unsafe { cudann_bias_backward(dy.as_ptr(), db.as_mut_ptr(), rows as i32, cols as i32, NULL) });
        let want: Vec<f64> = (0..cols).map(|c| (0..rows).map(|r| dy[r * cols + c] as f64).sum()).collect();
        assert_close(&db, &want, 1e-5, 1e-5, "bias_backward");
        // Thread count never changes the bits.
        let mut db1 = poisoned(cols);
        with_threads(1, || assert_ok(unsafe { cudann_bias_backward(dy.as_ptr(), db1.as_mut_ptr(), rows as i32, cols as i32, NULL) }));
        assert_eq!(db1, db, "bias_backward on one thread");
    }
}

#[test]
fn new_elementwise_ops_bad_arguments() {
    let x = vec![1.0f32; 8];
    let mut y = poisoned(8);
    let mut z = poisoned(8);
    unsafe {
        assert_invalid(cudann_silu_backward(x.as_ptr(), std::ptr::null(), y.as_mut_ptr(), 8, NULL), "cudann_silu_backward", "input is NULL");
        assert_invalid(cudann_gelu(x.as_ptr(), y.as_mut_ptr(), -1, NULL), "cudann_gelu", "n must be >= 0");
        assert_invalid(cudann_gelu_backward(y.as_ptr().add(1), x.as_ptr(), y.as_mut_ptr(), 4, NULL), "cudann_gelu_backward", "partially overlaps d_output");
        assert_invalid(cudann_swiglu(x.as_ptr().cast(), x.as_ptr().cast(), y.as_mut_ptr().cast(), 8, -1, NULL), "cudann_swiglu", "dtype must be CUDANN_F32");
        let code = cudann_swiglu_backward(x.as_ptr(), x.as_ptr(), x.as_ptr(), y.as_mut_ptr(), y.as_mut_ptr(), 8, NULL);
        assert_invalid(code, "cudann_swiglu_backward", "overlaps");
        assert_invalid(cudann_bias_add(x.as_ptr(), std::ptr::null(), y.as_mut_ptr(), 2, 4, NULL), "cudann_bias_add", "bias is NULL");
        assert_invalid(cudann_bias_backward(x.as_ptr(), z.as_mut_ptr(), 2, -4, NULL), "cudann_bias_backward", "cols must be >= 0");
        // Size 0 is a no-op with NULL pointers.
        assert_ok(cudann_swiglu_backward(std::ptr::null(), std::ptr::null(), std::ptr::null(), std::ptr::null_mut(), std::ptr::null_mut(), 0, NULL));
    }
    assert_untouched(&y, "output");
    assert_untouched(&z, "d_bias");
}
