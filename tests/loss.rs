//! Cross-entropy forward/backward and the MoE aux loss against float64.
mod common;
use common::*;
use cudann::*;

fn log_softmax_ref(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

#[test]
fn cross_entropy_forward_matches_float64_with_padding() {
    let mut rng = Rng::new(60);
    for (rows, vocab) in [(1, 1), (3, 31), (17, 33), (5, 1000), (4, 4097), (2, 70_000)] {
        let x = rng.vec(rows * vocab, 3.0);
        let targets: Vec<i32> = (0..rows).map(|r| if r % 3 == 1 { -100 } else { rng.below(vocab) as i32 }).collect();
        let (mut loss, mut lp) = ([POISON], poisoned(x.len()));
        assert_ok(unsafe { cuda_cross_entropy_forward(x.as_ptr(), targets.as_ptr(), loss.as_mut_ptr(), lp.as_mut_ptr(), rows as i32, vocab as i32, NULL) });
        let want_lp: Vec<f64> = x.chunks(vocab).flat_map(log_softmax_ref).collect();
        assert_close(&lp, &want_lp, 1e-5, 1e-5, &format!("log_probs {rows}x{vocab}"));
        let counted: Vec<f64> = targets.iter().enumerate().filter(|&(_, &t)| t >= 0).map(|(r, &t)| -want_lp[r * vocab + t as usize]).collect();
        let want = counted.iter().sum::<f64>() / counted.len() as f64;
        assert_close(&loss, &[want], 1e-5, 1e-6, "loss");
    }
}

#[test]
fn cross_entropy_all_padding_is_zero_and_in_place_works() {
    let mut rng = Rng::new(61);
    let (rows, vocab) = (4i32, 50i32);
    let x = rng.vec((rows * vocab) as usize, 1.0);
    let mut loss = [POISON];
    let mut lp = poisoned(x.len());
    assert_ok(unsafe { cuda_cross_entropy_forward(x.as_ptr(), [-1, -100, -5, -1].as_ptr(), loss.as_mut_ptr(), lp.as_mut_ptr(), rows, vocab, NULL) });
    assert_eq!(loss[0], 0.0);
    let mut inplace = x.clone();
    let mut loss2 = [POISON];
    let targets = [1, 2, 3, 4];
    unsafe {
        cuda_cross_entropy_forward(x.as_ptr(), targets.as_ptr(), loss.as_mut_ptr(), lp.as_mut_ptr(), rows, vocab, NULL);
        assert_ok(cuda_cross_entropy_forward(inplace.as_ptr(), targets.as_ptr(), loss2.as_mut_ptr(), inplace.as_mut_ptr(), rows, vocab, NULL));
    }
    assert_eq!(inplace, lp);
    assert_eq!(loss, loss2);
}

#[test]
fn cross_entropy_backward_matches_float64() {
    let mut rng = Rng::new(62);
    for (rows, vocab) in [(1, 1), (6, 33), (3, 4097)] {
        let x = rng.vec(rows * vocab, 2.0);
        let lp: Vec<f32> = x.chunks(vocab).flat_map(log_softmax_ref).map(|v| v as f32).collect();
        let targets: Vec<i32> = (0..rows).map(|r| if r == 1 { -100 } else { rng.below(vocab) as i32 }).collect();
        let scale = 1.0 / rows as f32;
        let mut d = poisoned(lp.len());
        assert_ok(unsafe { cuda_cross_entropy_backward(lp.as_ptr(), targets.as_ptr(), d.as_mut_ptr(), rows as i32, vocab as i32, scale, NULL) });
        let want: Vec<f64> = (0..rows * vocab)
            .map(|x| {
                let (r, j) = (x / vocab, x % vocab);
                if targets[r] < 0 { 0.0 } else { ((lp[x] as f64).exp() - if j == targets[r] as usize { 1.0 } else { 0.0 }) * scale as f64 }
            })
            .collect();
        assert_close(&d, &want, 1e-5, 1e-7, &format!("d_logits {rows}x{vocab}"));
        let mut inplace = lp.clone();
        assert_ok(unsafe { cuda_cross_entropy_backward(inplace.as_ptr(), targets.as_ptr(), inplace.as_mut_ptr(), rows as i32, vocab as i32, scale, NULL) });
        assert_eq!(inplace, d);
    }
}

#[test]
fn aux_loss_matches_float64() {
    let mut rng = Rng::new(63);
    let (tokens, experts, top_k, alpha) = (37, 8, 2, 0.01f32);
    let logits = rng.vec(tokens * experts, 1.0);
    let probs: Vec<f32> = logits.chunks(experts).flat_map(|r| softmax_ref(&f64s(r))).map(|v| v as f32).collect();
    let mut idx: Vec<i32> = (0..tokens * top_k).map(|_| rng.below(experts) as i32).collect();
    idx[0] = 3;
    idx[1] = 3; // a token naming an expert twice counts once
    let (mut loss, mut f, mut p) = ([POISON], poisoned(experts), poisoned(experts));
    assert_ok(unsafe { cuda_aux_loss_forward(probs.as_ptr(), idx.as_ptr(), loss.as_mut_ptr(), f.as_mut_ptr(), p.as_mut_ptr(), tokens as i32, experts as i32, top_k as i32, alpha, NULL) });
    let want_f: Vec<f64> = (0..experts)
        .map(|e| idx.chunks(top_k).filter(|c| c.contains(&(e as i32))).count() as f64 / tokens as f64)
        .collect();
    let want_p: Vec<f64> = (0..experts).map(|e| (0..tokens).map(|t| probs[t * experts + e] as f64).sum::<f64>() / tokens as f64).collect();
    let want_loss = alpha as f64 * experts as f64 * want_f.iter().zip(&want_p).map(|(a, b)| a * b).sum::<f64>();
    assert_close(&f, &want_f, 1e-6, 0.0, "f_counts");
    assert_close(&p, &want_p, 1e-5, 1e-7, "p_means");
    assert_close(&loss, &[want_loss], 1e-5, 0.0, "aux_loss");
}

#[test]
fn loss_bad_arguments() {
    let x = vec![0.0f32; 40];
    let (mut loss, mut lp) = ([POISON], poisoned(40));
    unsafe {
        assert_invalid(cuda_cross_entropy_forward(x.as_ptr(), [1, 10, 0, 2].as_ptr(), loss.as_mut_ptr(), lp.as_mut_ptr(), 4, 10, NULL), "cuda_cross_entropy_forward", "targets[1] = 10 is >= vocab_size (10)");
        assert_invalid(cuda_cross_entropy_forward(x.as_ptr(), std::ptr::null(), loss.as_mut_ptr(), lp.as_mut_ptr(), 4, 10, NULL), "cuda_cross_entropy_forward", "targets is NULL");
        assert_invalid(cuda_cross_entropy_forward(x.as_ptr(), [0; 4].as_ptr(), lp.as_mut_ptr().add(3), lp.as_mut_ptr(), 4, 10, NULL), "cuda_cross_entropy_forward", "overlaps");
        assert_invalid(cuda_cross_entropy_backward(x.as_ptr(), [0, 99, 0, 0].as_ptr(), lp.as_mut_ptr(), 4, 10, 1.0, NULL), "cuda_cross_entropy_backward", "targets[1] = 99");
        assert_invalid(cuda_cross_entropy_backward(x.as_ptr(), [0; 4].as_ptr(), lp.as_mut_ptr(), -4, 10, 1.0, NULL), "cuda_cross_entropy_backward", "batch_seq must be >= 0");
        let (mut f, mut p) = (poisoned(4), poisoned(4));
        assert_invalid(cuda_aux_loss_forward(x.as_ptr(), [0, 4].as_ptr(), loss.as_mut_ptr(), f.as_mut_ptr(), p.as_mut_ptr(), 2, 4, 1, 1.0, NULL), "cuda_aux_loss_forward", "expert_indices[1] = 4 is outside [0, n_experts = 4)");
        assert_invalid(cuda_aux_loss_forward(x.as_ptr(), [0, 1].as_ptr(), loss.as_mut_ptr(), f.as_mut_ptr(), p.as_mut_ptr(), 2, 4, 5, 1.0, NULL), "cuda_aux_loss_forward", "top_k must be in 1..=n_experts (4) (got 5)");
        assert_untouched(&f, "f_counts");
        assert_untouched(&p, "p_means");
    }
    assert_untouched(&loss, "loss");
    assert_untouched(&lp, "log_probs");
}
