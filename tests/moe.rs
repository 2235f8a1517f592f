//! MoE routing: router and aux-loss backward, dispatch and combine with their
//! backwards, against float64 references and finite differences.
mod common;
use common::*;
use cudann::*;

/// Router top-k through the library: (weights, indices).
fn route(logits: &[f32], tokens: usize, experts: usize, k: usize) -> (Vec<f32>, Vec<i32>) {
    let (mut w, mut idx) = (poisoned(tokens * k), vec![-1i32; tokens * k]);
    assert_ok(unsafe { cuda_softmax_topk(logits.as_ptr(), w.as_mut_ptr(), idx.as_mut_ptr(), tokens as i32, experts as i32, k as i32, NULL) });
    (w, idx)
}

#[test]
fn router_backward_matches_finite_differences() {
    let mut rng = Rng::new(80);
    for (tokens, experts, k) in [(1, 1, 1), (5, 4, 2), (33, 8, 2), (7, 16, 4), (3, 5, 5)] {
        let logits = rng.vec(tokens * experts, 1.5);
        let (w, idx) = route(&logits, tokens, experts, k);
        let dw = rng.vec(tokens * k, 1.0);
        let mut d = poisoned(tokens * experts);
        assert_ok(unsafe { cudann_moe_router_backward(w.as_ptr(), idx.as_ptr(), dw.as_ptr(), d.as_mut_ptr(), tokens as i32, experts as i32, k as i32, NULL) });
        // The weights as a function of the logits, with the choice held fixed.
        let dw64 = f64s(&dw);
        let want = numeric_grad(&f64s(&logits), |l| {
            let mut total = 0.0;
            for t in 0..tokens {
                let chosen: Vec<f64> = idx[t * k..(t + 1) * k].iter().map(|&e| l[t * experts + e as usize]).collect();
                let m = chosen.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = chosen.iter().map(|c| (c - m).exp()).sum();
                total += chosen.iter().zip(&dw64[t * k..]).map(|(c, dw)| dw * (c - m).exp() / z).sum::<f64>();
            }
            total
        });
        assert_close(&d, &want, 1e-4, 1e-6, &format!("router_backward {tokens}x{experts} k={k}"));
    }
}

#[test]
fn aux_loss_backward_matches_finite_differences() {
    let mut rng = Rng::new(81);
    let (tokens, experts, k, alpha) = (12, 4, 2, 0.01f32);
    let logits = rng.vec(tokens * experts, 1.0);
    let mut probs = poisoned(tokens * experts);
    assert_ok(unsafe { cuda_softmax(logits.as_ptr(), probs.as_mut_ptr(), tokens as i32, experts as i32, NULL) });
    let (_, idx) = route(&logits, tokens, experts, k);
    let (mut loss, mut f, mut p) = (poisoned(1), poisoned(experts), poisoned(experts));
    assert_ok(unsafe { cuda_aux_loss_forward(probs.as_ptr(), idx.as_ptr(), loss.as_mut_ptr(), f.as_mut_ptr(), p.as_mut_ptr(), tokens as i32, experts as i32, k as i32, alpha, NULL) });
    let mut d = poisoned(tokens * experts);
    let scale = 2.5f32;
    assert_ok(unsafe { cudann_aux_loss_backward(f.as_ptr(), d.as_mut_ptr(), tokens as i32, experts as i32, alpha, scale, NULL) });
    let f64_counts = f64s(&f);
    let want = numeric_grad(&f64s(&probs), |p| {
        let means = (0..experts).map(|e| (0..tokens).map(|t| p[t * experts + e]).sum::<f64>() / tokens as f64);
        scale as f64 * alpha as f64 * experts as f64 * means.zip(&f64_counts).map(|(p, f)| p * f).sum::<f64>()
    });
    assert_close(&d, &want, 1e-5, 1e-9, "aux_loss_backward");
}

/// Dispatch through the library: (rows, order, offsets).
fn dispatch(x: &[f32], idx: &[i32], tokens: usize, dim: usize, experts: usize, k: usize) -> (Vec<f32>, Vec<i32>, Vec<i32>) {
    let (mut y, mut order, mut offsets) = (poisoned(tokens * k * dim), vec![-1i32; tokens * k], vec![-1i32; experts + 1]);
    let code = unsafe { cudann_moe_dispatch(x.as_ptr(), idx.as_ptr(), y.as_mut_ptr(), order.as_mut_ptr(), offsets.as_mut_ptr(), tokens as i32, dim as i32, experts as i32, k as i32, NULL) };
    assert_ok(code);
    (y, order, offsets)
}

