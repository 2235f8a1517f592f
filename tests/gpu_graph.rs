//! Device calls captured into a CUDA graph and replayed. Its own test binary:
//! a capture must not overlap other threads' synchronising calls.
mod common;
use common::device::{Dev, Stream, capture_and_replay, present};
use common::*;
use cudann::*;

/// One capture at a time: a capture must not overlap another thread's
/// synchronising calls (the tests of this binary run on parallel threads).
static CAPTURE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn graph_capture_and_replay_of_device_calls() {
    if !present("graph_capture_and_replay_of_device_calls") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(106);
    let (rows, cols) = (32, 1000);
    let x = rng.vec(rows * cols, 1.0);
    let w = rng.vec(cols, 1.0);
    let (dx, dw, dy, dz) = (Dev::from(&x), Dev::from(&w), Dev::from(&poisoned(x.len())), Dev::from(&poisoned(x.len())));
    // Warm-up outside the capture (first-use work: module load, cuBLAS handle).
    unsafe { assert_ok(cuda_rmsnorm(dx.p(), dw.p(), dy.p(), rows as i32, cols as i32, 1e-6, s.raw())) };
    s.sync();
    let ds = Dev::from(&poisoned(x.len()));
    let _exclusive = CAPTURE.lock().unwrap();
    capture_and_replay(&s, 3, || unsafe {
        assert_ok(cuda_rmsnorm(dx.p(), dw.p(), dy.p(), rows as i32, cols as i32, 1e-6, s.raw()));
        assert_ok(cuda_silu(dy.p(), dz.p(), x.len() as i64, s.raw()));
        assert_ok(cuda_softmax(dz.p(), ds.p(), rows as i32, cols as i32, s.raw()));
    });
    let (mut y, mut z, mut sm) = (poisoned(x.len()), poisoned(x.len()), poisoned(x.len()));
    unsafe {
        cuda_rmsnorm(x.as_ptr(), w.as_ptr(), y.as_mut_ptr(), rows as i32, cols as i32, 1e-6, NULL);
        cuda_silu(y.as_ptr(), z.as_mut_ptr(), x.len() as i64, NULL);
        cuda_softmax(z.as_ptr(), sm.as_mut_ptr(), rows as i32, cols as i32, NULL);
    }
    assert_close(&ds.read(), &f64s(&sm), 1e-5, 1e-6, "captured rmsnorm -> silu -> softmax");
}


/// An MoE expert block, its row offsets never leaving the device: dispatch,
/// the grouped gate and up products (per-expert weights), SwiGLU, the grouped
/// down product and the combine, captured into a graph and replayed, against
/// the same calls on host copies (CPU).
#[test]
fn moe_expert_block_captured_with_device_offsets() {
    if !present("moe_expert_block_captured_with_device_offsets") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(107);
    let (tokens, dim, ffn, experts, k) = (96usize, 64usize, 96usize, 4usize, 2usize);
    let pairs = tokens * k;
    let x = rng.vec(tokens * dim, 1.0);
    // Each token's k distinct experts, and its weights.
    let idx: Vec<i32> = (0..tokens).flat_map(|t| (0..k).map(move |j| ((t * 7 + j * 3 + t / 5) % experts) as i32)).collect();
    let w = rng.vec(pairs, 0.5);
    let (wg, wu, wd) = (rng.vec(experts * ffn * dim, 0.1), rng.vec(experts * ffn * dim, 0.1), rng.vec(experts * dim * ffn, 0.1));
    let (t, d, f, e, kk) = (tokens as i32, dim as i32, ffn as i32, experts as i32, k as i32);
    let block = |x: *const f32, idx: *const i32, w: *const f32, wg: *const f32, wu: *const f32, wd: *const f32, bufs: [*mut f32; 5], order: *mut i32, offsets: *mut i32, stream| unsafe {
        let [xs, gate, up, y, out] = bufs;
        let lin = |a: *const f32, wt: *const f32, c: *mut f32, rows_n: i32, inner_k: i32| {
            cudann_gemm_grouped(0, 1, 0, pairs as i32, rows_n, inner_k, 1.0, a.cast(), CUDANN_F32, inner_k as i64, 0, wt.cast(), CUDANN_F32, inner_k as i64,
                (rows_n * inner_k) as i64, 0.0, c.cast(), CUDANN_F32, rows_n as i64, 0, offsets, e, stream)
        };
        assert_ok(cudann_moe_dispatch(x, idx, xs, order, offsets, t, d, e, kk, stream));
        assert_ok(lin(xs, wg, gate, f, d));
        assert_ok(lin(xs, wu, up, f, d));
        assert_ok(cudann_swiglu(gate.cast(), up.cast(), gate.cast(), (pairs * ffn) as i64, CUDANN_F32, stream));
        assert_ok(lin(gate, wd, y, d, f));
        assert_ok(cudann_moe_combine(y, w, order, out, t, d, kk, stream));
    };
    let sizes = [pairs * dim, pairs * ffn, pairs * ffn, pairs * dim, tokens * dim];
    let mut host: Vec<Vec<f32>> = sizes.iter().map(|&n| poisoned(n)).collect();
    let (mut order, mut offsets) = (vec![0i32; pairs], vec![0i32; experts + 1]);
    let bufs: [*mut f32; 5] = std::array::from_fn(|i| host[i].as_mut_ptr());
    block(x.as_ptr(), idx.as_ptr(), w.as_ptr(), wg.as_ptr(), wu.as_ptr(), wd.as_ptr(), bufs, order.as_mut_ptr(), offsets.as_mut_ptr(), NULL);
    let dev: Vec<Dev<f32>> = sizes.iter().map(|&n| Dev::from(&poisoned(n))).collect();
    let (dx, didx, dw, dwg, dwu, dwd) = (Dev::from(&x), Dev::from(&idx), Dev::from(&w), Dev::from(&wg), Dev::from(&wu), Dev::from(&wd));
    let (dorder, doffsets) = (Dev::from(&vec![0i32; pairs]), Dev::from(&vec![0i32; experts + 1]));
    let dbufs: [*mut f32; 5] = std::array::from_fn(|i| dev[i].p());
    // Warm-up outside the capture (module loads), then the captured block.
    block(dx.p(), didx.p(), dw.p(), dwg.p(), dwu.p(), dwd.p(), dbufs, dorder.p(), doffsets.p(), s.raw());
    s.sync();
    let _exclusive = CAPTURE.lock().unwrap();
    let dout = &dev[4];
    unsafe { assert_ok(cudann_memset(dout.p().cast(), 0, (tokens * dim * 4) as i64, s.raw())) };
    capture_and_replay(&s, 2, || block(dx.p(), didx.p(), dw.p(), dwg.p(), dwu.p(), dwd.p(), dbufs, dorder.p(), doffsets.p(), s.raw()));
    assert_eq!(doffsets.read(), offsets, "expert offsets");
    assert_close(&dout.read(), &f64s(&host[4]), 1e-5, 1e-5, "captured MoE expert block");
}
