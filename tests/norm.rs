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