/// Routing where the last expert gets no token (and ids repeat across tokens).
fn indices_skipping_last(rng: &mut Rng, tokens: usize, experts: usize, k: usize) -> Vec<i32> {
    (0..tokens)
        .flat_map(|_| {
            let mut chosen: Vec<i32> = Vec::new();
            while chosen.len() < k {
                let e = rng.below(experts - 1) as i32;
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
            }
            chosen
        })
        .collect()
}

#[test]
fn dispatch_groups_pairs_by_expert_stably() {
    let mut rng = Rng::new(82);
    for (tokens, dim, experts, k) in [(1, 1, 2, 1), (10, 3, 4, 2), (100, 17, 8, 3)] {
        let x = rng.vec(tokens * dim, 1.0);
        let idx = indices_skipping_last(&mut rng, tokens, experts, k);
        let (y, order, offsets) = dispatch(&x, &idx, tokens, dim, experts, k);
        // Reference: pairs sorted by (expert, pair), a stable grouping.
        let mut want: Vec<i32> = (0..(tokens * k) as i32).collect();
        want.sort_by_key(|&pair| (idx[pair as usize], pair));
        assert_eq!(order, want, "order");
        for e in 0..=experts {
            assert_eq!(offsets[e] as usize, idx.iter().filter(|&&x| (x as usize) < e).count(), "offsets[{e}]");
        }
        assert_eq!(offsets[experts - 1], offsets[experts], "the last expert has no rows");
        for (p, &pair) in order.iter().enumerate() {
            let t = pair as usize / k;
            assert_eq!(&y[p * dim..(p + 1) * dim], &x[t * dim..(t + 1) * dim], "row {p}");
        }
        // Backward: the sum of each token's rows, against finite differences.
        let dy = rng.vec(tokens * k * dim, 1.0);
        let mut dx = poisoned(tokens * dim);
        assert_ok(unsafe { cudann_moe_dispatch_backward(dy.as_ptr(), order.as_ptr(), dx.as_mut_ptr(), tokens as i32, dim as i32, k as i32, NULL) });
        let dy64 = f64s(&dy);
        let want = numeric_grad(&f64s(&x), |x| {
            let rows: Vec<f64> = order.iter().flat_map(|&pair| x[pair as usize / k * dim..][..dim].to_vec()).collect();
            dot64(&dy64, &rows)
        });
        assert_close(&dx, &want, 1e-5, 1e-6, "dispatch_backward");
    }
}

#[test]
fn combine_and_its_backward_match_finite_differences() {
    let mut rng = Rng::new(83);
    for (tokens, dim, experts, k) in [(1, 1, 2, 1), (9, 4, 4, 2), (40, 9, 8, 3)] {
        let x = rng.vec(tokens * dim, 1.0);
        let idx = indices_skipping_last(&mut rng, tokens, experts, k);
        let (_, order, _) = dispatch(&x, &idx, tokens, dim, experts, k);
        let (e, w, dy) = (rng.vec(tokens * k * dim, 1.0), rng.vec(tokens * k, 1.0), rng.vec(tokens * dim, 1.0));
        // params = expert_output ++ weights.
        let rows_of: Vec<usize> = (0..tokens * k).map(|pair| order.iter().position(|&o| o as usize == pair).unwrap()).collect();
        let combine64 = |p: &[f64]| -> Vec<f64> {
            let (e, w) = p.split_at(tokens * k * dim);
            (0..tokens * dim).map(|i| (0..k).map(|j| w[i / dim * k + j] * e[rows_of[i / dim * k + j] * dim + i % dim]).sum()).collect()
        };
        let params = f64s(&[e.clone(), w.clone()].concat());
        let mut y = poisoned(tokens * dim);
        assert_ok(unsafe { cudann_moe_combine(e.as_ptr(), w.as_ptr(), order.as_ptr(), y.as_mut_ptr(), tokens as i32, dim as i32, k as i32, NULL) });
        assert_close(&y, &combine64(&params), 1e-6, 1e-6, "combine");
        let (mut de, mut dw) = (poisoned(e.len()), poisoned(w.len()));
        let code = unsafe { cudann_moe_combine_backward(dy.as_ptr(), e.as_ptr(), w.as_ptr(), order.as_ptr(), de.as_mut_ptr(), dw.as_mut_ptr(), tokens as i32, dim as i32, k as i32, NULL) };
        assert_ok(code);
        let dy64 = f64s(&dy);
        let want = numeric_grad(&params, |p| dot64(&dy64, &combine64(p)));
        assert_close(&de, &want[..e.len()], 1e-5, 1e-6, "combine_backward d_expert_output");
        assert_close(&dw, &want[e.len()..], 1e-5, 1e-6, "combine_backward d_weights");
    }
}

