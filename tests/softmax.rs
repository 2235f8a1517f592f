//! softmax and the router top-k against float64.
mod common;
use common::*;
use cudann::*;

const SHAPES: [(usize, usize); 7] = [(1, 1), (3, 31), (5, 33), (2, 1000), (3, 4097), (1, 70_000), (700, 7)];

#[test]
fn softmax_matches_float64() {
    let mut rng = Rng::new(10);
    for (rows, cols) in SHAPES {
        let x = rng.vec(rows * cols, 4.0);
        let mut y = poisoned(rows * cols);
        assert_ok(unsafe { cuda_softmax(x.as_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, NULL) });
        let want: Vec<f64> = x.chunks(cols).flat_map(|r| softmax_ref(&f64s(r))).collect();
        assert_close(&y, &want, 1e-5, 1e-9, &format!("softmax {rows}x{cols}"));
    }
}

#[test]
fn softmax_is_stable_and_handles_minus_infinity() {
    let cols = 37;
    let mut rng = Rng::new(11);
    let mut x = rng.vec(3 * cols, 1.0);
    x[..cols].iter_mut().for_each(|v| *v = *v * 1e4 + 3e4); // huge values: needs the max shift
    x[cols + 5] = f32::NEG_INFINITY;
    x[2 * cols..].fill(f32::NEG_INFINITY); // an all -inf row
    let mut y = poisoned(3 * cols);
    assert_ok(unsafe { cuda_softmax(x.as_ptr(), y.as_mut_ptr(), 3, cols as i32, NULL) });
    let want: Vec<f64> = x.chunks(cols).flat_map(|r| softmax_ref(&f64s(r))).collect();
    assert_close(&y, &want, 1e-5, 1e-30, "softmax");
    assert_eq!(y[cols + 5], 0.0);
    assert!(y[2 * cols..].iter().all(|&v| v == 0.0));
}

#[test]
fn softmax_in_place() {
    let mut rng = Rng::new(12);
    let (rows, cols) = (9, 5000);
    let x = rng.vec(rows * cols, 3.0);
    let mut want = vec![0.0; x.len()];
    let mut y = x.clone();
    unsafe {
        cuda_softmax(x.as_ptr(), want.as_mut_ptr(), rows as i32, cols as i32, NULL);
        assert_ok(cuda_softmax(y.as_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, NULL));
    }
    assert_eq!(y, want);
}

/// Reference top-k: rank by (prob desc, index asc), renormalise over the k.
fn topk_ref(x: &[f32], k: usize) -> (Vec<i32>, Vec<f64>) {
    let p = softmax_ref(&f64s(x));
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap().then(a.cmp(&b)));
    order.truncate(k);
    let total: f64 = order.iter().map(|&j| p[j]).sum();
    (order.iter().map(|&j| j as i32).collect(), order.iter().map(|&j| p[j] / total).collect())
}

#[test]
fn softmax_topk_matches_reference() {
    let mut rng = Rng::new(13);
    for (rows, cols, k) in [(1, 1, 1), (4, 8, 2), (33, 64, 8), (3, 1000, 1000), (2, 4097, 5)] {
        let x = rng.vec(rows * cols, 2.0);
        let mut w = poisoned(rows * k);
        let mut idx = vec![-1i32; rows * k];
        assert_ok(unsafe { cuda_softmax_topk(x.as_ptr(), w.as_mut_ptr(), idx.as_mut_ptr(), rows as i32, cols as i32, k as i32, NULL) });
        for r in 0..rows {
            let (want_idx, want_w) = topk_ref(&x[r * cols..(r + 1) * cols], k);
            assert_eq!(&idx[r * k..(r + 1) * k], &want_idx[..], "indices row {r}");
            assert_close(&w[r * k..(r + 1) * k], &want_w, 1e-5, 1e-9, "weights");
        }
    }
}

#[test]
fn softmax_topk_breaks_ties_by_lower_index() {
    let x = [1.0f32, 3.0, 2.0, 3.0, 3.0, 0.0];
    let mut w = [0.0f32; 3];
    let mut idx = [0i32; 3];
    assert_ok(unsafe { cuda_softmax_topk(x.as_ptr(), w.as_mut_ptr(), idx.as_mut_ptr(), 1, 6, 3, NULL) });
    assert_eq!(idx, [1, 3, 4]);
    assert_close(&w, &[1.0 / 3.0; 3], 1e-6, 0.0, "tied weights");
}

#[test]
fn softmax_bad_arguments() {
    let x = vec![0.5f32; 64];
    let mut y = poisoned(64);
    let mut idx = vec![7i32; 64];
    unsafe {
        assert_invalid(cuda_softmax(x.as_ptr(), y.as_mut_ptr(), -1, 8, NULL), "cuda_softmax", "rows must be >= 0 (got -1)");
        assert_invalid(cuda_softmax(x.as_ptr(), y.as_mut_ptr(), i32::MAX, i32::MAX, NULL), "cuda_softmax", "overflows");
        assert_invalid(cuda_softmax(std::ptr::null(), y.as_mut_ptr(), 8, 8, NULL), "cuda_softmax", "input is NULL");
        assert_invalid(cuda_softmax_topk(x.as_ptr(), y.as_mut_ptr(), idx.as_mut_ptr(), 8, 8, 0, NULL), "cuda_softmax_topk", "k must be in 1..=cols (8) (got 0)");
        assert_invalid(cuda_softmax_topk(x.as_ptr(), y.as_mut_ptr(), idx.as_mut_ptr(), 8, 8, 9, NULL), "cuda_softmax_topk", "(got 9)");
        let p = y.as_mut_ptr();
        assert_invalid(cuda_softmax_topk(x.as_ptr(), p, p.add(8) as *mut i32, 1, 64, 16, NULL), "cuda_softmax_topk", "overlaps");
    }
    assert_untouched(&y, "output");
    assert!(idx.iter().all(|&v| v == 7));
    unsafe { assert_ok(cuda_softmax(std::ptr::null(), std::ptr::null_mut(), 0, 5, NULL)) };
}

#[test]
fn softmax_backward_matches_finite_differences() {
    let mut rng = Rng::new(15);
    for (rows, cols) in [(1, 1), (3, 31), (5, 33), (2, 300), (1, 4097)] {
        let (x, dy) = (rng.vec(rows * cols, 2.0), rng.vec(rows * cols, 1.0));
        let mut y = poisoned(x.len());
        assert_ok(unsafe { cuda_softmax(x.as_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, NULL) });
        let mut dx = poisoned(x.len());
        assert_ok(unsafe { cudann_softmax_backward(dy.as_ptr(), y.as_ptr(), dx.as_mut_ptr(), rows as i32, cols as i32, NULL) });
        let dy64 = f64s(&dy);
        let want = numeric_grad(&f64s(&x), |x| {
            let y: Vec<f64> = x.chunks(cols).flat_map(softmax_ref).collect();
            dot64(&dy64, &y)
        });
        assert_close(&dx, &want, 1e-4, 1e-6, &format!("softmax_backward {rows}x{cols}"));
        let mut in_place = dy.clone();
        assert_ok(unsafe { cudann_softmax_backward(in_place.as_ptr(), y.as_ptr(), in_place.as_mut_ptr(), rows as i32, cols as i32, NULL) });
        assert_eq!(in_place, dx, "in place");
    }
    let mut dx = poisoned(4);
    assert_invalid(unsafe { cudann_softmax_backward(dx.as_ptr(), std::ptr::null(), dx.as_mut_ptr(), 2, 2, NULL) }, "cudann_softmax_backward", "output is NULL");
    assert_untouched(&dx, "d_input");
}
