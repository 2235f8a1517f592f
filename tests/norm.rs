//! RMSNorm and its residual form against float64.
mod common;
use common::*;
use cudann::*;

fn rmsnorm_ref(x: &[f32], w: &[f32], hidden: usize, eps: f32) -> Vec<f64> {
    x.chunks(hidden)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / hidden as f64;
            let r = 1.0 / (ms + eps as f64).sqrt();
            row.iter().zip(w).map(move |(&v, &w)| v as f64 * r * w as f64)
        })
        .collect()
}

#[test]
fn rmsnorm_matches_float64() {
    let mut rng = Rng::new(20);
    for (rows, hidden) in [(1, 1), (3, 31), (7, 33), (4, 1000), (2, 4097), (1, 70_000), (500, 8)] {
        let x = rng.vec(rows * hidden, 2.0);
        let w = rng.vec(hidden, 1.0);
        let mut y = poisoned(rows * hidden);
        assert_ok(unsafe { cuda_rmsnorm(x.as_ptr(), w.as_ptr(), y.as_mut_ptr(), rows as i32, hidden as i32, 1e-6, NULL) });
        assert_close(&y, &rmsnorm_ref(&x, &w, hidden, 1e-6), 1e-5, 1e-6, &format!("rmsnorm {rows}x{hidden}"));
    }
}

#[test]
fn rmsnorm_residual_matches_float64_in_every_aliasing() {
    let mut rng = Rng::new(21);
    let (rows, hidden) = (6, 333);
    let n = rows * hidden;
    let (x, r, w) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(hidden, 1.0));
    let sum: Vec<f32> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
    let want = rmsnorm_ref(&sum, &w, hidden, 1e-5);
    let call = |x: *const f32, r: *const f32, y: *mut f32, s: *mut f32| unsafe {
        cuda_rmsnorm_residual(x, r, w.as_ptr(), y, s, rows as i32, hidden as i32, 1e-5, NULL)
    };

    let (mut y, mut s) = (poisoned(n), poisoned(n));
    assert_ok(call(x.as_ptr(), r.as_ptr(), y.as_mut_ptr(), s.as_mut_ptr()));
    assert_eq!(s, sum, "residual_out");
    assert_close(&y, &want, 1e-5, 1e-6, "output");

    // output == input, residual_out == residual (the usual in-place use).
    let (mut xi, mut ri) = (x.clone(), r.clone());
    assert_ok(call(xi.as_ptr(), ri.as_ptr(), xi.as_mut_ptr(), ri.as_mut_ptr()));
    assert_eq!(ri, sum);
    assert_close(&xi, &want, 1e-5, 1e-6, "output in input");

    // The swapped aliasing: output == residual, residual_out == input.
    let (mut xi, mut ri) = (x.clone(), r.clone());
    assert_ok(call(xi.as_ptr(), ri.as_ptr(), ri.as_mut_ptr(), xi.as_mut_ptr()));
    assert_eq!(xi, sum);
    assert_close(&ri, &want, 1e-5, 1e-6, "output in residual");
}

#[test]
fn rmsnorm_in_place_and_bad_arguments() {
    let mut rng = Rng::new(22);
    let x = rng.vec(4 * 50, 1.0);
    let w = rng.vec(50, 1.0);
    let mut y = x.clone();
    unsafe { assert_ok(cuda_rmsnorm(y.as_ptr(), w.as_ptr(), y.as_mut_ptr(), 4, 50, 1e-6, NULL)) };
    assert_close(&y, &rmsnorm_ref(&x, &w, 50, 1e-6), 1e-5, 1e-6, "in place");

    let mut out = poisoned(200);
    let mut out2 = poisoned(200);
    unsafe {
        assert_invalid(cuda_rmsnorm(x.as_ptr(), w.as_ptr(), out.as_mut_ptr(), 4, 50, -1.0, NULL), "cuda_rmsnorm", "eps must be finite and >= 0");
        assert_invalid(cuda_rmsnorm(x.as_ptr(), std::ptr::null(), out.as_mut_ptr(), 4, 50, 1e-6, NULL), "cuda_rmsnorm", "weight is NULL");
        assert_invalid(cuda_rmsnorm(x.as_ptr(), w.as_ptr(), out.as_mut_ptr(), 4, -50, 1e-6, NULL), "cuda_rmsnorm", "hidden_dim must be >= 0");
        let p = out.as_mut_ptr();
        assert_invalid(cuda_rmsnorm_residual(x.as_ptr(), x.as_ptr(), w.as_ptr(), p, p, 4, 50, 1e-6, NULL), "cuda_rmsnorm_residual", "output overlaps residual_out");
        assert_invalid(cuda_rmsnorm_residual(x.as_ptr(), x.as_ptr(), w.as_ptr(), out.as_mut_ptr(), out2.as_mut_ptr(), 4, 50, f32::NAN, NULL), "cuda_rmsnorm_residual", "eps");
    }
    assert_untouched(&out, "output");
    assert_untouched(&out2, "residual_out");
}