#[test]
fn moe_bad_arguments() {
    let x = vec![1.0f32; 16];
    let (mut y, mut order, mut offsets) = (poisoned(16), vec![7i32; 4], vec![7i32; 3]);
    unsafe {
        let code = cudann_moe_dispatch(x.as_ptr(), [0, 2, 1, 0].as_ptr(), y.as_mut_ptr(), order.as_mut_ptr(), offsets.as_mut_ptr(), 2, 4, 2, 2, NULL);
        assert_invalid(code, "cudann_moe_dispatch", "indices[1] = 2 is outside [0, n_experts = 2)");
        let code = cudann_moe_dispatch(x.as_ptr(), [0, 1].as_ptr(), y.as_mut_ptr(), order.as_mut_ptr(), offsets.as_mut_ptr(), 2, 4, 2, 0, NULL);
        assert_invalid(code, "cudann_moe_dispatch", "k must be >= 1");
        let code = cudann_moe_combine(x.as_ptr(), x.as_ptr(), [0, 1, 1, 3].as_ptr(), y.as_mut_ptr(), 2, 2, 2, NULL);
        assert_invalid(code, "cudann_moe_combine", "order[2] = 1 repeats a pair");
        let code = cudann_moe_dispatch_backward(x.as_ptr(), [0, 1, 2, 4].as_ptr(), y.as_mut_ptr(), 2, 2, 2, NULL);
        assert_invalid(code, "cudann_moe_dispatch_backward", "order[3] = 4 is outside [0, tokens * k = 4)");
        let code = cudann_moe_router_backward(x.as_ptr(), [0, 1].as_ptr(), x.as_ptr(), y.as_mut_ptr(), 1, 2, 3, NULL);
        assert_invalid(code, "cudann_moe_router_backward", "k must be in 1..=n_experts (2) (got 3)");
        let code = cudann_aux_loss_backward(x.as_ptr(), y.as_mut_ptr(), 2, 2, f32::INFINITY, 1.0, NULL);
        assert_invalid(code, "cudann_aux_loss_backward", "alpha must be finite");
        let code = cudann_moe_combine_backward(x.as_ptr(), x.as_ptr(), x.as_ptr(), [0, 1].as_ptr(), y.as_mut_ptr(), y.as_mut_ptr(), 1, 2, 2, NULL);
        assert_invalid(code, "cudann_moe_combine_backward", "overlaps");
    }
    assert_untouched(&y, "output");
    assert!(order.iter().chain(&offsets).all(|&v| v == 7), "order/offsets were written");
}

/// Rows of no width (dim 0): the grouping is still written, and the weights'
/// gradients are zeros. Found by fuzzing: this once panicked (-5).
#[test]
fn rows_of_width_zero() {
    let idx = [1i32, 0, 1];
    let (mut order, mut offsets) = (vec![-1i32; 3], vec![-1i32; 3]);
    let empty = std::ptr::null_mut();
    assert_ok(unsafe { cudann_moe_dispatch(std::ptr::null(), idx.as_ptr(), empty, order.as_mut_ptr(), offsets.as_mut_ptr(), 3, 0, 2, 1, NULL) });
    assert_eq!((order.as_slice(), offsets.as_slice()), ([1, 0, 2].as_slice(), [0, 1, 3].as_slice()));
    let mut dw = poisoned(3);
    let (w, null) = ([0.5f32; 3], std::ptr::null());
    assert_ok(unsafe { cudann_moe_combine_backward(null, null, w.as_ptr(), order.as_ptr(), empty, dw.as_mut_ptr(), 3, 0, 1, NULL) });
    assert_eq!(dw, vec![0.0; 3]);
}
