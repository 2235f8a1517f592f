//! The GPU kernels of the training and inference ops: every ported op with
//! device pointers on a non-default stream, compared with the CPU backend on
//! host copies of the same inputs (itself checked against float64 in the
//! family's own test file): bitwise where the op is exact (gathers, copies,
//! integers, and the ops computed in the CPU's order), otherwise within a
//! stated tolerance scaled by the magnitude of the terms summed. In-place
//! calls, invalid arguments, and run-to-run determinism of the reductions.
//! Skipped, visibly, where there is no GPU.
mod common;
use common::device::{Dev, Stream, present};
use common::*;
use cudann::*;

/// Float32 results of two backends: within `rtol` (plus a tiny absolute slack).
#[track_caller]
fn agree(gpu: &[f32], cpu: &[f32], rtol: f64, what: &str) {
    assert_close(gpu, &f64s(cpu), rtol, 1e-6, what);
}

/// |gpu - cpu| <= rtol * scale[i] (+ 1e-30): for results that sum or cancel
/// terms, `scale` is the size of those terms (e.g. Σ|term| of a column sum).
#[track_caller]
fn agree_scaled(gpu: &[f32], cpu: &[f32], scale: &[f64], rtol: f64, what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    for (i, ((&g, &c), &m)) in gpu.iter().zip(cpu).zip(scale).enumerate() {
        let ok = if c.is_nan() { g.is_nan() } else { (g as f64 - c as f64).abs() <= rtol * m + 1e-30 };
        assert!(ok, "{what}[{i}]: gpu {g}, cpu {c} (tolerance {})", rtol * m);
    }
}

/// Bitwise equality (NaN payloads and signed zeros included).
#[track_caller]
fn same_bits(gpu: &[f32], cpu: &[f32], what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(g.to_bits() == c.to_bits(), "{what}[{i}]: gpu {g} ({:#x}), cpu {c} ({:#x})", g.to_bits(), c.to_bits());
    }
}

/// Σ_r |a[r, c]| per column of a[rows, cols].
fn column_magnitudes(a: &[f64], cols: usize) -> Vec<f64> {
    let mut m = vec![0.0; cols];
    for row in a.chunks(cols) {
        m.iter_mut().zip(row).for_each(|(m, v)| *m += v.abs());
    }
    m
}