/// RMSNorm (mode "rms") or LayerNorm (mode "layer", with bias) in float64 over
/// `params` = x (rows * hidden) ++ weight (hidden) ++ bias (hidden, LayerNorm).
fn norm64(params: &[f64], rows: usize, hidden: usize, eps: f64, layer: bool) -> Vec<f64> {
    let (x, rest) = params.split_at(rows * hidden);
    let (w, b) = rest.split_at(hidden);
    x.chunks(hidden)
        .flat_map(|row| {
            let mean = if layer { row.iter().sum::<f64>() / hidden as f64 } else { 0.0 };
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / hidden as f64;
            let r = 1.0 / (var + eps).sqrt();
            (0..hidden).map(move |j| (row[j] - mean) * r * w[j] + if layer { b[j] } else { 0.0 })
        })
        .collect()
}

/// The gradient of ⟨dy, norm(params)⟩ by central differences: the reference
/// for d_input ++ d_weight (++ d_bias).
fn norm_grads(x: &[f32], w: &[f32], b: &[f32], dy: &[f32], rows: usize, hidden: usize, eps: f32, layer: bool) -> Vec<f64> {
    let params: Vec<f64> = [x, w, b].concat().iter().map(|&v| v as f64).collect();
    let dy = f64s(dy);
    numeric_grad(&params, |p| dot64(&dy, &norm64(p, rows, hidden, eps as f64, layer)))
}

const BACKWARD_SHAPES: [(usize, usize); 6] = [(1, 1), (3, 31), (7, 33), (4, 200), (1, 4097), (130, 8)];

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let mut rng = Rng::new(23);
    for (rows, hidden) in BACKWARD_SHAPES {
        let n = rows * hidden;
        let (x, w, dy) = (rng.vec(n, 2.0), rng.vec(hidden, 1.0), rng.vec(n, 1.0));
        let (mut dx, mut dw) = (poisoned(n), poisoned(hidden));
        let eps = 1e-5;
        assert_ok(unsafe { cudann_rmsnorm_backward(dy.as_ptr(), x.as_ptr(), w.as_ptr(), dx.as_mut_ptr(), dw.as_mut_ptr(), rows as i32, hidden as i32, eps, NULL) });
        let want = norm_grads(&x, &w, &[], &dy, rows, hidden, eps, false);
        let what = format!("rmsnorm_backward {rows}x{hidden}");
        assert_close(&dx, &want[..n], 2e-4, 2e-5, &format!("{what} d_input"));
        assert_close(&dw, &want[n..], 2e-4, 2e-5, &format!("{what} d_weight"));
        // In place over d_output, then over input: the same bits.
        let mut dy2 = dy.clone();
        let mut dw2 = poisoned(hidden);
        assert_ok(unsafe { cudann_rmsnorm_backward(dy2.as_ptr(), x.as_ptr(), w.as_ptr(), dy2.as_mut_ptr(), dw2.as_mut_ptr(), rows as i32, hidden as i32, eps, NULL) });
        assert_eq!((&dy2, &dw2), (&dx, &dw), "{what} in place on d_output");
        let mut x2 = x.clone();
        assert_ok(unsafe { cudann_rmsnorm_backward(dy.as_ptr(), x2.as_ptr(), w.as_ptr(), x2.as_mut_ptr(), dw2.as_mut_ptr(), rows as i32, hidden as i32, eps, NULL) });
        assert_eq!((&x2, &dw2), (&dx, &dw), "{what} in place on input");
    }
}

fn layernorm_ref(x: &[f32], w: &[f32], b: &[f32], rows: usize, hidden: usize, eps: f32) -> Vec<f64> {
    let params: Vec<f64> = [x, w, b].concat().iter().map(|&v| v as f64).collect();
    norm64(&params, rows, hidden, eps as f64, true)
}

