//! Device calls captured into a CUDA graph and replayed. Its own test binary:
//! a capture must not overlap other threads' synchronising calls.
mod common;
use common::device::{Dev, Stream, capture_and_replay, capture_and_replay_each, present};
use common::*;
use cudann::*;

/// One test at a time: a capture must not overlap another thread's
/// synchronising calls, and every test allocates, frees and copies
/// synchronously around its capture, its host-memory calls too (these may be
/// staged through the GPU). With the lock held only around the captures, the
/// tests' parallel threads broke 2 of 7 runs on an H100: one test's call
/// ended another's capture.
static CAPTURE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The lock for the whole test (a test that failed holding it does not stop the others).
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    CAPTURE.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn graph_capture_and_replay_of_device_calls() {
    let _exclusive = exclusive();
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
    let _exclusive = exclusive();
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
    let dout = &dev[4];
    unsafe { assert_ok(cudann_memset(dout.p().cast(), 0, (tokens * dim * 4) as i64, s.raw())) };
    capture_and_replay(&s, 2, || block(dx.p(), didx.p(), dw.p(), dwg.p(), dwu.p(), dwd.p(), dbufs, dorder.p(), doffsets.p(), s.raw()));
    assert_eq!(doffsets.read(), offsets, "expert offsets");
    assert_close(&dout.read(), &f64s(&host[4]), 1e-5, 1e-5, "captured MoE expert block");
}

/// Buffers of one training step, host or device: every tensor a call touches.
struct StepBuffers {
    ptrs: std::collections::HashMap<&'static str, (*mut f32, usize)>,
    _host: Vec<Vec<f32>>,
    _dev: Vec<Dev<f32>>,
}