/// Inputs with the awkward values the activations special-case.
fn with_specials(mut x: Vec<f32>) -> Vec<f32> {
    let specials = [0.0, -0.0, 1e-40, -1e-40, 1.0, -1.0, -0.75, -1.28, 20.0, -20.0, 49.0, 51.0, -51.0, -99.0, -101.0, 150.0, -150.0, 3e38, -3e38, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    for (x, s) in x.iter_mut().zip(specials) {
        *x = s;
    }
    x
}

#[test]
fn activations_match_the_cpu() {
    if !present("activations_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(200);
    // Tolerance: expf is within 2 ulp on the GPU and the CPU's exp within 1, the
    // formulas are the same; the derivatives cross zero (SiLU' at -1.28, GELU'
    // at -0.75), hence the absolute 1e-6 on top of rtol 1e-5.
    for n in [1usize, 31, 33, 1000, 4097, (1 << 20) + 3] {
        let (x, dy, u) = (with_specials(rng.vec(n, 6.0)), rng.vec(n, 2.0), rng.vec(n, 2.0));
        let (dx_, ddy, du_) = (Dev::from(&x), Dev::from(&dy), Dev::from(&u));
        let (dout, dout2) = (Dev::from(&poisoned(n)), Dev::from(&poisoned(n)));
        let (mut out, mut out2) = (poisoned(n), poisoned(n));
        let ni = n as i64;
        unsafe {
            assert_ok(cudann_silu_backward(ddy.p(), dx_.p(), dout.p(), ni, s.raw()));
            assert_ok(cudann_silu_backward(dy.as_ptr(), x.as_ptr(), out.as_mut_ptr(), ni, NULL));
            s.sync();
            assert_close(&dout.read(), &f64s(&out), 1e-5, 1e-6, &format!("silu_backward n={n}"));

            assert_ok(cudann_gelu(dx_.p(), dout.p(), ni, s.raw()));
            assert_ok(cudann_gelu(x.as_ptr(), out.as_mut_ptr(), ni, NULL));
            s.sync();
            assert_close(&dout.read(), &f64s(&out), 1e-5, 1e-6, &format!("gelu n={n}"));

            assert_ok(cudann_gelu_backward(ddy.p(), dx_.p(), dout.p(), ni, s.raw()));
            assert_ok(cudann_gelu_backward(dy.as_ptr(), x.as_ptr(), out.as_mut_ptr(), ni, NULL));
            s.sync();
            assert_close(&dout.read(), &f64s(&out), 1e-5, 1e-6, &format!("gelu_backward n={n}"));

            assert_ok(cudann_swiglu(dx_.p().cast(), du_.p().cast(), dout.p().cast(), ni, CUDANN_F32, s.raw()));
            assert_ok(cudann_swiglu(x.as_ptr().cast(), u.as_ptr().cast(), out.as_mut_ptr().cast(), ni, CUDANN_F32, NULL));
            s.sync();
            assert_close(&dout.read(), &f64s(&out), 1e-5, 1e-6, &format!("swiglu n={n}"));

            assert_ok(cudann_swiglu_backward(ddy.p(), dx_.p(), du_.p(), dout.p(), dout2.p(), ni, s.raw()));
            assert_ok(cudann_swiglu_backward(dy.as_ptr(), x.as_ptr(), u.as_ptr(), out.as_mut_ptr(), out2.as_mut_ptr(), ni, NULL));
            s.sync();
            assert_close(&dout.read(), &f64s(&out), 1e-5, 1e-6, &format!("swiglu_backward d_gate n={n}"));
            assert_close(&dout2.read(), &f64s(&out2), 1e-5, 1e-6, &format!("swiglu_backward d_up n={n}"));
        }
    }
    // In place: d_input == d_output, output == input, d_gate == gate and d_up == up.
    let n = 4097;
    let (x, dy, u) = (rng.vec(n, 3.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
    let (mut want, mut want2) = (poisoned(n), poisoned(n));
    unsafe {
        let ddy = Dev::from(&dy);
        assert_ok(cudann_silu_backward(ddy.p(), Dev::from(&x).p(), ddy.p(), n as i64, s.raw()));
        assert_ok(cudann_silu_backward(dy.as_ptr(), x.as_ptr(), want.as_mut_ptr(), n as i64, NULL));
        s.sync();
        assert_close(&ddy.read(), &f64s(&want), 1e-5, 1e-6, "silu_backward d_input == d_output");

        let dxi = Dev::from(&x);
        assert_ok(cudann_gelu(dxi.p(), dxi.p(), n as i64, s.raw()));
        assert_ok(cudann_gelu(x.as_ptr(), want.as_mut_ptr(), n as i64, NULL));
        s.sync();
        assert_close(&dxi.read(), &f64s(&want), 1e-5, 1e-6, "gelu in place");

        let (dg, du) = (Dev::from(&x), Dev::from(&u));
        assert_ok(cudann_swiglu_backward(Dev::from(&dy).p(), dg.p(), du.p(), dg.p(), du.p(), n as i64, s.raw()));
        assert_ok(cudann_swiglu_backward(dy.as_ptr(), x.as_ptr(), u.as_ptr(), want.as_mut_ptr(), want2.as_mut_ptr(), n as i64, NULL));
        s.sync();
        assert_close(&dg.read(), &f64s(&want), 1e-5, 1e-6, "swiglu_backward d_gate == gate");
        assert_close(&du.read(), &f64s(&want2), 1e-5, 1e-6, "swiglu_backward d_up == up");
    }
}

#[test]
fn bias_ops_match_the_cpu() {
    if !present("bias_ops_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(201);
    for (rows, cols) in [(1, 1), (3, 31), (5, 33), (7, 1000), (1000, 36), (3, 4097), (20_000, 3), (0, 5)] {
        let n = rows * cols;
        let (x, b) = (rng.vec(n, 2.0), rng.vec(cols, 1.0));
        let (dx_, db, dy) = (Dev::from(&x), Dev::from(&b), Dev::from(&poisoned(n)));
        let mut y = poisoned(n);
        let (r, c) = (rows as i32, cols as i32);
        unsafe {
            // One rounded add per element: bitwise.
            assert_ok(cudann_bias_add(dx_.p(), db.p(), dy.p(), r, c, s.raw()));
            assert_ok(cudann_bias_add(x.as_ptr(), b.as_ptr(), y.as_mut_ptr(), r, c, NULL));
            s.sync();
            same_bits(&dy.read(), &y, &format!("bias_add {rows}x{cols}"));

            // Column sums: f32 runs of 32 rows into f64 on both backends, in
            // different groupings: each within 32 roundings (2e-6) of
            // Σ|d_output| per column, so the two within 4e-6.
            let (dsum, dsum2) = (Dev::from(&poisoned(cols)), Dev::from(&poisoned(cols)));
            let mut sum = poisoned(cols);
            assert_ok(cudann_bias_backward(dx_.p(), dsum.p(), r, c, s.raw()));
            assert_ok(cudann_bias_backward(dx_.p(), dsum2.p(), r, c, s.raw()));
            assert_ok(cudann_bias_backward(x.as_ptr(), sum.as_mut_ptr(), r, c, NULL));
            s.sync();
            let got = dsum.read();
            agree_scaled(&got, &sum, &column_magnitudes(&f64s(&x), cols), 4e-6, &format!("bias_backward {rows}x{cols}"));
            same_bits(&dsum2.read(), &got, "bias_backward run to run");
        }
    }
    // In place: output == input; d_bias == d_output (one row).
    let (x, b) = (rng.vec(64 * 48, 1.0), rng.vec(48, 1.0));
    let mut want = poisoned(x.len());
    unsafe {
        let dx_ = Dev::from(&x);
        assert_ok(cudann_bias_add(dx_.p(), Dev::from(&b).p(), dx_.p(), 64, 48, s.raw()));
        assert_ok(cudann_bias_add(x.as_ptr(), b.as_ptr(), want.as_mut_ptr(), 64, 48, NULL));
        s.sync();
        same_bits(&dx_.read(), &want, "bias_add in place");
        let row = Dev::from(&b);
        assert_ok(cudann_bias_backward(row.p(), row.p(), 1, 48, s.raw()));
        s.sync();
        same_bits(&row.read(), &b, "bias_backward of one row in place");
    }
}

#[test]
fn softmax_backward_and_norms_match_the_cpu() {
    if !present("softmax_backward_and_norms_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(202);
    let eps = 1e-5f32;
    // Row widths for each RMSNorm backward kernel (float4 rows of up to 1, 2,
    // 4, 8 thousand, unaligned, too wide) and each softmax backward (300 rows
    // of 9000: more than one a block on any GPU).
    let shapes = [(1, 1), (3, 31), (5, 33), (7, 1000), (3, 4097), (2, 40_000), (600, 7), (2000, 64), (5000, 96), (9, 1536), (5, 3000), (40, 4096), (3, 8192), (300, 9000)];
    for (rows, cols) in shapes {
        let n = rows * cols;
        let (r, c) = (rows as i32, cols as i32);
        let (dy, x) = (rng.vec(n, 1.0), rng.vec(n, 1.5));
        let (w, b) = (rng.vec(cols, 1.0), rng.vec(cols, 0.5));
        let (ddy, dx_, dw, db) = (Dev::from(&dy), Dev::from(&x), Dev::from(&w), Dev::from(&b));
        let mut y = poisoned(n);
        unsafe { assert_ok(cuda_softmax(x.as_ptr(), y.as_mut_ptr(), r, c, NULL)) };
        let dyv = Dev::from(&y);
        let (dout, dg1, dg2) = (Dev::from(&poisoned(n)), Dev::from(&poisoned(cols)), Dev::from(&poisoned(cols)));
        let (mut out, mut g1, mut g2) = (poisoned(n), poisoned(cols), poisoned(cols));
        unsafe {
            // dx = y (dy - Σ dy y): error of the row dot times y.
            assert_ok(cudann_softmax_backward(ddy.p(), dyv.p(), dout.p(), r, c, s.raw()));
            assert_ok(cudann_softmax_backward(dy.as_ptr(), y.as_ptr(), out.as_mut_ptr(), r, c, NULL));
            s.sync();
            let dots: Vec<f64> = (0..rows).map(|r| (r * cols..(r + 1) * cols).map(|j| (dy[j] * y[j]).abs() as f64).sum()).collect();
            let scale: Vec<f64> = (0..n).map(|i| y[i].abs() as f64 * (dy[i].abs() as f64 + dots[i / cols])).collect();
            agree_scaled(&dout.read(), &out, &scale, 1e-5, &format!("softmax_backward {rows}x{cols}"));

            // LayerNorm: rtol 1e-5 of |x̂ w| + |mean| rstd |w| + |b| (the
            // statistics' rounding, and x - mean's).
            assert_ok(cudann_layernorm(dx_.p(), dw.p(), db.p(), dout.p(), r, c, eps, s.raw()));
            assert_ok(cudann_layernorm(x.as_ptr(), w.as_ptr(), b.as_ptr(), out.as_mut_ptr(), r, c, eps, NULL));
            s.sync();
            let stats = row_stats(&x, cols, eps, true);
            let scale: Vec<f64> = (0..n)
                .map(|i| {
                    let (mean, rstd) = stats[i / cols];
                    let w = (w[i % cols] as f64).abs();
                    ((x[i] as f64 - mean) * rstd).abs() * w + mean.abs() * rstd * w + (b[i % cols] as f64).abs()
                })
                .collect();
            agree_scaled(&dout.read(), &out, &scale, 1e-5, &format!("layernorm {rows}x{cols}"));

            // Backwards: d_input within 2e-5 of the size of its terms, the
            // weight and bias gradients (column sums) within 1e-5 of Σ|term|.
            for center in [false, true] {
                let what = if center { "layernorm_backward" } else { "rmsnorm_backward" };
                let run = |dx: *mut f32, g1: *mut f32, g2: *mut f32, dev: bool| {
                    let st = if dev { s.raw() } else { NULL };
                    let (dyp, xp, wp) = if dev { (ddy.p() as *const f32, dx_.p() as *const f32, dw.p() as *const f32) } else { (dy.as_ptr(), x.as_ptr(), w.as_ptr()) };
                    if center {
                        cudann_layernorm_backward(dyp, xp, wp, dx, g1, g2, r, c, eps, st)
                    } else {
                        cudann_rmsnorm_backward(dyp, xp, wp, dx, g1, r, c, eps, st)
                    }
                };
                assert_ok(run(dout.p(), dg1.p(), dg2.p(), true));
                assert_ok(run(out.as_mut_ptr(), g1.as_mut_ptr(), g2.as_mut_ptr(), false));
                s.sync();
                let (dx_scale, w_scale, b_scale) = norm_backward_scales(&dy, &x, &w, cols, eps, center);
                agree_scaled(&dout.read(), &out, &dx_scale, 2e-5, &format!("{what} d_input {rows}x{cols}"));
                let got_w = dg1.read();
                agree_scaled(&got_w, &g1, &w_scale, 1e-5, &format!("{what} d_weight {rows}x{cols}"));
                if center {
                    agree_scaled(&dg2.read(), &g2, &b_scale, 1e-5, &format!("{what} d_bias {rows}x{cols}"));
                }
                // Run to run: the same bits.
                let again = Dev::from(&poisoned(cols));
                assert_ok(run(dout.p(), again.p(), dg2.p(), true));
                s.sync();
                same_bits(&again.read(), &got_w, &format!("{what} d_weight run to run"));
            }
        }
    }
    // In place: softmax backward d_input == d_output, LayerNorm output == input,
    // the norm backwards with d_input == d_output and == input (their kernels use
    // d_input as scratch: the library copies the aliased input first).
    let (rows, cols) = (37, 1000);
    let n = rows * cols;
    let (dy, x, w, b) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(cols, 1.0), rng.vec(cols, 1.0));
    let (r, c) = (rows as i32, cols as i32);
    let mut y = poisoned(n);
    unsafe { assert_ok(cuda_softmax(x.as_ptr(), y.as_mut_ptr(), r, c, NULL)) };
    let (mut want, mut gw, mut gb) = (poisoned(n), poisoned(cols), poisoned(cols));
    // Softmax backward with d_input == d_output and == y, for each kernel (rows
    // of 1000; 9000, held in registers; 40000, y in shared memory only).
    for (srows, scols) in [(rows, cols), (150, 9000), (3, 40_000)] {
        let sn = srows * scols;
        let (sr, sc) = (srows as i32, scols as i32);
        let (sdy, sx) = (rng.vec(sn, 1.0), rng.vec(sn, 1.0));
        let (mut sy, mut swant) = (poisoned(sn), poisoned(sn));
        unsafe {
            assert_ok(cuda_softmax(sx.as_ptr(), sy.as_mut_ptr(), sr, sc, NULL));
            assert_ok(cudann_softmax_backward(sdy.as_ptr(), sy.as_ptr(), swant.as_mut_ptr(), sr, sc, NULL));
            let (ddy, dyv) = (Dev::from(&sdy), Dev::from(&sy));
            assert_ok(cudann_softmax_backward(ddy.p(), Dev::from(&sy).p(), ddy.p(), sr, sc, s.raw()));
            assert_ok(cudann_softmax_backward(Dev::from(&sdy).p(), dyv.p(), dyv.p(), sr, sc, s.raw()));
            s.sync();
            agree(&ddy.read(), &swant, 1e-4, &format!("softmax_backward {srows}x{scols} into dy"));
            agree(&dyv.read(), &swant, 1e-4, &format!("softmax_backward {srows}x{scols} into y"));
        }
    }
    unsafe {

        let dx_ = Dev::from(&x);
        assert_ok(cudann_layernorm(dx_.p(), Dev::from(&w).p(), Dev::from(&b).p(), dx_.p(), r, c, eps, s.raw()));
        assert_ok(cudann_layernorm(x.as_ptr(), w.as_ptr(), b.as_ptr(), want.as_mut_ptr(), r, c, eps, NULL));
        s.sync();
        agree(&dx_.read(), &want, 1e-4, "layernorm in place");

        assert_ok(cudann_layernorm_backward(dy.as_ptr(), x.as_ptr(), w.as_ptr(), want.as_mut_ptr(), gw.as_mut_ptr(), gb.as_mut_ptr(), r, c, eps, NULL));
        let (dx_scale, w_scale, _) = norm_backward_scales(&dy, &x, &w, cols, eps, true);
        for alias_x in [false, true] {
            let (ddy, dx_, dgw, dgb) = (Dev::from(&dy), Dev::from(&x), Dev::from(&poisoned(cols)), Dev::from(&poisoned(cols)));
            let out = if alias_x { dx_.p() } else { ddy.p() };
            assert_ok(cudann_layernorm_backward(ddy.p(), dx_.p(), Dev::from(&w).p(), out, dgw.p(), dgb.p(), r, c, eps, s.raw()));
            s.sync();
            let got = if alias_x { dx_.read() } else { ddy.read() };
            agree_scaled(&got, &want, &dx_scale, 2e-5, &format!("layernorm_backward in place (alias x: {alias_x})"));
            agree_scaled(&dgw.read(), &gw, &w_scale, 1e-5, "layernorm_backward d_weight (in place call)");
        }
        assert_ok(cudann_rmsnorm_backward(dy.as_ptr(), x.as_ptr(), w.as_ptr(), want.as_mut_ptr(), gw.as_mut_ptr(), r, c, eps, NULL));
        let (dx_scale, _, _) = norm_backward_scales(&dy, &x, &w, cols, eps, false);
        let (ddy, dgw) = (Dev::from(&dy), Dev::from(&poisoned(cols)));
        assert_ok(cudann_rmsnorm_backward(ddy.p(), Dev::from(&x).p(), Dev::from(&w).p(), ddy.p(), dgw.p(), r, c, eps, s.raw()));
        s.sync();
        agree_scaled(&ddy.read(), &want, &dx_scale, 2e-5, "rmsnorm_backward d_input == d_output");
    }
    // An invalid argument on device pointers: -2, nothing written.
    let (dx_, dout) = (Dev::from(&x), Dev::from(&poisoned(n)));
    let code = unsafe { cudann_layernorm(dx_.p(), Dev::from(&w).p(), Dev::from(&b).p(), dout.p(), r, c, -1.0, s.raw()) };
    assert_invalid(code, "cudann_layernorm", "eps");
    assert_untouched(&dout.read(), "layernorm output after -2");
}

/// Per row (mean, rstd) in f64 (mean 0 for RMSNorm).
fn row_stats(x: &[f32], cols: usize, eps: f32, center: bool) -> Vec<(f64, f64)> {
    x.chunks(cols)
        .map(|row| {
            let mean = if center { row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64 } else { 0.0 };
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            (mean, 1.0 / (var + eps as f64).sqrt())
        })
        .collect()
}

/// The sizes of the terms behind the norm backwards' results: per element of
/// d_input, rstd (|g| + mean|g| + |x̂| mean|g x̂|) plus the cancellation in the
/// LayerNorm form mean(g x̂) = rstd (mean(g x) - mean mean(g)); per column,
/// Σ|dy x̂| and Σ|dy|.
fn norm_backward_scales(dy: &[f32], x: &[f32], w: &[f32], cols: usize, eps: f32, center: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let stats = row_stats(x, cols, eps, center);
    let mut dx = Vec::with_capacity(x.len());
    let (mut sw, mut sb) = (vec![0.0; cols], vec![0.0; cols]);
    for (&(mean, rstd), (dyr, xr)) in stats.iter().zip(dy.chunks(cols).zip(x.chunks(cols))) {
        let g: Vec<f64> = dyr.iter().zip(w).map(|(&d, &w)| (d as f64 * w as f64).abs()).collect();
        let g_mean = g.iter().sum::<f64>() / cols as f64;
        let gx_mean = g.iter().zip(xr).map(|(g, &x)| g * (x as f64).abs()).sum::<f64>() / cols as f64;
        let cancel = rstd * (gx_mean + mean.abs() * g_mean);
        for (j, (&d, &xv)) in dyr.iter().zip(xr).enumerate() {
            let xhat = ((xv as f64 - mean) * rstd).abs();
            dx.push(rstd * (g[j] + g_mean + (xhat + (xv as f64).abs() * rstd) * cancel));
            sw[j] += (d as f64 * xhat).abs();
            sb[j] += (d as f64).abs();
        }
    }
    (dx, sw, sb)
}

#[test]
fn embedding_matches_the_cpu_bitwise() {
    if !present("embedding_matches_the_cpu_bitwise") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(203);
    // Vocabularies of one bucket of the sort and of many; few ids for many
    // rows, many for few (rows the whole block sums, buckets past a window).
    for (n_ids, vocab, dim) in [(1, 1, 1), (33, 5, 31), (1000, 40, 257), (300, 1000, 1000), (17, 3, 4096), (5000, 7, 12), (4000, 70_000, 20), (3000, 2, 64)] {
        let table = rng.vec(vocab * dim, 1.0);
        // Repeats and padding (-1) included.
        let ids: Vec<i32> = (0..n_ids).map(|i| if i % 7 == 3 { -1 } else { rng.below(vocab) as i32 }).collect();
        let (di, dt) = (Dev::from(&ids), Dev::from(&table));
        let dout = Dev::from(&poisoned(n_ids * dim));
        let mut out = poisoned(n_ids * dim);
        let (n, v, d) = (n_ids as i32, vocab as i32, dim as i32);
        unsafe {
            assert_ok(cudann_embedding(di.p(), dt.p().cast(), dout.p().cast(), n, v, d, CUDANN_F32, s.raw()));
            assert_ok(cudann_embedding(ids.as_ptr(), table.as_ptr().cast(), out.as_mut_ptr().cast(), n, v, d, CUDANN_F32, NULL));
            s.sync();
            same_bits(&dout.read(), &out, &format!("embedding {n_ids} ids, {vocab}x{dim}"));

            // Each row the f32 sum, from 0, of its ids' rows in id order: the same
            // order on both backends, so the same bits.
            let dy = rng.vec(n_ids * dim, 1.0);
            let (ddy, dgt) = (Dev::from(&dy), Dev::from(&poisoned(vocab * dim)));
            let mut gt = poisoned(vocab * dim);
            assert_ok(cudann_embedding_backward(di.p(), ddy.p(), dgt.p(), n, v, d, s.raw()));
            assert_ok(cudann_embedding_backward(ids.as_ptr(), dy.as_ptr(), gt.as_mut_ptr(), n, v, d, NULL));
            s.sync();
            same_bits(&dgt.read(), &gt, &format!("embedding_backward {n_ids} ids, {vocab}x{dim}"));
        }
    }
    // Device ids the host cannot check: an id >= vocab_size gives a NaN row in
    // the lookup and no gradient in the backward.
    let (vocab, dim) = (4, 6);
    let table = rng.vec(vocab * dim, 1.0);
    let ids = [2, 4, -1, 0];
    let (di, dt, dout) = (Dev::from(&ids), Dev::from(&table), Dev::from(&poisoned(4 * dim)));
    unsafe { assert_ok(cudann_embedding(di.p(), dt.p().cast(), dout.p().cast(), 4, vocab as i32, dim as i32, CUDANN_F32, s.raw())) };
    s.sync();
    let got = dout.read();
    same_bits(&got[..dim], &table[2 * dim..3 * dim], "embedding id 2");
    assert!(got[dim..2 * dim].iter().all(|v| v.is_nan()), "id >= vocab: {:?}", &got[dim..2 * dim]);
    assert!(got[2 * dim..3 * dim].iter().all(|&v| v.to_bits() == 0), "padding id");
    same_bits(&got[3 * dim..], &table[..dim], "embedding id 0");
    let dgt = Dev::from(&poisoned(vocab * dim));
    let dy = rng.vec(4 * dim, 1.0);
    unsafe { assert_ok(cudann_embedding_backward(di.p(), Dev::from(&dy).p(), dgt.p(), 4, vocab as i32, dim as i32, s.raw())) };
    s.sync();
    let mut want = vec![0.0f32; vocab * dim];
    want[2 * dim..3 * dim].copy_from_slice(&dy[..dim]);
    want[..dim].copy_from_slice(&dy[3 * dim..]);
    same_bits(&dgt.read(), &want, "embedding_backward skips id >= vocab");
    // Output == table (n_ids == vocab): the library copies the table first.
    let ids = [3, 0, 0, 1];
    let mut want = poisoned(vocab * dim);
    unsafe { assert_ok(cudann_embedding(ids.as_ptr(), table.as_ptr().cast(), want.as_mut_ptr().cast(), 4, vocab as i32, dim as i32, CUDANN_F32, NULL)) };
    let dt = Dev::from(&table);
    unsafe { assert_ok(cudann_embedding(Dev::from(&ids).p(), dt.p().cast(), dt.p().cast(), 4, vocab as i32, dim as i32, CUDANN_F32, s.raw())) };
    s.sync();
    same_bits(&dt.read(), &want, "embedding output == table");
}

#[test]
fn rope_backward_and_kv_cache_write_match_the_cpu() {
    if !present("rope_backward_and_kv_cache_write_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(204);
    for (batch, seq, hq, hkv, d, offset) in [(1, 1, 1, 1, 2, 0), (2, 17, 4, 2, 64, 5), (1, 33, 3, 3, 128, 100), (2, 5, 2, 0, 8, 1)] {
        let rows = seq + offset;
        let mut f = poisoned(rows * d / 2);
        unsafe { assert_ok(cuda_rope_freqs(f.as_mut_ptr(), rows as i32, d as i32, 10000.0, 1.0, NULL)) };
        let df = Dev::from(&f);
        let (q, k) = (rng.vec(batch * seq * hq * d, 1.0), rng.vec(batch * seq * hkv * d, 1.0));
        let (dq, dk) = (Dev::from(&q), Dev::from(&k));
        let (dqo, dko) = (Dev::from(&poisoned(q.len())), Dev::from(&poisoned(k.len())));
        let (mut qo, mut ko) = (poisoned(q.len()), poisoned(k.len()));
        let args = (batch as i32, seq as i32, hq as i32, hkv as i32, d as i32, offset as i32);
        // sincosf on the GPU, the CPU's libm sin/cos: the tolerance of the forward's tests.
        unsafe {
            assert_ok(cudann_rope_backward(dq.p(), dk.p(), df.p(), dqo.p(), dko.p(), args.0, args.1, args.2, args.3, args.4, args.5, s.raw()));
            assert_ok(cudann_rope_backward(q.as_ptr(), k.as_ptr(), f.as_ptr(), qo.as_mut_ptr(), ko.as_mut_ptr(), args.0, args.1, args.2, args.3, args.4, args.5, NULL));
            s.sync();
            agree(&dqo.read(), &qo, 2e-6, "rope_backward d_q");
            agree(&dko.read(), &ko, 2e-6, "rope_backward d_k");
            // In place on each side.
            assert_ok(cudann_rope_backward(dq.p(), dk.p(), df.p(), dq.p(), dk.p(), args.0, args.1, args.2, args.3, args.4, args.5, s.raw()));
            s.sync();
            agree(&dq.read(), &qo, 2e-6, "rope_backward d_q in place");
            agree(&dk.read(), &ko, 2e-6, "rope_backward d_k in place");
        }
        // The backward undoes the forward.
        let mut back = poisoned(q.len());
        unsafe {
            let dq = Dev::from(&q);
            assert_ok(cuda_rope_forward(dq.p(), df.p(), dq.p(), args.0, args.1, args.2, args.4, args.5, s.raw()));
            assert_ok(cudann_rope_backward(dq.p(), std::ptr::null(), df.p(), dq.p(), std::ptr::null_mut(), args.0, args.1, args.2, 0, args.4, args.5, s.raw()));
            s.sync();
            back.copy_from_slice(&dq.read());
        }
        assert_close(&back, &f64s(&q), 1e-5, 1e-5, "rope_backward(rope_forward(q)) == q");
    }
    // Crossed: d_q_out is d_k's buffer (equal sizes): the library copies d_k first.
    let (batch, seq, h, d) = (2, 9, 3, 16);
    let mut f = poisoned(seq * d / 2);
    unsafe { assert_ok(cuda_rope_freqs(f.as_mut_ptr(), seq as i32, d as i32, 10000.0, 1.0, NULL)) };
    let (q, k) = (rng.vec(batch * seq * h * d, 1.0), rng.vec(batch * seq * h * d, 1.0));
    let (mut qo, mut ko) = (poisoned(q.len()), poisoned(k.len()));
    unsafe {
        assert_ok(cudann_rope_backward(q.as_ptr(), k.as_ptr(), f.as_ptr(), qo.as_mut_ptr(), ko.as_mut_ptr(), batch as i32, seq as i32, h as i32, h as i32, d as i32, 0, NULL));
        let (dq, dk, dko) = (Dev::from(&q), Dev::from(&k), Dev::from(&poisoned(k.len())));
        assert_ok(cudann_rope_backward(dq.p(), dk.p(), Dev::from(&f).p(), dk.p(), dko.p(), batch as i32, seq as i32, h as i32, h as i32, d as i32, 0, s.raw()));
        s.sync();
        agree(&dk.read(), &qo, 2e-6, "rope_backward d_q_out == d_k");
        agree(&dko.read(), &ko, 2e-6, "rope_backward crossed d_k");
    }

    // KV-cache write: a copy, bitwise; the rows around the written ones untouched.
    for (batch, new_len, max_seq, heads, hd, pos) in [(1, 1, 1, 1, 1, 0), (2, 3, 16, 2, 8, 5), (3, 1, 33, 4, 31, 32), (2, 64, 64, 2, 64, 0)] {
        let (nn, cn) = (batch * new_len * heads * hd, batch * max_seq * heads * hd);
        let (kn, vn, kc0, vc0) = (rng.vec(nn, 1.0), rng.vec(nn, 1.0), rng.vec(cn, 1.0), rng.vec(cn, 1.0));
        let (dkc, dvc) = (Dev::from(&kc0), Dev::from(&vc0));
        let (mut kc, mut vc) = (kc0.clone(), vc0.clone());
        let a = (batch as i32, new_len as i32, max_seq as i32, heads as i32, hd as i32, pos as i32);
        unsafe {
            assert_ok(cudann_kv_cache_write(Dev::from(&kn).p().cast(), Dev::from(&vn).p().cast(), dkc.p().cast(), dvc.p().cast(), a.0, a.1, a.2, a.3, a.4, a.5, CUDANN_F32, s.raw()));
            assert_ok(cudann_kv_cache_write(kn.as_ptr().cast(), vn.as_ptr().cast(), kc.as_mut_ptr().cast(), vc.as_mut_ptr().cast(), a.0, a.1, a.2, a.3, a.4, a.5, CUDANN_F32, NULL));
        }
        s.sync();
        same_bits(&dkc.read(), &kc, "kv_cache_write k");
        same_bits(&dvc.read(), &vc, "kv_cache_write v");
        if new_len == max_seq {
            // The whole cache: k_new may be v_cache's very buffer (and v_new k_cache's).
            let (dk, dv) = (Dev::from(&kn), Dev::from(&vn));
            unsafe { assert_ok(cudann_kv_cache_write(dk.p().cast(), dv.p().cast(), dv.p().cast(), dk.p().cast(), a.0, a.1, a.2, a.3, a.4, a.5, CUDANN_F32, s.raw())) };
            s.sync();
            same_bits(&dv.read(), &kn, "kv_cache_write k_cache == v_new");
            same_bits(&dk.read(), &vn, "kv_cache_write v_cache == k_new");
        }
    }
    // pos + new_len > max_seq: -2, nothing written.
    let dkc = Dev::from(&poisoned(8));
    let dvc = Dev::from(&poisoned(8));
    let src = Dev::from(&[1.0f32; 4]);
    let code = unsafe { cudann_kv_cache_write(src.p().cast(), src.p().cast(), dkc.p().cast(), dvc.p().cast(), 1, 4, 8, 1, 1, 5, CUDANN_F32, s.raw()) };
    assert_invalid(code, "cudann_kv_cache_write", "max_seq");
    assert_untouched(&dkc.read(), "k_cache after -2");
}

/// (indices, weights) of a top-k router over `logits[tokens, experts]` (the CPU's).
fn route(logits: &[f32], tokens: usize, experts: usize, k: usize) -> (Vec<i32>, Vec<f32>) {
    let (mut idx, mut w) = (vec![0i32; tokens * k], poisoned(tokens * k));
    unsafe { assert_ok(cuda_softmax_topk(logits.as_ptr(), w.as_mut_ptr(), idx.as_mut_ptr(), tokens as i32, experts as i32, k as i32, NULL)) };
    (idx, w)
}

#[test]
fn moe_ops_match_the_cpu_bitwise() {
    if !present("moe_ops_match_the_cpu_bitwise") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(205);
    for (tokens, dim, experts, k) in [(1, 1, 1, 1), (37, 33, 8, 2), (64, 256, 64, 8), (5, 1030, 300, 4), (2000, 16, 4, 3), (3000, 8, 64, 2), (3, 2100, 2, 2), (7, 0, 5, 2)] {
        let pairs = tokens * k;
        let (t, d, e, kk) = (tokens as i32, dim as i32, experts as i32, k as i32);
        let (idx, w) = route(&rng.vec(tokens * experts, 2.0), tokens, experts, k);
        let x = rng.vec(tokens * dim, 1.0);
        let (dx_, didx, dw) = (Dev::from(&x), Dev::from(&idx), Dev::from(&w));
        unsafe {
            // Dispatch: the integers and the gathered rows, bitwise.
            let (dy, dord, doff) = (Dev::from(&poisoned(pairs * dim)), Dev::from(&vec![-7i32; pairs]), Dev::from(&vec![-7i32; experts + 1]));
            let (mut y, mut ord, mut off) = (poisoned(pairs * dim), vec![-7i32; pairs], vec![-7i32; experts + 1]);
            assert_ok(cudann_moe_dispatch(dx_.p(), didx.p(), dy.p(), dord.p(), doff.p(), t, d, e, kk, s.raw()));
            assert_ok(cudann_moe_dispatch(x.as_ptr(), idx.as_ptr(), y.as_mut_ptr(), ord.as_mut_ptr(), off.as_mut_ptr(), t, d, e, kk, NULL));
            s.sync();
            assert_eq!(dord.read(), ord, "dispatch order {tokens}x{dim} E={experts} k={k}");
            assert_eq!(doff.read(), off, "dispatch offsets {tokens}x{dim} E={experts} k={k}");
            same_bits(&dy.read(), &y, "dispatch rows");

            // Dispatch backward and combine: sums in j order from 0 on both.
            let g = rng.vec(pairs * dim, 1.0);
            let (dg, dgx) = (Dev::from(&g), Dev::from(&poisoned(tokens * dim)));
            let mut gx = poisoned(tokens * dim);
            assert_ok(cudann_moe_dispatch_backward(dg.p(), dord.p(), dgx.p(), t, d, kk, s.raw()));
            assert_ok(cudann_moe_dispatch_backward(g.as_ptr(), ord.as_ptr(), gx.as_mut_ptr(), t, d, kk, NULL));
            s.sync();
            same_bits(&dgx.read(), &gx, "dispatch_backward");
            assert_ok(cudann_moe_combine(dg.p(), dw.p(), dord.p(), dgx.p(), t, d, kk, s.raw()));
            assert_ok(cudann_moe_combine(g.as_ptr(), w.as_ptr(), ord.as_ptr(), gx.as_mut_ptr(), t, d, kk, NULL));
            s.sync();
            same_bits(&dgx.read(), &gx, "combine");

            // Combine backward: products, and the CPU's 16-lane dot per pair.
            let dout = rng.vec(tokens * dim, 1.0);
            let (ddo, dde, ddw) = (Dev::from(&dout), Dev::from(&poisoned(pairs * dim)), Dev::from(&poisoned(pairs)));
            let (mut de, mut dwt) = (poisoned(pairs * dim), poisoned(pairs));
            assert_ok(cudann_moe_combine_backward(ddo.p(), dg.p(), dw.p(), dord.p(), dde.p(), ddw.p(), t, d, kk, s.raw()));
            assert_ok(cudann_moe_combine_backward(dout.as_ptr(), g.as_ptr(), w.as_ptr(), ord.as_ptr(), de.as_mut_ptr(), dwt.as_mut_ptr(), t, d, kk, NULL));
            s.sync();
            same_bits(&dde.read(), &de, "combine_backward d_expert_output");
            same_bits(&ddw.read(), &dwt, "combine_backward d_weights");

            // Router backward: the CPU's dot over k, then one term per chosen expert.
            let dwts = rng.vec(pairs, 1.0);
            let (ddl, mut dl) = (Dev::from(&poisoned(tokens * experts)), poisoned(tokens * experts));
            assert_ok(cudann_moe_router_backward(dw.p(), didx.p(), Dev::from(&dwts).p(), ddl.p(), t, e, kk, s.raw()));
            assert_ok(cudann_moe_router_backward(w.as_ptr(), idx.as_ptr(), dwts.as_ptr(), dl.as_mut_ptr(), t, e, kk, NULL));
            s.sync();
            same_bits(&ddl.read(), &dl, "router_backward");

            // Aux-loss backward: one f64 product per element, rounded once.
            let f = rng.vec(experts, 0.3);
            let (dp, mut p) = (Dev::from(&poisoned(tokens * experts)), poisoned(tokens * experts));
            assert_ok(cudann_aux_loss_backward(Dev::from(&f).p(), dp.p(), t, e, 0.01, 0.37, s.raw()));
            assert_ok(cudann_aux_loss_backward(f.as_ptr(), p.as_mut_ptr(), t, e, 0.01, 0.37, NULL));
            s.sync();
            same_bits(&dp.read(), &p, "aux_loss_backward");
        }
    }
    // Dispatch with ties of every kind: one expert for all, repeated experts in a
    // token's list (the stable order must still be the CPU's).
    let (tokens, k, experts, dim) = (300, 4, 5, 3);
    let idx: Vec<i32> = (0..tokens * k).map(|i| if i % 11 == 0 { 2 } else { (i * 7 / 5 % experts) as i32 }).collect();
    let x = rng.vec(tokens * dim, 1.0);
    let (mut y, mut ord, mut off) = (poisoned(tokens * k * dim), vec![0i32; tokens * k], vec![0i32; experts + 1]);
    let (dy, dord, doff) = (Dev::from(&y), Dev::from(&ord), Dev::from(&off));
    let a = (tokens as i32, dim as i32, experts as i32, k as i32);
    unsafe {
        assert_ok(cudann_moe_dispatch(Dev::from(&x).p(), Dev::from(&idx).p(), dy.p(), dord.p(), doff.p(), a.0, a.1, a.2, a.3, s.raw()));
        assert_ok(cudann_moe_dispatch(x.as_ptr(), idx.as_ptr(), y.as_mut_ptr(), ord.as_mut_ptr(), off.as_mut_ptr(), a.0, a.1, a.2, a.3, NULL));
    }
    s.sync();
    assert_eq!(dord.read(), ord, "dispatch order with repeats");
    assert_eq!(doff.read(), off, "dispatch offsets with repeats");
    same_bits(&dy.read(), &y, "dispatch rows with repeats");
    // Device indices out of range belong to no expert: order -1 and NaN rows at the end.
    let idx = [0i32, 9, 1, 0];
    let (dy, dord, doff) = (Dev::from(&poisoned(4 * 2)), Dev::from(&[-7i32; 4]), Dev::from(&[-7i32; 3]));
    let x = [1.0f32, 2.0, 3.0, 4.0];
    unsafe { assert_ok(cudann_moe_dispatch(Dev::from(&x).p(), Dev::from(&idx).p(), dy.p(), dord.p(), doff.p(), 2, 2, 2, 2, s.raw())) };
    s.sync();
    assert_eq!(doff.read(), vec![0, 2, 3]);
    assert_eq!(dord.read(), vec![0, 3, 2, -1]);
    let got = dy.read();
    assert_eq!(&got[..6], &[1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
    assert!(got[6..].iter().all(|v| v.is_nan()), "{got:?}");
    // Aux-loss backward in place (one token: d_probs is f_counts' buffer).
    let f = rng.vec(6, 0.3);
    let mut want = poisoned(6);
    unsafe {
        assert_ok(cudann_aux_loss_backward(f.as_ptr(), want.as_mut_ptr(), 1, 6, 0.02, 1.0, NULL));
        let df = Dev::from(&f);
        assert_ok(cudann_aux_loss_backward(df.p(), df.p(), 1, 6, 0.02, 1.0, s.raw()));
        s.sync();
        same_bits(&df.read(), &want, "aux_loss_backward in place");
    }
    // Combine backward with d_expert_output == expert_output: the library copies first.
    let (tokens, dim, experts, k) = (9, 20, 4, 2);
    let (idx, w) = route(&rng.vec(tokens * experts, 1.0), tokens, experts, k);
    let x = rng.vec(tokens * dim, 1.0);
    let mut ord = vec![0i32; tokens * k];
    let (mut y, mut off) = (poisoned(tokens * k * dim), vec![0i32; experts + 1]);
    unsafe { assert_ok(cudann_moe_dispatch(x.as_ptr(), idx.as_ptr(), y.as_mut_ptr(), ord.as_mut_ptr(), off.as_mut_ptr(), tokens as i32, dim as i32, experts as i32, k as i32, NULL)) };
    let dout = rng.vec(tokens * dim, 1.0);
    let (mut de, mut dwt) = (poisoned(y.len()), poisoned(tokens * k));
    unsafe {
        assert_ok(cudann_moe_combine_backward(dout.as_ptr(), y.as_ptr(), w.as_ptr(), ord.as_ptr(), de.as_mut_ptr(), dwt.as_mut_ptr(), tokens as i32, dim as i32, k as i32, NULL));
        let (de_dev, ddw) = (Dev::from(&y), Dev::from(&poisoned(tokens * k)));
        assert_ok(cudann_moe_combine_backward(Dev::from(&dout).p(), de_dev.p(), Dev::from(&w).p(), Dev::from(&ord).p(), de_dev.p(), ddw.p(), tokens as i32, dim as i32, k as i32, s.raw()));
        s.sync();
        same_bits(&de_dev.read(), &de, "combine_backward d_expert_output == expert_output");
        same_bits(&ddw.read(), &dwt, "combine_backward d_weights (in place call)");
    }
    // k = 0: -2, nothing written.
    let dord = Dev::from(&[-7i32; 4]);
    let code = unsafe { cudann_moe_dispatch(Dev::from(&[1.0f32; 4]).p(), Dev::from(&[0i32; 4]).p(), Dev::from(&poisoned(4)).p(), dord.p(), Dev::from(&[0i32; 3]).p(), 2, 2, 2, 0, s.raw()) };
    assert_invalid(code, "cudann_moe_dispatch", "k must be >= 1");
    assert_eq!(dord.read(), vec![-7; 4], "order after -2");
}

/// Largest |x|, for tolerances of sums whose terms are about that size.
fn peak(x: &[f32]) -> f64 {
    x.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()))
}

#[test]
fn general_attention_matches_the_cpu() {
    if !present("general_attention_matches_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(301);
    // (batch, q_len, kv_len, kv_capacity, heads, kv_heads, head_dim, pos0, causal, mask)
    let cases = [
        (2, 37, 37, 37, 4, 2, 32, 0, 1, false), // training, GQA
        (1, 64, 64, 64, 2, 2, 64, 0, 1, true),  // causal and an additive mask
        (2, 1, 50, 64, 8, 2, 64, 49, 1, false), // one decoding step against a cache
        (1, 5, 70, 80, 4, 1, 128, 65, 1, false), // several new tokens, MQA
        (1, 9, 13, 13, 2, 1, 100, 0, 0, true),  // not causal, head_dim not a multiple of 4
        (1, 3, 3, 3, 1, 1, 256, 0, 1, false),
        (2, 20, 20, 20, 3, 3, 7, 0, 1, false),
        (1, 70, 70, 70, 2, 1, 64, 0, 0, false),
        // Several query and key tiles of 64: the fused backward's ordered dQ sums.
        (2, 150, 150, 150, 4, 2, 64, 0, 1, false),
        (1, 100, 230, 230, 2, 1, 48, 130, 1, true), // causal after a prefix
        (2, 80, 80, 80, 4, 2, 128, 0, 1, false),    // the fused backward's widest tiles
        // Decoding against long caches: the split-KV kernels and their combine.
        (3, 1, 3000, 4096, 8, 1, 128, 2999, 1, false),
        (2, 2, 700, 1024, 4, 2, 256, 698, 1, true),
        (1, 1, 5000, 5000, 2, 2, 32, 0, 0, false),
        (1, 1, 300, 300, 2, 1, 36, 299, 1, false),
        // Batch 1 with 8 KV heads: 32 splits, combined in one pass.
        (1, 1, 4096, 4096, 32, 8, 128, 4095, 1, false),
        (1, 1, 2000, 2048, 16, 8, 64, 1999, 1, true),
    ];
    for (batch, q_len, kv_len, cap, heads, kv_heads, d, pos0, causal, masked) in cases {
        let what = format!("attention b{batch} q{q_len} kv{kv_len}/{cap} h{heads}/{kv_heads} d{d} pos0 {pos0} causal {causal} mask {masked}");
        let (qn, kvn, ln) = (batch * q_len * heads * d, batch * cap * kv_heads * d, batch * q_len * heads);
        let (q, k, v) = (rng.vec(qn, 1.0), rng.vec(kvn, 1.0), rng.vec(kvn, 1.0));
        let mut mask = rng.vec(q_len * kv_len, 1.0);
        mask[1] = f32::NEG_INFINITY;
        mask[..kv_len].fill(f32::NEG_INFINITY); // a query that sees no key: zeros, lse -inf
        let mask_ptr = |m: *const f32| if masked { m } else { std::ptr::null() };
        let scale = 1.0 / (d as f32).sqrt();
        let a = (batch as i32, q_len as i32, kv_len as i32, cap as i32, heads as i32, kv_heads as i32, d as i32, pos0 as i32, causal);
        let (mut out, mut lse) = (poisoned(qn), poisoned(ln));
        let (dq, dk, dv, dm) = (Dev::from(&q), Dev::from(&k), Dev::from(&v), Dev::from(&mask));
        let (dout, dlse) = (Dev::from(&poisoned(qn)), Dev::from(&poisoned(ln)));
        unsafe {
            assert_ok(cudann_attention_forward(q.as_ptr().cast(), k.as_ptr().cast(), v.as_ptr().cast(), mask_ptr(mask.as_ptr()), out.as_mut_ptr().cast(), lse.as_mut_ptr(), a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8, scale, CUDANN_F32, NULL));
            assert_ok(cudann_attention_forward(dq.p().cast(), dk.p().cast(), dv.p().cast(), mask_ptr(dm.p()), dout.p().cast(), dlse.p(), a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8, scale, CUDANN_F32, s.raw()));
        }
        let (again, again_lse) = (Dev::from(&poisoned(qn)), Dev::from(&poisoned(ln)));
        unsafe {
            assert_ok(cudann_attention_forward(dq.p().cast(), dk.p().cast(), dv.p().cast(), mask_ptr(dm.p()), again.p().cast(), again_lse.p(), a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8, scale, CUDANN_F32, s.raw()));
        }
        s.sync();
        // Weighted means of V (|v| ~ 1): the GPU's base-2 exponentials and summation order.
        assert_close(&dout.read(), &f64s(&out), 1e-4, 2e-5, &format!("{what}: output"));
        assert_close(&dlse.read(), &f64s(&lse), 1e-5, 1e-5, &format!("{what}: lse"));
        same_bits(&again.read(), &dout.read(), &format!("{what}: output run to run"));
        same_bits(&again_lse.read(), &dlse.read(), &format!("{what}: lse run to run"));
        if cap != kv_len {
            continue;
        }
        // Backward from the CPU's forward results on both sides.
        let dy = rng.vec(qn, 1.0);
        let (mut gq, mut gk, mut gv) = (poisoned(qn), poisoned(kvn), poisoned(kvn));
        let (ddy, dout, dlse) = (Dev::from(&dy), Dev::from(&out), Dev::from(&lse));
        let grads = || (Dev::from(&poisoned(qn)), Dev::from(&poisoned(kvn)), Dev::from(&poisoned(kvn)));
        let (eq, ek, ev) = grads();
        let (fq, fk, fv) = grads();
        unsafe {
            assert_ok(cudann_attention_backward(dy.as_ptr(), q.as_ptr(), k.as_ptr(), v.as_ptr(), mask_ptr(mask.as_ptr()), out.as_ptr(), lse.as_ptr(), gq.as_mut_ptr(), gk.as_mut_ptr(), gv.as_mut_ptr(), a.0, a.1, a.2, a.4, a.5, a.6, a.7, a.8, scale, NULL));
            for (oq, ok, ov) in [(&eq, &ek, &ev), (&fq, &fk, &fv)] {
                assert_ok(cudann_attention_backward(ddy.p(), dq.p(), dk.p(), dv.p(), mask_ptr(dm.p()), dout.p(), dlse.p(), oq.p(), ok.p(), ov.p(), a.0, a.1, a.2, a.4, a.5, a.6, a.7, a.8, scale, s.raw()));
            }
        }
        s.sync();
        for (name, gpu, again, cpu) in [("d_q", &eq, &fq, &gq), ("d_k", &ek, &fk, &gk), ("d_v", &ev, &fv, &gv)] {
            let got = gpu.read();
            // Sums of up to kv_len (or q_len * heads / kv_heads) terms of about the size of the largest result.
            assert_close(&got, &f64s(cpu), 1e-4, 1e-5 * peak(cpu).max(1.0), &format!("{what}: {name}"));
            same_bits(&again.read(), &got, &format!("{what}: {name} run to run"));
        }
    }
}

/// Outputs of one round of training and decoding ops on `s`: attention
/// forward (prefill and a split-KV decode step) and backward, MoE dispatch and
/// combine, RMSNorm backward; every buffer's contents, in call order.
fn training_round(s: &Stream, inputs: &RoundInputs) -> Vec<Vec<f32>> {
    let r = inputs;
    let (b, q, h, g, d) = (2usize, 48usize, 4usize, 2usize, 64usize);
    let (qn, kvn, ln) = (b * q * h * d, b * q * g * d, b * q * h);
    let (dq, dk, dv) = (Dev::from(&r.q), Dev::from(&r.k), Dev::from(&r.v));
    let (out, lse) = (Dev::from(&poisoned(qn)), Dev::from(&poisoned(ln)));
    let (gq, gk, gv, ddy) = (Dev::from(&poisoned(qn)), Dev::from(&poisoned(kvn)), Dev::from(&poisoned(kvn)), Dev::from(&r.dy));
    let (cache_len, dec_q) = (1500usize, Dev::from(&r.q[..b * h * d]));
    let (ck, cv) = (Dev::from(&r.cache_k), Dev::from(&r.cache_v));
    let dec_out = Dev::from(&poisoned(b * h * d));
    let (tokens, dim, experts, k) = (64usize, 32usize, 8usize, 2usize);
    let (x, idx, wts, norm_w) = (Dev::from(&r.x), Dev::from(&r.experts), Dev::from(&r.weights), Dev::from(&r.norm_weight));
    let (xs, order, offsets, moe_out) = (Dev::from(&poisoned(tokens * k * dim)), Dev::from(&vec![0i32; tokens * k]), Dev::from(&vec![0i32; experts + 1]), Dev::from(&poisoned(tokens * dim)));
    let (dn, dw) = (Dev::from(&poisoned(tokens * dim)), Dev::from(&poisoned(dim)));
    let scale = 1.0 / (d as f32).sqrt();
    let (bi, qi, hi, gi, di) = (b as i32, q as i32, h as i32, g as i32, d as i32);
    unsafe {
        assert_ok(cudann_attention_forward(dq.p().cast(), dk.p().cast(), dv.p().cast(), std::ptr::null(), out.p().cast(), lse.p(), bi, qi, qi, qi, hi, gi, di, 0, 1, scale, CUDANN_F32, s.raw()));
        assert_ok(cudann_attention_backward(ddy.p(), dq.p(), dk.p(), dv.p(), std::ptr::null(), out.p(), lse.p(), gq.p(), gk.p(), gv.p(), bi, qi, qi, hi, gi, di, 0, 1, scale, s.raw()));
        let cl = cache_len as i32;
        assert_ok(cudann_attention_forward(dec_q.p().cast(), ck.p().cast(), cv.p().cast(), std::ptr::null(), dec_out.p().cast(), std::ptr::null_mut(), bi, 1, cl, cl, hi, gi, di, cl - 1, 1, scale, CUDANN_F32, s.raw()));
        assert_ok(cudann_moe_dispatch(x.p(), idx.p(), xs.p(), order.p(), offsets.p(), tokens as i32, dim as i32, experts as i32, k as i32, s.raw()));
        assert_ok(cudann_moe_combine(xs.p(), wts.p(), order.p(), moe_out.p(), tokens as i32, dim as i32, k as i32, s.raw()));
        assert_ok(cudann_rmsnorm_backward(moe_out.p(), x.p(), norm_w.p(), dn.p(), dw.p(), tokens as i32, dim as i32, 1e-6, s.raw()));
    }
    s.sync();
    let ints = |v: Vec<i32>| v.into_iter().map(|i| i as f32).collect::<Vec<f32>>();
    vec![out.read(), lse.read(), gq.read(), gk.read(), gv.read(), dec_out.read(), xs.read(), ints(order.read()), ints(offsets.read()), moe_out.read(), dn.read(), dw.read()]
}

struct RoundInputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dy: Vec<f32>,
    cache_k: Vec<f32>,
    cache_v: Vec<f32>,
    x: Vec<f32>,
    experts: Vec<i32>,
    weights: Vec<f32>,
    norm_weight: Vec<f32>,
}

#[test]
fn training_ops_from_eight_threads_match_one_thread_bitwise() {
    if !present("training_ops_from_eight_threads_match_one_thread_bitwise") {
        return;
    }
    let mut rng = Rng::new(404);
    let (qn, kvn) = (2 * 48 * 4 * 64, 2 * 48 * 2 * 64);
    let cache = 2 * 1500 * 2 * 64;
    let (logits, tokens, experts) = (rng.vec(64 * 8, 1.0), 64, 8);
    let (indices, weights) = route(&logits, tokens, experts, 2);
    let inputs = RoundInputs {
        q: rng.vec(qn, 1.0),
        k: rng.vec(kvn, 1.0),
        v: rng.vec(kvn, 1.0),
        dy: rng.vec(qn, 1.0),
        cache_k: rng.vec(cache, 1.0),
        cache_v: rng.vec(cache, 1.0),
        x: rng.vec(tokens * 32, 1.0),
        experts: indices,
        weights,
        norm_weight: rng.vec(32, 1.0),
    };
    let want = training_round(&Stream::new(), &inputs);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (inputs, want) = (&inputs, &want);
            scope.spawn(move || {
                let s = Stream::new();
                for round in 0..3 {
                    for (i, (got, want)) in training_round(&s, inputs).iter().zip(want).enumerate() {
                        same_bits(got, want, &format!("thread {t}, round {round}: output {i}"));
                    }
                }
            });
        }
    });
}

/// cudann_gemm_grouped on device memory (the kernel reading its offsets on
/// the device) against the same call on host copies: rows grouped (several
/// 128-row tiles a group, partial tiles, empty groups, rows outside every
/// group untouched) and k grouped, every transpose, beta 0 with NaN in C and
/// beta non-zero; bf16 weights through their float32 copy; offsets out of
/// order on the device stay inside the matrices (clamped: memcheck covers it).
#[test]
fn grouped_gemm_matches_the_cpu() {
    if !present("grouped_gemm_matches_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(206);
    for (inner, m, n, k, offsets) in [(false, 300, 200, 150, vec![7, 12, 12, 140, 290]), (true, 130, 140, 300, vec![0, 100, 100, 299, 300]), (false, 40, 9, 33, vec![0, 40])] {
        let groups = offsets.len() - 1;
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (ar, ac) = if ta { (k, m) } else { (m, k) };
            let (br, bc) = if tb { (n, k) } else { (k, n) };
            let (lda, ldb, ldc) = (ac + 1, bc, n + 2);
            let (sa, sb, sc) = if inner { (0, 0, m * ldc) } else { (0, br * ldb, 0) };
            let a = rng.vec((ar - 1) * lda + ac, 1.0);
            let b = rng.vec(groups * br * ldb, 1.0);
            for beta in [0.0f32, 0.5] {
                let c0 = if beta == 0.0 { poisoned((groups - 1) * sc + m * ldc) } else { rng.vec((groups - 1) * sc + m * ldc, 1.0) };
                let (da, db, dc, doff) = (Dev::from(&a), Dev::from(&b), Dev::from(&c0), Dev::from(&offsets));
                let mut c = c0.clone();
                let call = |a: *const f32, b: *const f32, c: *mut f32, off: *const i32, stream| unsafe {
                    cudann_gemm_grouped(ta as i32, tb as i32, inner as i32, m as i32, n as i32, k as i32, 1.5, a.cast(), CUDANN_F32, lda as i64, sa as i64,
                        b.cast(), CUDANN_F32, ldb as i64, sb as i64, beta, c.cast(), CUDANN_F32, ldc as i64, sc as i64, off, groups as i32, stream)
                };
                assert_ok(call(da.p(), db.p(), dc.p(), doff.p(), s.raw()));
                assert_ok(call(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), offsets.as_ptr(), NULL));
                s.sync();
                // Sums of k products of N(0, 1) terms, in another order.
                let what = format!("grouped inner={inner} ta={ta} tb={tb} {m}x{n}x{k} beta {beta}");
                assert_close(&dc.read(), &f64s(&c), 1e-5, 1e-5 * k as f64, &what);
            }
        }
        // bf16 weights with float32 activations (decoding's experts).
        if !inner {
            let x = rng.vec(m * k, 1.0);
            let w: Vec<u16> = rng.vec(groups * n * k, 1.0).iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            let (dx, dw, dc, doff) = (Dev::from(&x), Dev::from(&w), Dev::from(&poisoned(m * n)), Dev::from(&offsets));
            let mut c = poisoned(m * n);
            let call = |x: *const f32, w: *const u16, c: *mut f32, off: *const i32, stream| unsafe {
                cudann_gemm_grouped(0, 1, 0, m as i32, n as i32, k as i32, 1.0, x.cast(), CUDANN_F32, k as i64, 0, w.cast(), CUDANN_BF16, k as i64, (n * k) as i64,
                    0.0, c.cast(), CUDANN_F32, n as i64, 0, off, groups as i32, stream)
            };
            assert_ok(call(dx.p(), dw.p(), dc.p(), doff.p(), s.raw()));
            assert_ok(call(x.as_ptr(), w.as_ptr(), c.as_mut_ptr(), offsets.as_ptr(), NULL));
            s.sync();
            assert_close(&dc.read(), &f64s(&c), 1e-5, 1e-5 * k as f64, "grouped bf16 weights");
        }
    }
    // Offsets out of order on the device: no error can be returned, but nothing
    // outside the matrices is touched (clamped; groups ending before they start are empty).
    let (m, n, k) = (200usize, 64usize, 32usize);
    let (da, db, dc, doff) = (Dev::from(&rng.vec(m * k, 1.0)), Dev::from(&rng.vec(3 * n * k, 1.0)), Dev::from(&poisoned(m * n)), Dev::from(&[150i32, 20, 400, -5]));
    unsafe {
        assert_ok(cudann_gemm_grouped(0, 1, 0, m as i32, n as i32, k as i32, 1.0, da.p().cast(), CUDANN_F32, k as i64, 0, db.p().cast(), CUDANN_F32, k as i64, (n * k) as i64,
            0.0, dc.p().cast(), CUDANN_F32, n as i64, 0, doff.p(), 3, s.raw()));
    }
    s.sync();
}

/// Grouped products of 4e9 flops and more run on cuBLAS, a product a group,
/// after the offsets are read to the host: rows grouped and k grouped, checked
/// against float64 dot products on a sample of rows (the host-pointer call
/// would be staged to the same path, so it is no independent reference here).
#[test]
fn large_grouped_gemm_matches_float64() {
    if !present("large_grouped_gemm_matches_float64") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(207);
    for inner in [false, true] {
        let (m, n, k) = if inner { (1024usize, 1024usize, 2048usize) } else { (2048, 1024, 1024) };
        let offsets = if inner { vec![0i32, 600, 600, 1500, 2048] } else { vec![0i32, 500, 500, 1300, 2048] };
        let groups = offsets.len() - 1;
        // Rows grouped: x [m, k] times each group's W [n, k] transposed; k grouped: dyᵀ [k, m]ᵀ x [k, n] per group.
        let a = rng.vec(m * k, 1.0);
        let b = rng.vec(if inner { k * n } else { groups * n * k }, 1.0);
        let c_len = if inner { groups * m * n } else { m * n };
        let (da, db, dc, doff) = (Dev::from(&a), Dev::from(&b), Dev::from(&poisoned(c_len)), Dev::from(&offsets));
        let (ta, tb, lda, ldb, sb, sc) = if inner { (1, 0, m, n, 0, m * n) } else { (0, 1, k, k, n * k, 0) };
        unsafe {
            assert_ok(cudann_gemm_grouped(ta, tb, inner as i32, m as i32, n as i32, k as i32, 1.0, da.p().cast(), CUDANN_F32, lda as i64, 0,
                db.p().cast(), CUDANN_F32, ldb as i64, sb as i64, 0.0, dc.p().cast(), CUDANN_F32, n as i64, sc as i64, doff.p(), groups as i32, s.raw()));
        }
        s.sync();
        let c = dc.read();
        for g in 0..groups {
            let range = offsets[g] as usize..offsets[g + 1] as usize;
            let rows: Vec<usize> = if inner { (0..m).step_by(97).collect() } else { range.clone().step_by(41).collect() };
            for r in rows {
                for col in (0..n).step_by(13) {
                    let (ks, got) = if inner { (range.clone(), c[g * sc + r * n + col]) } else { (0..k, c[r * n + col]) };
                    let want: f64 = ks.map(|p| if inner { a[p * m + r] as f64 * b[p * n + col] as f64 } else { a[r * k + p] as f64 * b[g * sb + col * k + p] as f64 }).sum();
                    let terms = if inner { range.len() } else { k } as f64;
                    assert!((got as f64 - want).abs() <= 1e-5 * terms.sqrt() * 4.0 + 1e-6 * want.abs(), "large grouped inner={inner} g={g} [{r}, {col}]: {got} vs {want}");
                }
            }
        }
    }
}
