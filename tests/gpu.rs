//! The GPU backend: every op with device pointers on a non-default stream,
//! compared with the CPU backend (itself checked against float64 in the other
//! test files); in-place calls, invalid arguments, graph capture and many
//! threads. Skipped, visibly, where there is no GPU.
mod common;
use common::device::{Dev, Stream, flash_both, mqa_both, present, random_qkv, test_mask};
use common::*;
use cudann::*;

/// Float32 results of two backends: within `rtol` (plus a tiny absolute slack).
#[track_caller]
fn agree(gpu: &[f32], cpu: &[f32], rtol: f64, what: &str) {
    assert_close(gpu, &f64s(cpu), rtol, 1e-6, what);
}

#[test]
fn elementwise_ops_match_the_cpu() {
    if !present("elementwise_ops_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(100);
    for n in [1usize, 31, 33, 1000, 4097, 1 << 20 | 3] {
        let (a, b) = (rng.vec(n, 4.0), rng.vec(n, 4.0));
        let (da, db, dy) = (Dev::from(&a), Dev::from(&b), Dev::from(&poisoned(n)));
        let mut y = poisoned(n);
        let ni = n as i64;
        unsafe {
            assert_ok(cuda_silu(da.p(), dy.p(), ni, s.raw()));
            assert_ok(cuda_silu(a.as_ptr(), y.as_mut_ptr(), ni, NULL));
            s.sync();
            agree(&dy.read(), &y, 4e-7, "silu");
            assert_ok(cuda_add(da.p(), db.p(), dy.p(), ni, s.raw()));
            s.sync();
            assert_eq!(dy.read(), a.iter().zip(&b).map(|(x, z)| x + z).collect::<Vec<_>>(), "add");
            assert_ok(cuda_mul(da.p(), db.p(), dy.p(), ni, s.raw()));
            s.sync();
            assert_eq!(dy.read(), a.iter().zip(&b).map(|(x, z)| x * z).collect::<Vec<_>>(), "mul");
            assert_ok(cuda_scale(da.p(), dy.p(), 0.375, ni, s.raw()));
            s.sync();
            assert_eq!(dy.read(), a.iter().map(|x| x * 0.375).collect::<Vec<_>>(), "scale");
            // In place.
            assert_ok(cuda_add(da.p(), db.p(), da.p(), ni, s.raw()));
            s.sync();
            assert_eq!(da.read(), a.iter().zip(&b).map(|(x, z)| x + z).collect::<Vec<_>>(), "add in place");
        }
    }
}

#[test]
fn row_ops_match_the_cpu() {
    if !present("row_ops_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(101);
    for (rows, cols) in [(1, 1), (3, 31), (5, 33), (7, 1000), (3, 4097), (2, 40_000), (600, 7)] {
        let n = rows * cols;
        let mut x = rng.vec(n, 3.0);
        x[0] = f32::NEG_INFINITY;
        let w = rng.vec(cols, 1.0);
        let (dx, dw, dy, ds) = (Dev::from(&x), Dev::from(&w), Dev::from(&poisoned(n)), Dev::from(&poisoned(n)));
        let (mut y, mut sum) = (poisoned(n), poisoned(n));
        let (r, c) = (rows as i32, cols as i32);
        unsafe {
            assert_ok(cuda_softmax(dx.p(), dy.p(), r, c, s.raw()));
            assert_ok(cuda_softmax(x.as_ptr(), y.as_mut_ptr(), r, c, NULL));
            s.sync();
            agree(&dy.read(), &y, 2e-6, &format!("softmax {rows}x{cols}"));

            let xr: Vec<f32> = x.iter().map(|v| if v.is_finite() { *v } else { 0.5 }).collect();
            let dxr = Dev::from(&xr);
            assert_ok(cuda_rmsnorm(dxr.p(), dw.p(), dy.p(), r, c, 1e-5, s.raw()));
            assert_ok(cuda_rmsnorm(xr.as_ptr(), w.as_ptr(), y.as_mut_ptr(), r, c, 1e-5, NULL));
            s.sync();
            agree(&dy.read(), &y, 2e-6, &format!("rmsnorm {rows}x{cols}"));

            assert_ok(cuda_rmsnorm_residual(dxr.p(), dxr.p(), dw.p(), dy.p(), ds.p(), r, c, 1e-5, s.raw()));
            assert_ok(cuda_rmsnorm_residual(xr.as_ptr(), xr.as_ptr(), w.as_ptr(), y.as_mut_ptr(), sum.as_mut_ptr(), r, c, 1e-5, NULL));
            s.sync();
            assert_eq!(ds.read(), sum, "residual_out");
            agree(&dy.read(), &y, 2e-6, "rmsnorm_residual");

            // Cross-entropy with padding rows.
            let targets: Vec<i32> = (0..rows).map(|i| if i % 3 == 1 { -100 } else { rng.below(cols) as i32 }).collect();
            let dt = Dev::from(&targets);
            let (dl, mut l) = (Dev::from(&[POISON]), [POISON]);
            assert_ok(cuda_cross_entropy_forward(dxr.p(), dt.p(), dl.p(), dy.p(), r, c, s.raw()));
            assert_ok(cuda_cross_entropy_forward(xr.as_ptr(), targets.as_ptr(), l.as_mut_ptr(), y.as_mut_ptr(), r, c, NULL));
            s.sync();
            agree(&dy.read(), &y, 2e-6, "log_probs");
            agree(&dl.read(), &l, 2e-6, "loss");
            let lp = y.clone();
            assert_ok(cuda_cross_entropy_backward(dy.p(), dt.p(), ds.p(), r, c, 0.5, s.raw()));
            assert_ok(cuda_cross_entropy_backward(lp.as_ptr(), targets.as_ptr(), sum.as_mut_ptr(), r, c, 0.5, NULL));
            s.sync();
            agree(&ds.read(), &sum, 2e-6, "d_logits");

            let mut idx = vec![0i32; rows];
            let didx = Dev::from(&idx);
            assert_ok(cuda_argmax(dx.p(), didx.p(), r, c, s.raw()));
            assert_ok(cuda_argmax(x.as_ptr(), idx.as_mut_ptr(), r, c, NULL));
            s.sync();
            assert_eq!(didx.read(), idx, "argmax");
        }
    }
}

#[test]
fn router_topk_aux_loss_and_argmax_edge_cases_match_the_cpu() {
    if !present("router_topk_aux_loss_and_argmax_edge_cases_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(102);
    for (rows, experts, k) in [(1, 1, 1), (37, 8, 2), (64, 64, 8), (5, 300, 4)] {
        let logits = rng.vec(rows * experts, 2.0);
        let (mut w, mut idx) = (poisoned(rows * k), vec![0i32; rows * k]);
        let (dl, dw, di) = (Dev::from(&logits), Dev::from(&w), Dev::from(&idx));
        let (r, e, kk) = (rows as i32, experts as i32, k as i32);
        unsafe {
            assert_ok(cuda_softmax_topk(dl.p(), dw.p(), di.p(), r, e, kk, s.raw()));
            assert_ok(cuda_softmax_topk(logits.as_ptr(), w.as_mut_ptr(), idx.as_mut_ptr(), r, e, kk, NULL));
            s.sync();
            assert_eq!(di.read(), idx, "topk indices");
            agree(&dw.read(), &w, 2e-6, "topk weights");

            let mut probs = vec![0.0f32; logits.len()];
            cuda_softmax(logits.as_ptr(), probs.as_mut_ptr(), r, e, NULL);
            let dp = Dev::from(&probs);
            let (mut aux, mut f, mut p) = ([POISON], poisoned(experts), poisoned(experts));
            let (da, df, dpm) = (Dev::from(&aux), Dev::from(&f), Dev::from(&p));
            assert_ok(cuda_aux_loss_forward(dp.p(), di.p(), da.p(), df.p(), dpm.p(), r, e, kk, 0.01, s.raw()));
            assert_ok(cuda_aux_loss_forward(probs.as_ptr(), idx.as_ptr(), aux.as_mut_ptr(), f.as_mut_ptr(), p.as_mut_ptr(), r, e, kk, 0.01, NULL));
            s.sync();
            agree(&df.read(), &f, 1e-6, "f_counts");
            agree(&dpm.read(), &p, 2e-6, "p_means");
            agree(&da.read(), &aux, 2e-6, "aux_loss");
        }
    }
    // argmax: ties go to the first, NaN wins, all -inf gives 0.
    let vocab = 131_072;
    let mut x = rng.vec(3 * vocab, 1.0);
    x[7] = 50.0;
    x[vocab - 1] = 50.0;
    x[vocab + 99_999] = f32::NAN;
    x[vocab + 5] = 1e30;
    x[2 * vocab..].fill(f32::NEG_INFINITY);
    let (dx, dout) = (Dev::from(&x), Dev::from(&[-1i32; 3]));
    unsafe { assert_ok(cuda_argmax(dx.p(), dout.p(), 3, vocab as i32, s.raw())) };
    s.sync();
    assert_eq!(dout.read(), vec![7, 99_999, 0]);
}

#[test]
fn gemm_matches_the_cpu_and_handles_in_place() {
    if !present("gemm_matches_the_cpu_and_handles_in_place") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(103);
    for (batch, m, n, k) in [(1, 1, 1, 1), (1, 31, 33, 17), (3, 64, 65, 66), (1, 257, 129, 300), (2, 1, 4096, 512)] {
        let (a, b, c0) = (rng.vec(batch * m * k, 1.0), rng.vec(batch * k * n, 1.0), rng.vec(batch * m * n, 1.0));
        for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, -1.5)] {
            let (da, db) = (Dev::from(&a), Dev::from(&b));
            let dc = Dev::from(&if beta == 0.0 { vec![f32::NAN; c0.len()] } else { c0.clone() });
            let mut c = c0.clone();
            let dims = (batch as i32, m as i32, n as i32, k as i32);
            unsafe {
                assert_ok(cuda_gemm_batched(da.p(), db.p(), dc.p(), dims.0, dims.1, dims.2, dims.3, alpha, beta, s.raw()));
                assert_ok(cuda_gemm_batched(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), dims.0, dims.1, dims.2, dims.3, alpha, beta, NULL));
            }
            s.sync();
            let tol = 1e-5 * (k as f64).sqrt();
            assert_close(&dc.read(), &f64s(&c), tol, tol, &format!("gemm {batch}x{m}x{n}x{k}"));
        }
    }
    // C is A's very buffer (K == N): the product must use A's old values.
    let nn = 48;
    let (a, b) = (rng.vec(nn * nn, 1.0), rng.vec(nn * nn, 1.0));
    let mut want = a.clone();
    unsafe { cuda_gemm(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), nn as i32, nn as i32, nn as i32, 1.0, 0.25, NULL) };
    let (da, db) = (Dev::from(&a), Dev::from(&b));
    unsafe { assert_ok(cuda_gemm(da.p(), db.p(), da.p(), nn as i32, nn as i32, nn as i32, 1.0, 0.25, s.raw())) };
    s.sync();
    assert_close(&da.read(), &f64s(&want), 1e-5, 1e-5, "gemm C == A");
}

