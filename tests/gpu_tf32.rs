//! Attention with CUDANN_ALLOW_TF32=1 (the tensor-core kernels: flash attention
//! for head_dim 64, the fused backward for head_dim <= 64) against the CPU
//! backend. Its own test binary: the flag is read once per process.
mod common;
use common::device::{Dev, Stream, flash_both, mqa_both, present, random_qkv, test_mask};
use common::*;
use cudann::*;

/// TF32 rounds each product's operands to 10 mantissa bits: the output is off by
/// ~1e-3 of its scale, so compare in relative L2 and bound the worst element.
fn agree_tf32(gpu: &[f32], cpu: &[f32], what: &str) {
    let diff: f64 = gpu.iter().zip(cpu).map(|(&g, &c)| (g as f64 - c as f64).powi(2)).sum();
    let norm: f64 = cpu.iter().map(|&c| (c as f64).powi(2)).sum();
    let worst = gpu.iter().zip(cpu).map(|(&g, &c)| (g - c).abs()).fold(0.0f32, f32::max);
    assert!(diff.sqrt() <= 4e-3 * norm.sqrt(), "{what}: relative L2 error {:.2e}", diff.sqrt() / norm.sqrt());
    let peak = cpu.iter().fold(1.0f32, |m, &c| m.max(c.abs()));
    assert!(worst <= 3e-2 * peak, "{what}: worst element off by {worst} (largest {peak})");
}

#[test]
fn tf32_flash_attention_matches_the_cpu() {
    // SAFETY: set before this process's first library call, with no other threads.
    unsafe { std::env::set_var("CUDANN_ALLOW_TF32", "1") };
    if !present("tf32_flash_attention_matches_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(120);
    for (batch, seq, heads, d) in [(2, 37, 3, 64), (1, 129, 2, 64), (1, 300, 4, 64), (1, 70, 2, 48)] {
        let (q, k, v, dims) = random_qkv(&mut rng, (batch, seq, heads, d));
        for causal in [0, 1] {
            let (gpu, cpu) = flash_both(&s, &q, &k, &v, dims, causal);
            let what = format!("flash {batch}x{seq}x{heads}x{d} causal={causal}");
            if d == 64 {
                agree_tf32(&gpu, &cpu, &what);
            } else {
                assert_close(&gpu, &f64s(&cpu), 2e-5, 1e-6, &what); // no TF32 kernel: the fp32 one
            }
        }
        // One shared KV head with an additive mask that masks one query's every key.
        let (kv, vv) = (rng.vec(batch * seq * d, 1.0), rng.vec(batch * seq * d, 1.0));
        let (got, out) = mqa_both(&s, &q, &kv, &vv, Some(&test_mask(seq)), dims);
        if d == 64 {
            agree_tf32(&got, &out, &format!("mqa {batch}x{seq}x{heads}x{d}"));
        }
        let masked_row = (seq / 2) * heads * d..(seq / 2 + 1) * heads * d; // batch 0, query seq / 2, every head
        assert!(got[masked_row].iter().all(|&x| x == 0.0), "a query with every key masked gives zeros");
    }
}

/// The fused attention backward on tensor cores (head_dim <= 64, a multiple of
/// 4, aligned): its gradients against the CPU's, and the same bits run after run.
#[test]
fn tf32_attention_backward_matches_the_cpu() {
    // SAFETY: set before this process's first library call, with no other threads.
    unsafe { std::env::set_var("CUDANN_ALLOW_TF32", "1") };
    if !present("tf32_attention_backward_matches_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(121);
    // (batch, q_len, kv_len, heads, kv_heads, head_dim, pos0, causal, mask)
    let cases = [
        (2, 150, 150, 4, 2, 64, 0, 1, false), // several query and key tiles, GQA
        (1, 100, 230, 2, 1, 48, 130, 1, true), // causal after a prefix, a mask, head_dim padded to 64
        (1, 70, 70, 2, 2, 32, 0, 0, false),   // not causal
        (2, 37, 37, 4, 1, 64, 0, 1, true),    // one partial tile, MQA
        (1, 9, 13, 2, 1, 36, 0, 0, false),    // head_dim not a multiple of 8
    ];
    for (batch, q_len, kv_len, heads, kv_heads, d, pos0, causal, masked) in cases {
        let what = format!("tf32 backward b{batch} q{q_len} kv{kv_len} h{heads}/{kv_heads} d{d} pos0 {pos0} causal {causal} mask {masked}");
        let (qn, kvn, ln) = (batch * q_len * heads * d, batch * kv_len * kv_heads * d, batch * q_len * heads);
        let (q, k, v, dy) = (rng.vec(qn, 1.0), rng.vec(kvn, 1.0), rng.vec(kvn, 1.0), rng.vec(qn, 1.0));
        let mut mask = rng.vec(q_len * kv_len, 1.0);
        mask[..kv_len].fill(f32::NEG_INFINITY); // a query that sees no key: zero gradients
        let mask_ptr = |m: *const f32| if masked { m } else { std::ptr::null() };
        let scale = 1.0 / (d as f32).sqrt();
        let a = (batch as i32, q_len as i32, kv_len as i32, heads as i32, kv_heads as i32, d as i32, pos0 as i32, causal);
        let (mut out, mut lse) = (poisoned(qn), poisoned(ln));
        let (mut gq, mut gk, mut gv) = (poisoned(qn), poisoned(kvn), poisoned(kvn));
        unsafe {
            assert_ok(cudann_attention_forward(q.as_ptr().cast(), k.as_ptr().cast(), v.as_ptr().cast(), mask_ptr(mask.as_ptr()), out.as_mut_ptr().cast(), lse.as_mut_ptr(), a.0, a.1, a.2, a.2, a.3, a.4, a.5, a.6, a.7, scale, CUDANN_F32, NULL));
            assert_ok(cudann_attention_backward(dy.as_ptr(), q.as_ptr(), k.as_ptr(), v.as_ptr(), mask_ptr(mask.as_ptr()), out.as_ptr(), lse.as_ptr(), gq.as_mut_ptr(), gk.as_mut_ptr(), gv.as_mut_ptr(), a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, scale, NULL));
        }
        let [ddy, dq, dk, dv, dm, dout, dlse] = [&dy, &q, &k, &v, &mask, &out, &lse].map(|x| Dev::from(x));
        let grads = || (Dev::from(&poisoned(qn)), Dev::from(&poisoned(kvn)), Dev::from(&poisoned(kvn)));
        let (eq, ek, ev) = grads();
        let (fq, fk, fv) = grads();
        unsafe {
            for (oq, ok, ov) in [(&eq, &ek, &ev), (&fq, &fk, &fv)] {
                assert_ok(cudann_attention_backward(ddy.p(), dq.p(), dk.p(), dv.p(), mask_ptr(dm.p()), dout.p(), dlse.p(), oq.p(), ok.p(), ov.p(), a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, scale, s.raw()));
            }
        }
        s.sync();
        for (name, gpu, again, cpu) in [("d_q", &eq, &fq, &gq), ("d_k", &ek, &fk, &gk), ("d_v", &ev, &fv, &gv)] {
            let got = gpu.read();
            agree_tf32(&got, cpu, &format!("{what}: {name}"));
            assert_eq!(again.read().iter().map(|x| x.to_bits()).collect::<Vec<_>>(), got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{what}: {name} run to run");
        }
        if masked {
            let row = 0..heads * d; // batch 0, query 0 sees no key
            assert!(eq.read()[row].iter().all(|&x| x == 0.0), "{what}: a query that sees no key gets a zero d_q");
        }
    }
}