#[test]
fn layernorm_and_its_backward_match_float64_and_finite_differences() {
    let mut rng = Rng::new(24);
    for (rows, hidden) in BACKWARD_SHAPES {
        let n = rows * hidden;
        let (mut x, w, b, dy) = (rng.vec(n, 2.0), rng.vec(hidden, 1.0), rng.vec(hidden, 1.0), rng.vec(n, 1.0));
        x.iter_mut().for_each(|v| *v += 3.0); // an offset the mean must remove
        let eps = 1e-5;
        let mut y = poisoned(n);
        assert_ok(unsafe { cudann_layernorm(x.as_ptr(), w.as_ptr(), b.as_ptr(), y.as_mut_ptr(), rows as i32, hidden as i32, eps, NULL) });
        assert_close(&y, &layernorm_ref(&x, &w, &b, rows, hidden, eps), 1e-5, 1e-5, &format!("layernorm {rows}x{hidden}"));

        let (mut dx, mut dw, mut db) = (poisoned(n), poisoned(hidden), poisoned(hidden));
        let code = unsafe { cudann_layernorm_backward(dy.as_ptr(), x.as_ptr(), w.as_ptr(), dx.as_mut_ptr(), dw.as_mut_ptr(), db.as_mut_ptr(), rows as i32, hidden as i32, eps, NULL) };
        assert_ok(code);
        let want = norm_grads(&x, &w, &b, &dy, rows, hidden, eps, true);
        let what = format!("layernorm_backward {rows}x{hidden}");
        assert_close(&dx, &want[..n], 2e-4, 2e-5, &format!("{what} d_input"));
        assert_close(&dw, &want[n..n + hidden], 2e-4, 2e-5, &format!("{what} d_weight"));
        assert_close(&db, &want[n + hidden..], 2e-4, 2e-5, &format!("{what} d_bias"));
    }
}

#[test]
fn layernorm_of_a_long_row_keeps_float32_accuracy() {
    let hidden = 1 << 20;
    let mut x = Rng::new(25).vec(hidden, 1.0);
    x.iter_mut().for_each(|v| *v += 100.0);
    let (w, b) = (vec![1.0f32; hidden], vec![0.0f32; hidden]);
    let mut y = poisoned(hidden);
    assert_ok(unsafe { cudann_layernorm(x.as_ptr(), w.as_ptr(), b.as_ptr(), y.as_mut_ptr(), 1, hidden as i32, 0.0, NULL) });
    assert_close(&y, &layernorm_ref(&x, &w, &b, 1, hidden, 0.0), 1e-4, 2e-5, "layernorm 1x2^20");
}

#[test]
fn norm_backward_bad_arguments() {
    let x = vec![1.0f32; 8];
    let (mut dx, mut dw, mut db) = (poisoned(8), poisoned(4), poisoned(4));
    let null = std::ptr::null();
    unsafe {
        let code = cudann_rmsnorm_backward(x.as_ptr(), x.as_ptr(), null, dx.as_mut_ptr(), dw.as_mut_ptr(), 2, 4, 1e-5, NULL);
        assert_invalid(code, "cudann_rmsnorm_backward", "weight is NULL");
        let code = cudann_rmsnorm_backward(x.as_ptr(), x.as_ptr(), x.as_ptr(), dx.as_mut_ptr(), dx.as_mut_ptr(), 2, 4, 1e-5, NULL);
        assert_invalid(code, "cudann_rmsnorm_backward", "overlaps");
        let code = cudann_layernorm(x.as_ptr(), x.as_ptr(), x.as_ptr(), dx.as_mut_ptr(), 2, 4, -1.0, NULL);
        assert_invalid(code, "cudann_layernorm", "eps must be finite and >= 0");
        let code = cudann_layernorm_backward(x.as_ptr(), x.as_ptr(), x.as_ptr(), dx.as_mut_ptr(), dw.as_mut_ptr(), db.as_mut_ptr(), -2, 4, 1e-5, NULL);
        assert_invalid(code, "cudann_layernorm_backward", "rows must be >= 0");
        assert_ok(cudann_layernorm_backward(null, null, null, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0, 4, 1e-5, NULL));
    }
    assert_untouched(&dx, "d_input");
    assert_untouched(&dw, "d_weight");
    assert_untouched(&db, "d_bias");
}