#[test]
fn optimizer_ops_match_the_cpu() {
    if !present("optimizer_ops_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(104);
    for n in [1usize, 33, 4097, (1 << 20) + 5] {
        let (p, g) = (rng.vec(n, 1.0), rng.vec(n, 0.1));
        let (m, v) = (rng.vec(n, 0.01), rng.vec(n, 0.001).iter().map(|x| x.abs()).collect::<Vec<_>>());
        let (dp, dg, dm, dv) = (Dev::from(&p), Dev::from(&g), Dev::from(&m), Dev::from(&v));
        let (mut hp, mut hm, mut hv) = (p.clone(), m.clone(), v.clone());
        unsafe {
            assert_ok(cuda_adamw_step(dp.p(), dg.p(), dm.p(), dv.p(), 1e-3, 0.9, 0.999, 1e-8, 0.01, 7, n as i64, s.raw()));
            assert_ok(cuda_adamw_step(hp.as_mut_ptr(), g.as_ptr(), hm.as_mut_ptr(), hv.as_mut_ptr(), 1e-3, 0.9, 0.999, 1e-8, 0.01, 7, n as i64, NULL));
        }
        s.sync();
        agree(&dp.read(), &hp, 1e-6, "adamw param");
        agree(&dm.read(), &hm, 1e-6, "adamw m");
        agree(&dv.read(), &hv, 1e-6, "adamw v");

        let norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt() as f32;
        for clip in [norm * 0.5, norm * 2.0] {
            let dg = Dev::from(&g);
            let (scratch, total) = (Dev::from(&poisoned(n.div_ceil(256))), Dev::from(&[POISON]));
            let (mut hg, mut hs, mut ht) = (g.clone(), poisoned(n.div_ceil(256)), [POISON]);
            unsafe {
                assert_ok(cuda_grad_clip(dg.p(), scratch.p(), total.p(), clip, n as i64, s.raw()));
                assert_ok(cuda_grad_clip(hg.as_mut_ptr(), hs.as_mut_ptr(), ht.as_mut_ptr(), clip, n as i64, NULL));
            }
            s.sync();
            agree(&total.read(), &ht, 1e-5, "total_norm");
            agree(&dg.read(), &hg, 1e-5, "clipped grad");
        }
        let dz = Dev::from(&p);
        unsafe { assert_ok(cuda_zero_grad(dz.p(), n as i64, s.raw())) };
        s.sync();
        assert!(dz.read().iter().all(|&x| x == 0.0), "zero_grad");
    }
    let (rows, dim, table) = (3000, 96, 50);
    let go = rng.vec(rows * dim, 1.0);
    let idx: Vec<i32> = (0..rows).map(|i| if i % 11 == 0 { -1 } else { rng.below(table) as i32 }).collect();
    let gw = rng.vec(table * dim, 1.0);
    let (dgo, didx, dgw) = (Dev::from(&go), Dev::from(&idx), Dev::from(&gw));
    let mut hgw = gw.clone();
    unsafe {
        assert_ok(cuda_scatter_add(dgo.p(), didx.p(), dgw.p(), rows as i32, dim as i32, s.raw()));
        assert_ok(cuda_scatter_add(go.as_ptr(), idx.as_ptr(), hgw.as_mut_ptr(), rows as i32, dim as i32, NULL));
    }
    s.sync();
    agree(&dgw.read(), &hgw, 1e-5, "scatter_add");
}

#[test]
fn device_results_are_deterministic() {
    if !present("device_results_are_deterministic") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(105);
    let (rows, cols) = (64, 32_000);
    let x = rng.vec(rows * cols, 3.0);
    let targets: Vec<i32> = (0..rows as i32).map(|r| r * 100).collect();
    let (dx, dt) = (Dev::from(&x), Dev::from(&targets));
    let run = || {
        let (dl, dlp) = (Dev::from(&[0.0f32]), Dev::from(&vec![0.0f32; x.len()]));
        let (dscratch, dtotal, dg) = (Dev::from(&vec![0.0f32; x.len().div_ceil(256)]), Dev::from(&[0.0f32]), Dev::from(&x));
        unsafe {
            assert_ok(cuda_cross_entropy_forward(dx.p(), dt.p(), dl.p(), dlp.p(), rows as i32, cols as i32, s.raw()));
            assert_ok(cuda_grad_clip(dg.p(), dscratch.p(), dtotal.p(), 1.0, x.len() as i64, s.raw()));
        }
        s.sync();
        (dl.read()[0].to_bits(), dtotal.read()[0].to_bits(), dlp.read())
    };
    let first = run();
    for _ in 0..3 {
        assert!(run() == first, "a device reduction changed between runs");
    }
}

#[test]
fn device_targets_out_of_range_make_the_loss_nan() {
    if !present("device_targets_out_of_range_make_the_loss_nan") {
        return;
    }
    let s = Stream::new();
    let x = vec![0.5f32; 40];
    let (dx, dt, dl, dlp) = (Dev::from(&x), Dev::from(&[1i32, 10, 2, 3]), Dev::from(&[0.0f32]), Dev::from(&vec![0.0f32; 40]));
    unsafe { assert_ok(cuda_cross_entropy_forward(dx.p(), dt.p(), dl.p(), dlp.p(), 4, 10, s.raw())) };
    s.sync();
    assert!(dl.read()[0].is_nan());
}

#[test]
fn mixed_host_and_device_operands_are_staged() {
    if !present("mixed_host_and_device_operands_are_staged") {
        return;
    }
    let mut rng = Rng::new(107);
    let n = 10_000;
    let (a, b) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
    let da = Dev::from(&a);
    let mut y = poisoned(n);
    unsafe { assert_ok(cuda_add(da.p(), b.as_ptr(), y.as_mut_ptr(), n as i64, NULL)) };
    assert_eq!(y, a.iter().zip(&b).map(|(x, z)| x + z).collect::<Vec<_>>(), "device a + host b -> host y");
    let (m, k, nn) = (200, 300, 100);
    let (am, bm) = (rng.vec(m * k, 1.0), rng.vec(k * nn, 1.0));
    let (dam, dc) = (Dev::from(&am), Dev::from(&vec![0.0f32; m * nn]));
    let mut c = vec![0.0f32; m * nn];
    unsafe {
        assert_ok(cuda_gemm(dam.p(), bm.as_ptr(), dc.p(), m as i32, nn as i32, k as i32, 1.0, 0.0, NULL));
        cuda_gemm(am.as_ptr(), bm.as_ptr(), c.as_mut_ptr(), m as i32, nn as i32, k as i32, 1.0, 0.0, NULL);
    }
    assert_close(&dc.read(), &f64s(&c), 2e-4, 2e-4, "device A, host B, device C");
}

#[test]
fn invalid_arguments_on_device_pointers_are_still_rejected() {
    if !present("invalid_arguments_on_device_pointers_are_still_rejected") {
        return;
    }
    let s = Stream::new();
    let dy = Dev::from(&poisoned(64));
    unsafe {
        assert_invalid(cuda_silu(std::ptr::null(), dy.p(), 64, s.raw()), "cuda_silu", "input is NULL");
        assert_invalid(cuda_softmax(dy.p(), dy.p().add(1), 2, 30, s.raw()), "cuda_softmax", "partially overlaps");
        assert_invalid(cuda_adamw_step(dy.p(), dy.p(), dy.p(), dy.p(), 1.0, 0.9, 0.99, 1e-8, 0.0, 0, 64, s.raw()), "cuda_adamw_step", "step must be >= 1");
    }
    assert_untouched(&dy.read(), "device output");
}

#[test]
fn many_threads_on_their_own_streams_agree_with_serial() {
    if !present("many_threads_on_their_own_streams_agree_with_serial") {
        return;
    }
    let mut rng = Rng::new(108);
    let (rows, cols) = (16, 5000);
    let x = rng.vec(rows * cols, 2.0);
    let mut want = poisoned(x.len());
    unsafe { cuda_softmax(x.as_ptr(), want.as_mut_ptr(), rows as i32, cols as i32, NULL) };
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let s = Stream::new();
                let (dx, dy) = (Dev::from(&x), Dev::from(&poisoned(x.len())));
                for _ in 0..20 {
                    unsafe { assert_ok(cuda_softmax(dx.p(), dy.p(), rows as i32, cols as i32, s.raw())) };
                }
                s.sync();
                agree(&dy.read(), &want, 2e-6, "softmax from a thread");
            });
        }
    });
}

