//! Attention: unfused halves, flash (multi-head) and MQA against float64.
mod common;
use common::*;
use cudann::*;

/// Naive float64 attention. `kv_heads` is `heads` or 1; `mask(i, j)` is added
/// to the score (-inf masks); a fully masked query row gives zeros.
fn attention_ref(q: &[f32], k: &[f32], v: &[f32], batch: usize, seq: usize, heads: usize, kv_heads: usize, d: usize, scale: f32, mask: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut out = vec![0.0; q.len()];
    for b in 0..batch {
        for h in 0..heads {
            let kvh = if kv_heads == 1 { 0 } else { h };
            let kv = |j: usize| ((b * seq + j) * kv_heads + kvh) * d;
            for i in 0..seq {
                let qo = ((b * seq + i) * heads + h) * d;
                let s: Vec<f64> = (0..seq)
                    .map(|j| {
                        let dot: f64 = (0..d).map(|c| q[qo + c] as f64 * k[kv(j) + c] as f64).sum();
                        scale as f64 * dot + mask(i, j)
                    })
                    .collect();
                let p = softmax_ref(&s);
                for c in 0..d {
                    out[qo + c] = (0..seq).map(|j| p[j] * v[kv(j) + c] as f64).sum();
                }
            }
        }
    }
    out
}

fn causal(i: usize, j: usize) -> f64 {
    if j > i { f64::NEG_INFINITY } else { 0.0 }
}

#[test]
fn flash_attention_matches_float64() {
    let mut rng = Rng::new(50);
    for (batch, seq, heads, d) in [(1, 1, 1, 1), (2, 17, 3, 32), (1, 33, 2, 64), (1, 65, 1, 128)] {
        for is_causal in [0, 1] {
            let n = batch * seq * heads * d;
            let (q, k, v) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
            let scale = 1.0 / (d as f32).sqrt();
            let mut out = poisoned(n);
            assert_ok(unsafe { cuda_flash_attention(q.as_ptr(), k.as_ptr(), v.as_ptr(), out.as_mut_ptr(), batch as i32, seq as i32, heads as i32, d as i32, scale, is_causal, NULL) });
            let mask = |i, j| if is_causal == 1 { causal(i, j) } else { 0.0 };
            let want = attention_ref(&q, &k, &v, batch, seq, heads, heads, d, scale, mask);
            assert_close(&out, &want, 1e-4, 1e-5, &format!("flash {batch}x{seq}x{heads}x{d} causal={is_causal}"));
        }
    }
}

#[test]
fn mqa_attention_causal_and_masked() {
    let mut rng = Rng::new(51);
    let (batch, seq, heads, d) = (2, 19, 4, 16);
    let (q, k, v) = (rng.vec(batch * seq * heads * d, 1.0), rng.vec(batch * seq * d, 1.0), rng.vec(batch * seq * d, 1.0));
    let scale = 0.25;
    let mut out = poisoned(q.len());
    assert_ok(unsafe { cuda_mqa_attention(q.as_ptr(), k.as_ptr(), v.as_ptr(), out.as_mut_ptr(), std::ptr::null(), batch as i32, seq as i32, heads as i32, d as i32, scale, NULL) });
    assert_close(&out, &attention_ref(&q, &k, &v, batch, seq, heads, 1, d, scale, causal), 1e-4, 1e-5, "mqa causal");

    // An additive mask: a sliding window, and query 3 fully masked (-> zeros).
    let mask: Vec<f32> = (0..seq * seq)
        .map(|x| {
            let (i, j) = (x / seq, x % seq);
            if i == 3 || j > i || i - j > 4 { f32::NEG_INFINITY } else { 0.0 }
        })
        .collect();
    assert_ok(unsafe { cuda_mqa_attention(q.as_ptr(), k.as_ptr(), v.as_ptr(), out.as_mut_ptr(), mask.as_ptr(), batch as i32, seq as i32, heads as i32, d as i32, scale, NULL) });
    let want = attention_ref(&q, &k, &v, batch, seq, heads, 1, d, scale, |i, j| mask[i * seq + j] as f64);
    assert_close(&out, &want, 1e-4, 1e-5, "mqa masked");
    for b in 0..batch {
        let row = &out[(b * seq + 3) * heads * d..][..heads * d];
        assert!(row.iter().all(|&x| x == 0.0), "fully masked query gives zeros");
    }
}