impl StepBuffers {
    /// `sizes`: each buffer's name, elements (4 bytes each, f32 or i32) and initial values (None: zeros).
    fn new(on_device: bool, sizes: &[(&'static str, usize, Option<Vec<f32>>)]) -> Self {
        let mut b = StepBuffers { ptrs: Default::default(), _host: vec![], _dev: vec![] };
        for (name, len, init) in sizes {
            let data = init.clone().unwrap_or_else(|| vec![0.0; *len]);
            let ptr = if on_device {
                b._dev.push(Dev::from(&data));
                b._dev.last().unwrap().p()
            } else {
                b._host.push(data);
                b._host.last_mut().unwrap().as_mut_ptr()
            };
            b.ptrs.insert(name, (ptr, *len));
        }
        b
    }
    fn f(&self, name: &str) -> *mut f32 {
        self.ptrs[name].0
    }
    fn i(&self, name: &str) -> *mut i32 {
        self.f(name).cast()
    }
    /// A buffer's values (device buffers: once the step's stream is synchronized).
    fn read(&self, name: &str) -> Vec<f32> {
        let (ptr, len) = self.ptrs[name];
        let mut out = vec![0f32; len];
        unsafe { assert_ok(cudann_memcpy(out.as_mut_ptr().cast(), ptr.cast(), (len * 4) as i64, NULL)) };
        out
    }
    /// The step's cross-entropy and aux losses and its gradient norm.
    fn losses(&self) -> [f32; 3] {
        ["loss", "aux", "gnorm"].map(|name| self.read(name)[0])
    }
}

/// A one-layer MoE transformer's training step (MODEL.md's, as
/// examples/train_moe.c runs it): embedding, RMSNorm, GQA attention with
/// RoPE, the router with its aux loss, dispatch, the experts as grouped
/// products, combine, the LM head and cross-entropy; every gradient; clipping
/// and AdamW. All on `stream`; the parameters, gradients and optimizer state
/// live in `b`.
struct TinyStep {
    t: usize,
    d: usize,
    h: usize,
    g: usize,
    hd: usize,
    f: usize,
    e: usize,
    k: usize,
    v: usize,
    batch: usize,
    seq: usize,
}

impl TinyStep {
    /// Element offsets of the parameters in the flat buffer: embed, attn_norm,
    /// wq, wk, wv, wo, ffn_norm, router, experts (gate, up, down each), norm, lm_head.
    fn offsets(&self) -> Vec<(&'static str, usize, usize)> {
        let (d, qd, kd, f, e, v) = (self.d, self.h * self.hd, self.g * self.hd, self.f, self.e, self.v);
        let shapes = [("embed", v * d), ("attn_norm", d), ("wq", qd * d), ("wk", kd * d), ("wv", kd * d), ("wo", d * qd), ("ffn_norm", d), ("router", e * d), ("experts", e * 3 * f * d), ("norm", d), ("lm_head", v * d)];
        let mut at = 0;
        shapes.iter().map(|&(n, len)| { at += len; (n, at - len, len) }).collect()
    }

    fn n_params(&self) -> usize {
        self.offsets().iter().map(|o| o.2).sum()
    }

    fn run(&self, b: &StepBuffers, s: *mut std::ffi::c_void) {
        let (t, d, h, g, hd, f, e, k, v) = (self.t as i32, self.d as i32, self.h as i32, self.g as i32, self.hd as i32, self.f as i32, self.e as i32, self.k as i32, self.v as i32);
        let (qd, kd, tk) = (h * hd, g * hd, t * k);
        let off: std::collections::HashMap<_, _> = self.offsets().into_iter().map(|(n, at, _)| (n, at)).collect();
        let p = |n: &str| unsafe { b.f("params").add(off[n]) };
        let gr = |n: &str| unsafe { b.f("grad").add(off[n]) };
        let expert = |base: *mut f32, kind: usize| unsafe { base.add(off["experts"] + kind * (f * d) as usize) };
        let stride_e = (3 * f * d) as i64;
        let mm = |ta: i32, tb: i32, m: i32, n: i32, kk: i32, a: *const f32, lda: i32, bm: *const f32, ldb: i32, beta: f32, c: *mut f32, ldc: i32| unsafe {
            assert_ok(cudann_gemm_ex(ta, tb, m, n, kk, 1.0, a.cast(), CUDANN_F32, lda as i64, 0, bm.cast(), CUDANN_F32, ldb as i64, 0, beta, c.cast(), CUDANN_F32, ldc as i64, 0, 1, s));
        };
        let lin = |x: *const f32, w: *const f32, y: *mut f32, rows: i32, n: i32, kk: i32| mm(0, 1, rows, n, kk, x, kk, w, kk, 0.0, y, n);
        let experts = |ta: i32, tb: i32, inner: i32, m: i32, n: i32, kk: i32, a: *const f32, lda: i32, bm: *const f32, ldb: i32, sb: i64, beta: f32, c: *mut f32, ldc: i32, sc: i64| unsafe {
            assert_ok(cudann_gemm_grouped(ta, tb, inner, m, n, kk, 1.0, a.cast(), CUDANN_F32, lda as i64, 0, bm.cast(), CUDANN_F32, ldb as i64, sb, beta, c.cast(), CUDANN_F32, ldc as i64, sc, b.i("offsets"), e, s));
        };
        let (bt, sq, eps, scale, alpha) = (self.batch as i32, self.seq as i32, 1e-6f32, 1.0 / (hd as f32).sqrt(), 0.01f32);
        unsafe {
            // Forward.
            assert_ok(cudann_embedding(b.i("ids"), p("embed").cast(), b.f("x0").cast(), t, v, d, CUDANN_F32, s));
            assert_ok(cuda_rmsnorm(b.f("x0"), p("attn_norm"), b.f("a"), t, d, eps, s));
            lin(b.f("a"), p("wq"), b.f("q"), t, qd, d);
            lin(b.f("a"), p("wk"), b.f("k"), t, kd, d);
            lin(b.f("a"), p("wv"), b.f("v"), t, kd, d);
            assert_ok(cuda_rope_qk(b.f("q"), b.f("k"), b.f("freqs"), b.f("q"), b.f("k"), bt, sq, h, g, hd, 0, s));
            assert_ok(cudann_attention_forward(b.f("q").cast(), b.f("k").cast(), b.f("v").cast(), std::ptr::null(), b.f("o").cast(), b.f("lse"), bt, sq, sq, sq, h, g, hd, 0, 1, scale, CUDANN_F32, s));
            lin(b.f("o"), p("wo"), b.f("x_mid"), t, d, qd);
            assert_ok(cuda_add(b.f("x_mid"), b.f("x0"), b.f("x_mid"), (t * d) as i64, s));
            assert_ok(cuda_rmsnorm(b.f("x_mid"), p("ffn_norm"), b.f("m"), t, d, eps, s));
            lin(b.f("m"), p("router"), b.f("router_logits"), t, e, d);
            assert_ok(cuda_softmax(b.f("router_logits"), b.f("probs"), t, e, s));
            assert_ok(cuda_softmax_topk(b.f("router_logits"), b.f("weights"), b.i("experts"), t, e, k, s));
            assert_ok(cuda_aux_loss_forward(b.f("probs"), b.i("experts"), b.f("aux"), b.f("f_counts"), b.f("p_means"), t, e, k, alpha, s));
            assert_ok(cudann_moe_dispatch(b.f("m"), b.i("experts"), b.f("xs"), b.i("order"), b.i("offsets"), t, d, e, k, s));
            experts(0, 1, 0, tk, f, d, b.f("xs"), d, expert(b.f("params"), 0), d, stride_e, 0.0, b.f("gate"), f, 0);
            experts(0, 1, 0, tk, f, d, b.f("xs"), d, expert(b.f("params"), 1), d, stride_e, 0.0, b.f("up"), f, 0);
            assert_ok(cudann_swiglu(b.f("gate").cast(), b.f("up").cast(), b.f("hh").cast(), (tk * f) as i64, CUDANN_F32, s));
            experts(0, 1, 0, tk, d, f, b.f("hh"), f, expert(b.f("params"), 2), f, stride_e, 0.0, b.f("y"), d, 0);
            assert_ok(cudann_moe_combine(b.f("y"), b.f("weights"), b.i("order"), b.f("moe_out"), t, d, k, s));
            assert_ok(cuda_add(b.f("x_mid"), b.f("moe_out"), b.f("x1"), (t * d) as i64, s));
            assert_ok(cuda_rmsnorm(b.f("x1"), p("norm"), b.f("xf"), t, d, eps, s));
            lin(b.f("xf"), p("lm_head"), b.f("logits"), t, v, d);
            assert_ok(cuda_cross_entropy_forward(b.f("logits"), b.i("targets"), b.f("loss"), b.f("log_probs"), t, v, s));
            // Backward.
            assert_ok(cuda_zero_grad(b.f("grad"), self.n_params() as i64, s));
            assert_ok(cuda_cross_entropy_backward(b.f("log_probs"), b.i("targets"), b.f("d_logits"), t, v, 1.0 / t as f32, s));
            mm(1, 0, v, d, t, b.f("d_logits"), v, b.f("xf"), d, 0.0, gr("lm_head"), d);
            mm(0, 0, t, d, v, b.f("d_logits"), v, p("lm_head"), d, 0.0, b.f("d_xf"), d);
            assert_ok(cudann_rmsnorm_backward(b.f("d_xf"), b.f("x1"), p("norm"), b.f("d_x"), gr("norm"), t, d, eps, s));
            assert_ok(cudann_moe_combine_backward(b.f("d_x"), b.f("y"), b.f("weights"), b.i("order"), b.f("d_y"), b.f("d_w"), t, d, k, s));
            experts(1, 0, 1, d, f, tk, b.f("d_y"), d, b.f("hh"), f, 0, 0.0, expert(b.f("grad"), 2), f, stride_e);
            experts(0, 0, 0, tk, f, d, b.f("d_y"), d, expert(b.f("params"), 2), f, stride_e, 0.0, b.f("d_h"), f, 0);
            assert_ok(cudann_swiglu_backward(b.f("d_h"), b.f("gate"), b.f("up"), b.f("d_gate"), b.f("d_up"), (tk * f) as i64, s));
            experts(1, 0, 1, f, d, tk, b.f("d_gate"), f, b.f("xs"), d, 0, 0.0, expert(b.f("grad"), 0), d, stride_e);
            experts(1, 0, 1, f, d, tk, b.f("d_up"), f, b.f("xs"), d, 0, 0.0, expert(b.f("grad"), 1), d, stride_e);
            experts(0, 0, 0, tk, d, f, b.f("d_gate"), f, expert(b.f("params"), 0), d, stride_e, 0.0, b.f("d_xs"), d, 0);
            experts(0, 0, 0, tk, d, f, b.f("d_up"), f, expert(b.f("params"), 1), d, stride_e, 1.0, b.f("d_xs"), d, 0);
            assert_ok(cudann_moe_dispatch_backward(b.f("d_xs"), b.i("order"), b.f("d_m"), t, d, k, s));
            assert_ok(cudann_moe_router_backward(b.f("weights"), b.i("experts"), b.f("d_w"), b.f("d_router"), t, e, k, s));
            assert_ok(cudann_aux_loss_backward(b.f("f_counts"), b.f("d_probs"), t, e, alpha, 1.0, s));
            assert_ok(cudann_softmax_backward(b.f("d_probs"), b.f("probs"), b.f("d_router_aux"), t, e, s));
            assert_ok(cuda_add(b.f("d_router"), b.f("d_router_aux"), b.f("d_router"), (t * e) as i64, s));
            mm(1, 0, e, d, t, b.f("d_router"), e, b.f("m"), d, 0.0, gr("router"), d);
            mm(0, 0, t, d, e, b.f("d_router"), e, p("router"), d, 1.0, b.f("d_m"), d);
            assert_ok(cudann_rmsnorm_backward(b.f("d_m"), b.f("x_mid"), p("ffn_norm"), b.f("tmp"), gr("ffn_norm"), t, d, eps, s));
            assert_ok(cuda_add(b.f("d_x"), b.f("tmp"), b.f("d_x_mid"), (t * d) as i64, s));
            mm(1, 0, d, qd, t, b.f("d_x_mid"), d, b.f("o"), qd, 0.0, gr("wo"), qd);
            mm(0, 0, t, qd, d, b.f("d_x_mid"), d, p("wo"), qd, 0.0, b.f("d_o"), qd);
            assert_ok(cudann_attention_backward(b.f("d_o"), b.f("q"), b.f("k"), b.f("v"), std::ptr::null(), b.f("o"), b.f("lse"), b.f("d_q"), b.f("d_k"), b.f("d_v"), bt, sq, sq, h, g, hd, 0, 1, scale, s));
            assert_ok(cudann_rope_backward(b.f("d_q"), b.f("d_k"), b.f("freqs"), b.f("d_q"), b.f("d_k"), bt, sq, h, g, hd, 0, s));
            mm(1, 0, qd, d, t, b.f("d_q"), qd, b.f("a"), d, 0.0, gr("wq"), d);
            mm(1, 0, kd, d, t, b.f("d_k"), kd, b.f("a"), d, 0.0, gr("wk"), d);
            mm(1, 0, kd, d, t, b.f("d_v"), kd, b.f("a"), d, 0.0, gr("wv"), d);
            mm(0, 0, t, d, qd, b.f("d_q"), qd, p("wq"), d, 0.0, b.f("d_a"), d);
            mm(0, 0, t, d, kd, b.f("d_k"), kd, p("wk"), d, 1.0, b.f("d_a"), d);
            mm(0, 0, t, d, kd, b.f("d_v"), kd, p("wv"), d, 1.0, b.f("d_a"), d);
            assert_ok(cudann_rmsnorm_backward(b.f("d_a"), b.f("x0"), p("attn_norm"), b.f("tmp"), gr("attn_norm"), t, d, eps, s));
            assert_ok(cuda_add(b.f("d_x_mid"), b.f("tmp"), b.f("d_x0"), (t * d) as i64, s));
            assert_ok(cudann_embedding_backward(b.i("ids"), b.f("d_x0"), gr("embed"), t, v, d, s));
            // Update (the step number is a host argument: a captured step replays with it).
            let n = self.n_params() as i64;
            assert_ok(cuda_grad_clip(b.f("grad"), b.f("partial"), b.f("gnorm"), 1.0, n, s));
            assert_ok(cuda_adamw_step(b.f("params"), b.f("grad"), b.f("adam_m"), b.f("adam_v"), 3e-3, 0.9, 0.95, 1e-8, 0.0, 1, n, s));
        }
    }

    /// Every buffer of the step, the parameters and tokens from `seed`.
    fn buffers(&self, on_device: bool, seed: u64) -> StepBuffers {
        let mut rng = Rng::new(seed);
        let (t, d, qd, kd, f, e, k, v, hd) = (self.t, self.d, self.h * self.hd, self.g * self.hd, self.f, self.e, self.k, self.v, self.hd);
        let n = self.n_params();
        let mut params = rng.vec(n, 0.1);
        for (name, at, len) in self.offsets() {
            if name.ends_with("norm") {
                params[at..at + len].fill(1.0);
            }
        }
        let ids: Vec<f32> = (0..2 * t).map(|_| f32::from_bits(rng.below(v) as u32)).collect();
        // The RoPE table (base 10000) as cuda_rope_freqs writes it, computed on the host.
        let freqs: Vec<f32> = (0..self.seq).flat_map(|pos| (0..hd / 2).map(move |i| pos as f32 * 10000f32.powf(-2.0 * i as f32 / hd as f32))).collect();
        let sizes: Vec<(&'static str, usize, Option<Vec<f32>>)> = vec![
            ("params", n, Some(params)), ("grad", n, None), ("adam_m", n, None), ("adam_v", n, None), ("partial", n.div_ceil(256), None),
            ("ids", t, Some(ids[..t].to_vec())), ("targets", t, Some(ids[t..].to_vec())), ("freqs", freqs.len(), Some(freqs)),
            ("x0", t * d, None), ("a", t * d, None), ("q", t * qd, None), ("k", t * kd, None), ("v", t * kd, None), ("o", t * qd, None),
            ("lse", t * self.h, None), ("x_mid", t * d, None), ("m", t * d, None), ("router_logits", t * e, None), ("probs", t * e, None),
            ("weights", t * k, None), ("experts", t * k, None), ("aux", 1, None), ("f_counts", e, None), ("p_means", e, None),
            ("xs", t * k * d, None), ("order", t * k, None), ("offsets", e + 1, None), ("gate", t * k * f, None), ("up", t * k * f, None),
            ("hh", t * k * f, None), ("y", t * k * d, None), ("moe_out", t * d, None), ("x1", t * d, None), ("xf", t * d, None),
            ("logits", t * v, None), ("log_probs", t * v, None), ("loss", 1, None), ("gnorm", 1, None),
            ("d_logits", t * v, None), ("d_xf", t * d, None), ("d_x", t * d, None), ("d_y", t * k * d, None), ("d_w", t * k, None),
            ("d_h", t * k * f, None), ("d_gate", t * k * f, None), ("d_up", t * k * f, None), ("d_xs", t * k * d, None), ("d_m", t * d, None),
            ("d_router", t * e, None), ("d_probs", t * e, None), ("d_router_aux", t * e, None), ("tmp", t * d, None), ("d_x_mid", t * d, None),
            ("d_o", t * qd, None), ("d_q", t * qd, None), ("d_k", t * kd, None), ("d_v", t * kd, None), ("d_a", t * d, None), ("d_x0", t * d, None),
        ];
        StepBuffers::new(on_device, &sizes)
    }
}

/// A whole training step on device memory, captured into a CUDA graph once
/// and replayed: the same losses (cross-entropy and aux), gradient norms and
/// final parameters, bitwise, as the same step run eagerly on the device
/// (every op is deterministic and a captured call runs the kernels of an
/// uncaptured one at these sizes), and the CPU's losses within 1e-4 relative.
#[test]
fn whole_training_step_captured_and_replayed() {
    let _exclusive = exclusive();
    let net = TinyStep { t: 32, d: 32, h: 4, g: 2, hd: 8, f: 48, e: 4, k: 2, v: 64, batch: 2, seq: 16 };
    // The CPU's run: the step's calls on host memory (this also runs without a GPU).
    let host = net.buffers(false, 108);
    let cpu: Vec<[f32; 3]> = (0..3).map(|_| { net.run(&host, NULL); host.losses() }).collect();
    assert!(cpu.iter().all(|r| r.iter().all(|x| x.is_finite())) && cpu[2][0] < cpu[0][0], "CPU losses {cpu:?}");
    if !present("whole_training_step_captured_and_replayed") {
        return;
    }
    let s = Stream::new();
    let eager = net.buffers(true, 108);
    let mut eager_rows = vec![];
    for _ in 0..3 {
        net.run(&eager, s.raw());
        s.sync();
        eager_rows.push(eager.losses());
    }
    for (i, (g, c)) in eager_rows.iter().zip(&cpu).enumerate() {
        for (x, y) in g.iter().zip(c) {
            assert!((x - y).abs() <= 1e-4 * y.abs().max(1e-3), "step {i}: GPU {g:?}, CPU {c:?}");
        }
    }
    let captured = net.buffers(true, 108);
    // Warm-up outside the capture would change the state: the capture itself
    // runs nothing, so the first replay is the first step.
    let mut graph_rows = vec![];
    capture_and_replay_each(&s, 3, || net.run(&captured, s.raw()), || graph_rows.push(captured.losses()));
    let bits = |rows: &[[f32; 3]]| rows.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&graph_rows), bits(&eager_rows), "captured {graph_rows:?} against eager {eager_rows:?}");
    s.sync();
    let same = captured.read("params").iter().zip(eager.read("params")).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "parameters after three captured steps differ from three eager ones");
}