#[test]
fn rope_calls_match_the_cpu() {
    if !present("rope_calls_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(109);
    for (batch, seq, hq, hkv, d, offset, alpha) in [(1, 1, 1, 1, 2, 0, 1.0f32), (2, 17, 4, 2, 64, 5, 1.0), (1, 33, 3, 3, 128, 100, 4.0)] {
        let rows = seq + offset;
        let (mut f, df) = (poisoned(rows * d / 2), Dev::from(&poisoned(rows * d / 2)));
        let (b, sq, d32, off) = (batch as i32, seq as i32, d as i32, offset as i32);
        unsafe {
            assert_ok(cuda_rope_freqs(df.p(), rows as i32, d32, 10000.0, alpha, s.raw()));
            assert_ok(cuda_rope_freqs(f.as_mut_ptr(), rows as i32, d32, 10000.0, alpha, NULL));
        }
        s.sync();
        agree(&df.read(), &f, 1e-6, "freqs");
        let (q, k) = (rng.vec(batch * seq * hq * d, 1.0), rng.vec(batch * seq * hkv * d, 1.0));
        let (dq, dk) = (Dev::from(&q), Dev::from(&k));
        let (dqo, dko) = (Dev::from(&poisoned(q.len())), Dev::from(&poisoned(k.len())));
        let (mut qo, mut ko) = (poisoned(q.len()), poisoned(k.len()));
        unsafe {
            assert_ok(cuda_rope_forward(dq.p(), df.p(), dqo.p(), b, sq, hq as i32, d32, off, s.raw()));
            assert_ok(cuda_rope_forward(q.as_ptr(), f.as_ptr(), qo.as_mut_ptr(), b, sq, hq as i32, d32, off, NULL));
            s.sync();
            agree(&dqo.read(), &qo, 2e-6, "rope_forward");
            assert_ok(cuda_rope_qk(dq.p(), dk.p(), df.p(), dqo.p(), dko.p(), b, sq, hq as i32, hkv as i32, d32, off, s.raw()));
            assert_ok(cuda_rope_qk(q.as_ptr(), k.as_ptr(), f.as_ptr(), qo.as_mut_ptr(), ko.as_mut_ptr(), b, sq, hq as i32, hkv as i32, d32, off, NULL));
            s.sync();
            agree(&dqo.read(), &qo, 2e-6, "rope_qk q");
            agree(&dko.read(), &ko, 2e-6, "rope_qk k");
            // In place, plain and NTK-scaled (seq_len > orig_len).
            let k2 = rng.vec(q.len(), 1.0);
            for orig_len in [seq as i32 + 1, (seq as i32 / 2).max(0)] {
                let (dqi, dki) = (Dev::from(&q), Dev::from(&k2));
                let (mut qi, mut ki) = (q.clone(), k2.clone());
                let ntk = if d >= 4 { 2.0 } else { 1.0 };
                assert_ok(cuda_rope_ntk(dqi.p(), dki.p(), df.p(), b, sq, hq as i32, d32, ntk, orig_len, s.raw()));
                assert_ok(cuda_rope_ntk(qi.as_mut_ptr(), ki.as_mut_ptr(), f.as_ptr(), b, sq, hq as i32, d32, ntk, orig_len, NULL));
                s.sync();
                agree(&dqi.read(), &qi, 2e-6, "rope_ntk q");
                agree(&dki.read(), &ki, 2e-6, "rope_ntk k");
            }
        }
    }
}

#[test]
fn device_sampling_agrees_with_the_cpu() {
    if !present("device_sampling_agrees_with_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(110);
    // Rows longer than a tile, up to 32 of them (all samplers) or 64 (plain and
    // top-p): sampling by clusters on sm_90+; 65 rows: one block per row.
    for (rows, vocab) in [(3000, 100), (65, 131_072), (40, 131_072), (1, 131_072), (5, 4097), (32, 20_000)] {
        let x = rng.vec(rows * vocab, 2.0);
        let seeds: Vec<u64> = (0..rows as u64).map(|i| i * 31 + 7).collect();
        let (dx, ds, dout) = (Dev::from(&x), Dev::from(&seeds), Dev::from(&vec![-1i32; rows]));
        type Call = unsafe extern "C" fn(*const f32, *mut i32, *const u64, i32, i32, f32, *mut std::ffi::c_void) -> i32;
        unsafe extern "C" fn topk(l: *const f32, o: *mut i32, s: *const u64, b: i32, v: i32, t: f32, st: *mut std::ffi::c_void) -> i32 {
            unsafe { cuda_topk_sample(l, o, s, b, v, 50, t, st) }
        }
        unsafe extern "C" fn topp(l: *const f32, o: *mut i32, s: *const u64, b: i32, v: i32, t: f32, st: *mut std::ffi::c_void) -> i32 {
            unsafe { cuda_topp_sample(l, o, s, b, v, 0.9, t, st) }
        }
        // A small nucleus: the cluster kernel's estimate leaves more rows to its exact path.
        unsafe extern "C" fn topp_half(l: *const f32, o: *mut i32, s: *const u64, b: i32, v: i32, t: f32, st: *mut std::ffi::c_void) -> i32 {
            unsafe { cuda_topp_sample(l, o, s, b, v, 0.5, t, st) }
        }
        for (name, sampler) in [("sample", cuda_sample as Call), ("topk", topk), ("topp", topp), ("topp 0.5", topp_half)] {
            for temperature in [0.0f32, 0.8] {
                let mut cpu = vec![-1i32; rows];
                unsafe {
                    assert_ok(sampler(dx.p(), dout.p(), ds.p(), rows as i32, vocab as i32, temperature, s.raw()));
                    assert_ok(sampler(x.as_ptr(), cpu.as_mut_ptr(), seeds.as_ptr(), rows as i32, vocab as i32, temperature, NULL));
                }
                s.sync();
                let gpu = dout.read();
                let same = gpu.iter().zip(&cpu).filter(|(a, b)| a == b).count();
                let needed = if temperature == 0.0 { rows } else { rows - rows / 1000 };
                assert!(same >= needed, "{name} T={temperature} vocab {vocab}: GPU and CPU agree on {same} of {rows} draws");
                if name == "topk" && temperature > 0.0 {
                    for (r, &t) in gpu.iter().enumerate() {
                        let row = &x[r * vocab..(r + 1) * vocab];
                        let above = row.iter().filter(|&&v| v > row[t as usize]).count();
                        assert!(above < 50, "topk row {r}: token {t} outside the top 50");
                    }
                }
            }
        }
    }
}

#[test]
fn device_attention_matches_the_cpu() {
    if !present("device_attention_matches_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(111);
    for (batch, seq, heads, d) in [(1, 1, 1, 32), (2, 37, 3, 64), (1, 129, 2, 128), (1, 20, 2, 48)] {
        let (q, k, v, dims) = random_qkv(&mut rng, (batch, seq, heads, d));
        let n = q.len();
        for causal in [0, 1] {
            let (gpu, cpu) = flash_both(&s, &q, &k, &v, dims, causal);
            agree(&gpu, &cpu, 2e-5, &format!("flash {batch}x{seq}x{heads}x{d} causal={causal}"));
        }
        // One shared KV head: causal (NULL mask) and an additive mask with a fully masked row.
        let (kv, vv) = (rng.vec(batch * seq * d, 1.0), rng.vec(batch * seq * d, 1.0));
        let mask = test_mask(seq);
        for m in [None, Some(mask.as_slice())] {
            let (gpu, cpu) = mqa_both(&s, &q, &kv, &vv, m, dims);
            agree(&gpu, &cpu, 2e-5, &format!("mqa {batch}x{seq}x{heads}x{d}"));
        }
        let (dq, dkv, dvv, dout) = (Dev::from(&q), Dev::from(&kv), Dev::from(&vv), Dev::from(&poisoned(n)));
        let mut out = poisoned(n);
        let scale = 1.0 / (d as f32).sqrt();
        // The unfused halves.
        let (dscores, mut scores) = (Dev::from(&poisoned(batch * heads * seq * seq)), poisoned(batch * heads * seq * seq));
        unsafe {
            assert_ok(cuda_attention_scores(dq.p(), dkv.p(), dscores.p(), dims.0, dims.2, dims.1, dims.3, scale, s.raw()));
            assert_ok(cuda_attention_scores(q.as_ptr(), kv.as_ptr(), scores.as_mut_ptr(), dims.0, dims.2, dims.1, dims.3, scale, NULL));
            s.sync();
            agree(&dscores.read(), &scores, 2e-5, "attention_scores");
            let mut w = poisoned(scores.len());
            cuda_softmax(scores.as_ptr(), w.as_mut_ptr(), (batch * heads * seq) as i32, seq as i32, NULL);
            let dw = Dev::from(&w);
            assert_ok(cuda_attention_output(dw.p(), dvv.p(), dout.p(), dims.0, dims.2, dims.1, dims.3, s.raw()));
            assert_ok(cuda_attention_output(w.as_ptr(), vv.as_ptr(), out.as_mut_ptr(), dims.0, dims.2, dims.1, dims.3, NULL));
        }
        s.sync();
        agree(&dout.read(), &out, 2e-5, "attention_output");
    }
}

/// What still has no GPU kernel (general attention with head_dim > 256):
/// device pointers are -1 naming the reason, nothing is written, and host
/// memory still works on a GPU machine. (The ported ops are in
/// tests/gpu_training.rs and tests/gpu_half.rs.)
#[test]
fn training_ops_refuse_device_pointers_and_run_host_memory() {
    if !present("training_ops_refuse_device_pointers_and_run_host_memory") {
        return;
    }
    let s = Stream::new();
    let d = 264;
    let (x, y, lse) = (Dev::from(&vec![0.5f32; 4 * d]), Dev::from(&poisoned(4 * d)), Dev::from(&poisoned(4)));
    let code = unsafe { cudann_attention_forward(x.p().cast(), x.p().cast(), x.p().cast(), std::ptr::null(), y.p().cast(), lse.p(), 1, 4, 4, 4, 1, 1, d as i32, 0, 1, 0.5, CUDANN_F32, s.raw()) };
    assert_eq!(code, CUDANN_NOT_AVAILABLE);
    assert!(cudann::error::last_error().contains("no GPU kernel"), "{}", cudann::error::last_error());
    assert_untouched(&y.read(), "device output");
    let host = vec![0.5f32; 64];
    let mut out = poisoned(64);
    assert_ok(unsafe { cudann_gelu(host.as_ptr(), out.as_mut_ptr(), 64, NULL) });
    assert!(out.iter().all(|&v| (v - 0.345_714).abs() < 1e-5), "gelu(0.5) = {}", out[0]);
}

/// cudann_gemm_ex on cuBLAS: every transpose pair, leading dimensions past the
/// row, batches with strides (0 included), beta, k = 0 and in place, against
/// the CPU backend.
#[test]
fn gemm_ex_matches_the_cpu() {
    if !present("gemm_ex_matches_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(102);
    for (m, n, k, batch) in [(1, 4096, 512, 1), (33, 65, 17, 3), (64, 31, 128, 2), (5, 7, 0, 2)] {
        for (ta, tb) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let (ar, ac) = if ta == 1 { (k, m) } else { (m, k) };
            let (br, bc) = if tb == 1 { (n, k) } else { (k, n) };
            let (lda, ldb, ldc) = (ac + 3, bc + 1, n + 2);
            let (sa, sb, sc) = (0, br * ldb + 5, m * ldc + 7);
            let a = rng.vec(ar.max(1) * lda, 1.0);
            let b = rng.vec(batch * sb.max(br * ldb), 1.0);
            let c0 = rng.vec(batch * sc, 1.0);
            let (da, db, dc) = (Dev::from(&a), Dev::from(&b), Dev::from(&c0));
            let mut c = c0.clone();
            let call = |a: *const f32, b: *const f32, c: *mut f32, stream| unsafe {
                cudann_gemm_ex(ta, tb, m as i32, n as i32, k as i32, 0.75, a.cast(), CUDANN_F32, lda as i64, sa as i64, b.cast(), CUDANN_F32, ldb as i64, sb as i64, 0.5, c.cast(), CUDANN_F32, ldc as i64, sc as i64, batch as i32, stream)
            };
            assert_ok(call(da.p(), db.p(), dc.p(), s.raw()));
            assert_ok(call(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), NULL));
            s.sync();
            agree(&dc.read(), &c, 1e-5, &format!("gemm_ex m{m} n{n} k{k} batch{batch} ta{ta} tb{tb}"));
        }
    }
    // In place: C is exactly A (square, no transposes).
    let a = rng.vec(48 * 48, 1.0);
    let b = rng.vec(48 * 48, 1.0);
    let (da, db) = (Dev::from(&a), Dev::from(&b));
    let mut host = a.clone();
    unsafe {
        assert_ok(cudann_gemm_ex(0, 0, 48, 48, 48, 1.0, da.p().cast(), CUDANN_F32, 48, 0, db.p().cast(), CUDANN_F32, 48, 0, 0.0, da.p().cast(), CUDANN_F32, 48, 0, 1, s.raw()));
        assert_ok(cudann_gemm_ex(0, 0, 48, 48, 48, 1.0, host.as_ptr().cast(), CUDANN_F32, 48, 0, b.as_ptr().cast(), CUDANN_F32, 48, 0, 0.0, host.as_mut_ptr().cast(), CUDANN_F32, 48, 0, 1, NULL));
    }
    s.sync();
    agree(&da.read(), &host, 1e-5, "gemm_ex in place");
}