#[test]
fn unfused_scores_and_output_compose_to_mqa() {
    let mut rng = Rng::new(52);
    let (batch, heads, seq, d) = (2, 3, 21, 8);
    let (q, k, v) = (rng.vec(batch * seq * heads * d, 1.0), rng.vec(batch * seq * d, 1.0), rng.vec(batch * seq * d, 1.0));
    let mut scores = poisoned(batch * heads * seq * seq);
    assert_ok(unsafe { cuda_attention_scores(q.as_ptr(), k.as_ptr(), scores.as_mut_ptr(), batch as i32, heads as i32, seq as i32, d as i32, 0.5, NULL) });
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq {
                for j in 0..seq {
                    let got = scores[((b * heads + h) * seq + i) * seq + j];
                    if j > i {
                        assert_eq!(got, f32::NEG_INFINITY);
                    } else {
                        let want: f64 = 0.5 * (0..d).map(|c| q[((b * seq + i) * heads + h) * d + c] as f64 * k[(b * seq + j) * d + c] as f64).sum::<f64>();
                        assert!((got as f64 - want).abs() < 1e-5, "score {b} {h} {i} {j}");
                    }
                }
            }
        }
    }
    let mut weights = vec![0.0f32; scores.len()];
    unsafe { cuda_softmax(scores.as_ptr(), weights.as_mut_ptr(), (batch * heads * seq) as i32, seq as i32, NULL) };
    // Garbage above the diagonal must be ignored.
    for (x, w) in weights.iter_mut().enumerate() {
        if x % seq > x / seq % seq {
            *w = 1e9;
        }
    }
    let mut out = poisoned(q.len());
    assert_ok(unsafe { cuda_attention_output(weights.as_ptr(), v.as_ptr(), out.as_mut_ptr(), batch as i32, heads as i32, seq as i32, d as i32, NULL) });
    assert_close(&out, &attention_ref(&q, &k, &v, batch, seq, heads, 1, d, 0.5, causal), 1e-4, 1e-5, "scores -> softmax -> output");
}

#[test]
fn attention_bad_arguments() {
    let x = vec![1.0f32; 256];
    let mut out = poisoned(256);
    unsafe {
        assert_invalid(cuda_flash_attention(x.as_ptr(), x.as_ptr(), x.as_ptr(), out.as_mut_ptr(), 1, -4, 2, 8, 1.0, 1, NULL), "cuda_flash_attention", "seq_len must be >= 0");
        assert_invalid(cuda_flash_attention(x.as_ptr(), std::ptr::null(), x.as_ptr(), out.as_mut_ptr(), 1, 4, 2, 8, 1.0, 1, NULL), "cuda_flash_attention", "K is NULL");
        assert_invalid(cuda_mqa_attention(x.as_ptr(), x.as_ptr(), x.as_ptr(), out.as_mut_ptr(), out.as_ptr(), 1, 4, 2, 8, 1.0, NULL), "cuda_mqa_attention", "output partially overlaps mask");
        assert_invalid(cuda_attention_scores(x.as_ptr(), x.as_ptr(), out.as_mut_ptr(), 1, 2, 4, -8, 1.0, NULL), "cuda_attention_scores", "head_dim must be >= 0");
        assert_invalid(cuda_attention_output(x.as_ptr(), x.as_ptr(), std::ptr::null_mut(), 1, 2, 4, 8, NULL), "cuda_attention_output", "output is NULL");
    }
    assert_untouched(&out, "output");
    let mut buf = poisoned(257);
    let p = buf.as_mut_ptr();
    unsafe { assert_invalid(cuda_flash_attention(p, x.as_ptr(), x.as_ptr(), p.add(1), 1, 4, 2, 8, 1.0, 0, NULL), "cuda_flash_attention", "output partially overlaps Q") };
    assert_untouched(&buf, "output");
}

#[test]
fn attention_in_place_on_q_matches_out_of_place() {
    let mut rng = Rng::new(53);
    let (batch, seq, heads, d) = (2, 13, 3, 16);
    let n = batch * seq * heads * d;
    let (q, k, v) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
    let mut want = poisoned(n);
    let mut inplace = q.clone();
    unsafe {
        assert_ok(cuda_flash_attention(q.as_ptr(), k.as_ptr(), v.as_ptr(), want.as_mut_ptr(), batch as i32, seq as i32, heads as i32, d as i32, 0.3, 1, NULL));
        assert_ok(cuda_flash_attention(inplace.as_ptr(), k.as_ptr(), v.as_ptr(), inplace.as_mut_ptr(), batch as i32, seq as i32, heads as i32, d as i32, 0.3, 1, NULL));
    }
    assert_eq!(inplace, want, "flash attention with output == Q");
    let (kv, vv) = (rng.vec(batch * seq * d, 1.0), rng.vec(batch * seq * d, 1.0));
    let mut inplace = q.clone();
    unsafe {
        assert_ok(cuda_mqa_attention(q.as_ptr(), kv.as_ptr(), vv.as_ptr(), want.as_mut_ptr(), std::ptr::null(), batch as i32, seq as i32, heads as i32, d as i32, 0.3, NULL));
        assert_ok(cuda_mqa_attention(inplace.as_ptr(), kv.as_ptr(), vv.as_ptr(), inplace.as_mut_ptr(), std::ptr::null(), batch as i32, seq as i32, heads as i32, d as i32, 0.3, NULL));
    }
    assert_eq!(inplace, want, "mqa attention with output == Q");
}
