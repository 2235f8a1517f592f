//! AdamW, zero_grad, grad_clip and scatter_add against float64.
mod common;
use common::*;
use cudann::*;

#[test]
fn adamw_matches_float64_over_several_steps() {
    let mut rng = Rng::new(70);
    for n in SIZES {
        let mut p = rng.vec(n, 1.0);
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let (mut pr, mut mr, mut vr) = (f64s(&p), vec![0.0f64; n], vec![0.0f64; n]);
        let (lr, b1, b2, eps, wd) = (1e-3f32, 0.9f32, 0.999f32, 1e-8f32, 0.01f32);
        for step in 1..=3 {
            let g = rng.vec(n, 0.1);
            assert_ok(unsafe { cuda_adamw_step(p.as_mut_ptr(), g.as_ptr(), m.as_mut_ptr(), v.as_mut_ptr(), lr, b1, b2, eps, wd, step, n as i64, NULL) });
            let (b1, b2) = (b1 as f64, b2 as f64);
            for i in 0..n {
                let gi = g[i] as f64;
                mr[i] = b1 * mr[i] + (1.0 - b1) * gi;
                vr[i] = b2 * vr[i] + (1.0 - b2) * gi * gi;
                let (mh, vh) = (mr[i] / (1.0 - b1.powi(step)), vr[i] / (1.0 - b2.powi(step)));
                pr[i] -= lr as f64 * (mh / (vh.sqrt() + eps as f64) + wd as f64 * pr[i]);
            }
        }
        assert_close(&m, &mr, 1e-5, 1e-8, "m"); // atol: cancellation in b1*m + (1-b1)*g
        assert_close(&v, &vr, 1e-5, 1e-11, "v");
        assert_close(&p, &pr, 1e-5, 1e-6, "param");
    }
}

#[test]
fn zero_grad_zeroes_everything() {
    let mut g = Rng::new(71).vec(40_000, 1.0);
    assert_ok(unsafe { cuda_zero_grad(g.as_mut_ptr(), g.len() as i64, NULL) });
    assert!(g.iter().all(|&v| v == 0.0));
}

#[test]
fn grad_clip_reports_the_norm_and_clips_only_above_it() {
    let mut rng = Rng::new(72);
    for n in SIZES {
        let g = rng.vec(n, 1.0);
        let norm = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        for clip in [norm * 0.5, norm * 2.0] {
            let mut x = g.clone();
            let mut scratch = vec![0.0f32; n.div_ceil(256)];
            let mut total = [POISON];
            assert_ok(unsafe { cuda_grad_clip(x.as_mut_ptr(), scratch.as_mut_ptr(), total.as_mut_ptr(), clip as f32, n as i64, NULL) });
            assert_close(&total, &[norm], 1e-5, 0.0, "total_norm");
            let factor = if norm > clip { clip / norm } else { 1.0 };
            assert_close(&x, &g.iter().map(|&v| v as f64 * factor).collect::<Vec<_>>(), 1e-5, 1e-9, "clipped grad");
        }
    }
}

#[test]
fn scatter_add_accumulates_duplicates_and_skips_negatives() {
    let mut rng = Rng::new(73);
    let (rows, dim, table) = (500, 33, 40);
    let go = rng.vec(rows * dim, 1.0);
    let idx: Vec<i32> = (0..rows).map(|i| if i % 7 == 0 { -1 } else { rng.below(table) as i32 }).collect();
    let mut gw = rng.vec(table * dim, 1.0);
    let mut want = f64s(&gw);
    for (i, &r) in idx.iter().enumerate() {
        if r >= 0 {
            for c in 0..dim {
                want[r as usize * dim + c] += go[i * dim + c] as f64;
            }
        }
    }
    assert_ok(unsafe { cuda_scatter_add(go.as_ptr(), idx.as_ptr(), gw.as_mut_ptr(), rows as i32, dim as i32, NULL) });
    assert_close(&gw, &want, 1e-5, 1e-5, "grad_weight");
}

#[test]
fn optim_bad_arguments() {
    let g = vec![1.0f32; 16];
    let (mut p, mut m, mut v) = (poisoned(16), poisoned(16), poisoned(16));
    unsafe {
        let mut adam = |step, b1, b2, eps| cuda_adamw_step(p.as_mut_ptr(), g.as_ptr(), m.as_mut_ptr(), v.as_mut_ptr(), 1e-3, b1, b2, eps, 0.0, step, 16, NULL);
        assert_invalid(adam(0, 0.9, 0.999, 1e-8), "cuda_adamw_step", "step must be >= 1 (got 0)");
        assert_invalid(adam(1, 1.0, 0.999, 1e-8), "cuda_adamw_step", "beta1 must be in [0, 1) (got 1)");
        assert_invalid(adam(1, 0.9, -0.1, 1e-8), "cuda_adamw_step", "beta2 must be in [0, 1)");
        assert_invalid(adam(1, 0.9, 0.999, -1.0), "cuda_adamw_step", "eps must be finite and >= 0");
        assert_invalid(cuda_adamw_step(p.as_mut_ptr(), g.as_ptr(), p.as_mut_ptr(), v.as_mut_ptr(), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 16, NULL), "cuda_adamw_step", "outputs must be distinct");
        assert_invalid(cuda_zero_grad(std::ptr::null_mut(), 3, NULL), "cuda_zero_grad", "grad is NULL");
        assert_invalid(cuda_grad_clip(p.as_mut_ptr(), m.as_mut_ptr(), v.as_mut_ptr(), 0.0, 16, NULL), "cuda_grad_clip", "clip_norm must be finite and > 0 (got 0)");
        assert_invalid(cuda_grad_clip(p.as_mut_ptr(), std::ptr::null_mut(), v.as_mut_ptr(), 1.0, 16, NULL), "cuda_grad_clip", "partial_norms is NULL");
        assert_invalid(cuda_scatter_add(g.as_ptr(), [0, 1].as_ptr(), p.as_mut_ptr(), 2, -8, NULL), "cuda_scatter_add", "embedding_dim must be >= 0");
        assert_invalid(cuda_scatter_add(p.as_ptr().add(1), [0, 1].as_ptr(), p.as_mut_ptr(), 2, 7, NULL), "cuda_scatter_add", "grad_weight partially overlaps grad_output");
    }
    for (buf, name) in [(&p, "param"), (&m, "m"), (&v, "v")] {
        assert_untouched(buf, name);
    }
}

#[test]
fn in_place_on_an_input_uses_the_original_values() {
    // grad_weight may be grad_output's very buffer (same size): the sum uses the old values.
    let go = vec![1.0f32, 2.0, 3.0, 4.0];
    let mut gw = go.clone();
    assert_ok(unsafe { cuda_scatter_add(gw.as_ptr(), [1, 1].as_ptr(), gw.as_mut_ptr(), 2, 2, NULL) });
    assert_eq!(gw, vec![1.0, 2.0, 3.0 + 1.0 + 3.0, 4.0 + 2.0 + 4.0]);
}
