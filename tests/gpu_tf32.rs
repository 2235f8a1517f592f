//! Flash attention with CUDANN_ALLOW_TF32=1 (the tensor-core kernel for head_dim
//! 64) against the CPU backend. Its own test binary: the flag is read once per
//! process.
mod common;
use common::device::{Stream, flash_both, mqa_both, present, random_qkv, test_mask};
use common::*;

/// TF32 rounds each product's operands to 10 mantissa bits: the output is off by
/// ~1e-3 of its scale, so compare in relative L2 and bound the worst element.
fn agree_tf32(gpu: &[f32], cpu: &[f32], what: &str) {
    let diff: f64 = gpu.iter().zip(cpu).map(|(&g, &c)| (g as f64 - c as f64).powi(2)).sum();
    let norm: f64 = cpu.iter().map(|&c| (c as f64).powi(2)).sum();
    let worst = gpu.iter().zip(cpu).map(|(&g, &c)| (g - c).abs()).fold(0.0f32, f32::max);
    assert!(diff.sqrt() <= 4e-3 * norm.sqrt(), "{what}: relative L2 error {:.2e}", diff.sqrt() / norm.sqrt());
    assert!(worst <= 3e-2, "{what}: worst element off by {worst}");
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
