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

// ---- general attention (cudann_attention_forward / _backward / kv_cache_write)

/// A general attention problem; K and V hold `capacity` positions.
#[derive(Clone, Copy, Debug)]
struct Gen {
    batch: usize,
    q_len: usize,
    kv_len: usize,
    capacity: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    pos0: usize,
    causal: bool,
}

impl Gen {
    fn q_n(&self) -> usize {
        self.batch * self.q_len * self.heads * self.d
    }
    fn kv_n(&self) -> usize {
        self.batch * self.capacity * self.kv_heads * self.d
    }
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

/// Float64 attention: (output, lse) over params = Q ++ K ++ V.
fn general_ref(g: &Gen, params: &[f64], mask: Option<&[f32]>) -> (Vec<f64>, Vec<f64>) {
    let (q, rest) = params.split_at(g.q_n());
    let (k, v) = rest.split_at(g.kv_n());
    let mut out = vec![0.0; g.q_n()];
    let mut lse = vec![f64::NEG_INFINITY; g.batch * g.q_len * g.heads];
    for b in 0..g.batch {
        for i in 0..g.q_len {
            for n in 0..g.heads {
                let grp = n / (g.heads / g.kv_heads);
                let qi = &q[((b * g.q_len + i) * g.heads + n) * g.d..][..g.d];
                let kv_at = |x: &[f64], j: usize| x[((b * g.capacity + j) * g.kv_heads + grp) * g.d..][..g.d].to_vec();
                let scores: Vec<f64> = (0..g.kv_len)
                    .map(|j| {
                        if g.causal && j > g.pos0 + i {
                            return f64::NEG_INFINITY;
                        }
                        let s: f64 = qi.iter().zip(kv_at(k, j)).map(|(a, b)| a * b).sum::<f64>() * g.scale() as f64;
                        s + mask.map_or(0.0, |m| m[i * g.kv_len + j] as f64)
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let total: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                lse[(b * g.q_len + i) * g.heads + n] = m + total.ln();
                let o = &mut out[((b * g.q_len + i) * g.heads + n) * g.d..][..g.d];
                for (j, s) in scores.iter().enumerate() {
                    let p = (s - m).exp() / total;
                    o.iter_mut().zip(kv_at(v, j)).for_each(|(o, v)| *o += p * v);
                }
            }
        }
    }
    (out, lse)
}

/// cudann_attention_forward on f32 data: (output, lse).
fn general_forward(g: &Gen, q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let mut out = poisoned(g.q_n());
    let mut lse = poisoned(g.batch * g.q_len * g.heads);
    let mask_ptr = mask.map_or(std::ptr::null(), |m| m.as_ptr());
    let code = unsafe {
        cudann_attention_forward(
            q.as_ptr().cast(), k.as_ptr().cast(), v.as_ptr().cast(), mask_ptr, out.as_mut_ptr().cast(), lse.as_mut_ptr(),
            g.batch as i32, g.q_len as i32, g.kv_len as i32, g.capacity as i32, g.heads as i32, g.kv_heads as i32, g.d as i32,
            g.pos0 as i32, g.causal as i32, g.scale(), CUDANN_F32, NULL,
        )
    };
    assert_ok(code);
    (out, lse)
}

fn random_mask(rng: &mut Rng, rows: usize, cols: usize, masked_row: Option<usize>) -> Vec<f32> {
    (0..rows * cols)
        .map(|e| if Some(e / cols) == masked_row || rng.uniform() < 0.2 { f32::NEG_INFINITY } else { (rng.uniform() - 0.5) as f32 })
        .collect()
}

#[test]
fn general_attention_matches_float64() {
    let mut rng = Rng::new(70);
    let cases = [
        Gen { batch: 1, q_len: 1, kv_len: 1, capacity: 1, heads: 1, kv_heads: 1, d: 1, pos0: 0, causal: true },
        Gen { batch: 2, q_len: 7, kv_len: 7, capacity: 7, heads: 4, kv_heads: 4, d: 8, pos0: 0, causal: true },
        Gen { batch: 2, q_len: 33, kv_len: 33, capacity: 33, heads: 4, kv_heads: 2, d: 16, pos0: 0, causal: true },
        Gen { batch: 1, q_len: 130, kv_len: 130, capacity: 130, heads: 4, kv_heads: 1, d: 5, pos0: 0, causal: true },
        Gen { batch: 2, q_len: 65, kv_len: 70, capacity: 70, heads: 2, kv_heads: 1, d: 4, pos0: 0, causal: false },
        // Decoding: one query at the cache's last position, a cache longer than used.
        Gen { batch: 3, q_len: 1, kv_len: 20, capacity: 32, heads: 4, kv_heads: 2, d: 8, pos0: 19, causal: true },
        // Prefill continuing a cache: queries at 10..15 against keys 0..15.
        Gen { batch: 1, q_len: 5, kv_len: 15, capacity: 40, heads: 4, kv_heads: 4, d: 8, pos0: 10, causal: true },
    ];
    for g in cases {
        for with_mask in [false, true] {
            let (q, k, v) = (rng.vec(g.q_n(), 1.0), rng.vec(g.kv_n(), 1.0), rng.vec(g.kv_n(), 1.0));
            // The mask hides one row entirely: zeros and lse = -inf there.
            let mask = with_mask.then(|| random_mask(&mut rng, g.q_len, g.kv_len, Some(g.q_len / 2)));
            let (out, lse) = general_forward(&g, &q, &k, &v, mask.as_deref());
            let params = f64s(&[q, k, v].concat());
            let (want, want_lse) = general_ref(&g, &params, mask.as_deref());
            let what = format!("{g:?} mask {with_mask}");
            assert_close(&out, &want, 1e-5, 1e-5, &format!("output {what}"));
            assert_close(&lse, &want_lse, 1e-5, 1e-5, &format!("lse {what}"));
        }
    }
}

/// dQ, dK, dV against central differences of ⟨dy, attention(Q, K, V)⟩ in float64.
#[test]
fn general_attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(71);
    let cases = [
        Gen { batch: 1, q_len: 1, kv_len: 1, capacity: 1, heads: 1, kv_heads: 1, d: 1, pos0: 0, causal: true },
        Gen { batch: 2, q_len: 5, kv_len: 5, capacity: 5, heads: 4, kv_heads: 2, d: 4, pos0: 0, causal: true },
        Gen { batch: 1, q_len: 3, kv_len: 6, capacity: 6, heads: 4, kv_heads: 1, d: 3, pos0: 3, causal: true },
        Gen { batch: 1, q_len: 7, kv_len: 7, capacity: 7, heads: 2, kv_heads: 2, d: 5, pos0: 0, causal: false },
        Gen { batch: 1, q_len: 70, kv_len: 70, capacity: 70, heads: 2, kv_heads: 1, d: 3, pos0: 0, causal: true },
    ];
    for g in cases {
        for with_mask in [false, true] {
            let (q, k, v) = (rng.vec(g.q_n(), 1.0), rng.vec(g.kv_n(), 1.0), rng.vec(g.kv_n(), 1.0));
            let dy = rng.vec(g.q_n(), 1.0);
            let mask = with_mask.then(|| random_mask(&mut rng, g.q_len, g.kv_len, Some(0)));
            let (out, lse) = general_forward(&g, &q, &k, &v, mask.as_deref());
            let (mut dq, mut dk, mut dv) = (poisoned(g.q_n()), poisoned(g.kv_n()), poisoned(g.kv_n()));
            let mask_ptr = mask.as_ref().map_or(std::ptr::null(), |m| m.as_ptr());
            let code = unsafe {
                cudann_attention_backward(
                    dy.as_ptr(), q.as_ptr(), k.as_ptr(), v.as_ptr(), mask_ptr, out.as_ptr(), lse.as_ptr(),
                    dq.as_mut_ptr(), dk.as_mut_ptr(), dv.as_mut_ptr(), g.batch as i32, g.q_len as i32, g.kv_len as i32,
                    g.heads as i32, g.kv_heads as i32, g.d as i32, g.pos0 as i32, g.causal as i32, g.scale(), NULL,
                )
            };
            assert_ok(code);
            let dy64 = f64s(&dy);
            let want = numeric_grad(&f64s(&[q.clone(), k.clone(), v.clone()].concat()), |p| dot64(&dy64, &general_ref(&g, p, mask.as_deref()).0));
            let what = format!("{g:?} mask {with_mask}");
            let (wq, rest) = want.split_at(g.q_n());
            let (wk, wv) = rest.split_at(g.kv_n());
            assert_close(&dq, wq, 1e-4, 1e-5, &format!("d_q {what}"));
            assert_close(&dk, wk, 1e-4, 1e-5, &format!("d_k {what}"));
            assert_close(&dv, wv, 1e-4, 1e-5, &format!("d_v {what}"));
        }
    }
}

#[test]
fn general_attention_is_deterministic_across_thread_counts() {
    let g = Gen { batch: 2, q_len: 100, kv_len: 100, capacity: 100, heads: 4, kv_heads: 2, d: 16, pos0: 0, causal: true };
    let mut rng = Rng::new(72);
    let (q, k, v, dy) = (rng.vec(g.q_n(), 1.0), rng.vec(g.kv_n(), 1.0), rng.vec(g.kv_n(), 1.0), rng.vec(g.q_n(), 1.0));
    let run = || {
        let (out, lse) = general_forward(&g, &q, &k, &v, None);
        let (mut dq, mut dk, mut dv) = (poisoned(g.q_n()), poisoned(g.kv_n()), poisoned(g.kv_n()));
        let code = unsafe {
            cudann_attention_backward(
                dy.as_ptr(), q.as_ptr(), k.as_ptr(), v.as_ptr(), std::ptr::null(), out.as_ptr(), lse.as_ptr(),
                dq.as_mut_ptr(), dk.as_mut_ptr(), dv.as_mut_ptr(), 2, 100, 100, 4, 2, 16, 0, 1, g.scale(), NULL,
            )
        };
        assert_ok(code);
        (out, lse, dq, dk, dv)
    };
    let many = with_threads(4, run);
    assert!(with_threads(1, run) == many, "results differ between 1 and 4 threads");
}

/// Decoding token by token against a cache gives the logits of recomputing the
/// whole causal sequence: each step's output row equals the full pass's row.
#[test]
fn decoding_against_a_kv_cache_equals_the_full_pass() {
    let (batch, seq, heads, kv_heads, d, max_seq) = (2, 9, 4, 2, 8, 16);
    let full = Gen { batch, q_len: seq, kv_len: seq, capacity: seq, heads, kv_heads, d, pos0: 0, causal: true };
    let mut rng = Rng::new(73);
    let (q, k, v) = (rng.vec(full.q_n(), 1.0), rng.vec(full.kv_n(), 1.0), rng.vec(full.kv_n(), 1.0));
    let (want, _) = general_forward(&full, &q, &k, &v, None);
    let (mut k_cache, mut v_cache) = (poisoned(batch * max_seq * kv_heads * d), poisoned(batch * max_seq * kv_heads * d));
    let row = kv_heads * d;
    for t in 0..seq {
        // This step's key and value rows, then one query against the cache.
        let take = |x: &[f32], width: usize| -> Vec<f32> { (0..batch).flat_map(|b| x[(b * seq + t) * width..][..width].to_vec()).collect() };
        let (k_new, v_new, q_new) = (take(&k, row), take(&v, row), take(&q, heads * d));
        let code = unsafe {
            cudann_kv_cache_write(k_new.as_ptr().cast(), v_new.as_ptr().cast(), k_cache.as_mut_ptr().cast(), v_cache.as_mut_ptr().cast(), batch as i32, 1, max_seq as i32, kv_heads as i32, d as i32, t as i32, CUDANN_F32, NULL)
        };
        assert_ok(code);
        let step = Gen { batch, q_len: 1, kv_len: t + 1, capacity: max_seq, heads, kv_heads, d, pos0: t, causal: true };
        let (out, _) = general_forward(&step, &q_new, &k_cache, &v_cache, None);
        let expect: Vec<f64> = (0..batch).flat_map(|b| f64s(&want[(b * seq + t) * heads * d..][..heads * d])).collect();
        assert_close(&out, &expect, 1e-6, 1e-6, &format!("decode step {t}"));
    }
    // Rows past the last written position were never touched.
    assert!(k_cache[seq * row..max_seq * row].iter().all(|v| v.to_bits() == POISON.to_bits()));
}

#[test]
fn general_attention_bad_arguments() {
    let x = vec![1.0f32; 64];
    let (mut out, mut lse) = (poisoned(64), poisoned(8));
    let f = CUDANN_F32;
    let fwd = |heads: i32, kv_heads: i32, kv_len: i32, capacity: i32, causal: i32, scale: f32, dtype: i32, out: &mut [f32], lse: &mut [f32]| unsafe {
        cudann_attention_forward(
            x.as_ptr().cast(), x.as_ptr().cast(), x.as_ptr().cast(), std::ptr::null(), out.as_mut_ptr().cast(), lse.as_mut_ptr(),
            1, 2, kv_len, capacity, heads, kv_heads, 4, 0, causal, scale, dtype, NULL,
        )
    };
    let name = "cudann_attention_forward";
    assert_invalid(fwd(4, 3, 2, 2, 1, 0.5, f, &mut out, &mut lse), name, "n_kv_heads (3) must divide n_heads (4)");
    assert_invalid(fwd(4, 0, 2, 2, 1, 0.5, f, &mut out, &mut lse), name, "n_kv_heads (0) must divide n_heads (4)");
    assert_invalid(fwd(4, 2, 3, 2, 1, 0.5, f, &mut out, &mut lse), name, "kv_capacity (2) must be >= kv_len (3)");
    assert_invalid(fwd(4, 2, 2, 2, 2, 0.5, f, &mut out, &mut lse), name, "is_causal must be 0 or 1");
    assert_invalid(fwd(4, 2, 2, 2, 1, f32::NAN, f, &mut out, &mut lse), name, "scale must be finite");
    assert_invalid(fwd(4, 2, 2, 2, 1, 0.5, 7, &mut out, &mut lse), name, "dtype must be CUDANN_F32 (0), CUDANN_F16 (1) or CUDANN_BF16 (2) (got 7)");
    assert_untouched(&out, "output");
    assert_untouched(&lse, "lse");
    let (mut kc, mut vc) = (poisoned(64), poisoned(64));
    let code = unsafe { cudann_kv_cache_write(x.as_ptr().cast(), x.as_ptr().cast(), kc.as_mut_ptr().cast(), vc.as_mut_ptr().cast(), 1, 3, 4, 2, 8, 2, f, NULL) };
    assert_invalid(code, "cudann_kv_cache_write", "pos + new_len (2 + 3) must be <= max_seq (4)");
    let code = unsafe { cudann_kv_cache_write(x.as_ptr().cast(), x.as_ptr().cast(), kc.as_mut_ptr().cast(), kc.as_mut_ptr().cast(), 1, 1, 4, 2, 8, 0, f, NULL) };
    assert_invalid(code, "cudann_kv_cache_write", "overlaps");
    assert_untouched(&kc, "k_cache");
    let mut dq = poisoned(64);
    let code = unsafe {
        cudann_attention_backward(x.as_ptr(), x.as_ptr(), x.as_ptr(), x.as_ptr(), std::ptr::null(), x.as_ptr(), std::ptr::null(), dq.as_mut_ptr(), kc.as_mut_ptr(), vc.as_mut_ptr(), 1, 2, 2, 4, 2, 4, 0, 1, 0.5, NULL)
    };
    assert_invalid(code, "cudann_attention_backward", "lse is NULL");
    assert_untouched(&dq, "d_q");
}

/// A whole-cache write (new_len == max_seq) whose inputs are the other cache's
/// buffers: both are read before either is written, as for any in-place call.
#[test]
fn kv_cache_write_with_crossed_buffers_uses_the_old_values() {
    let mut rng = Rng::new(77);
    let (k_new, v_new) = (rng.vec(2 * 5 * 3 * 4, 1.0), rng.vec(2 * 5 * 3 * 4, 1.0));
    let (mut a, mut b) = (k_new.clone(), v_new.clone());
    // k_new is `a`, v_new is `b`; k_cache is `b`, v_cache is `a`.
    let code = unsafe { cudann_kv_cache_write(a.as_ptr().cast(), b.as_ptr().cast(), b.as_mut_ptr().cast(), a.as_mut_ptr().cast(), 2, 5, 5, 3, 4, 0, CUDANN_F32, NULL) };
    assert_ok(code);
    assert_eq!(b, k_new, "k_cache");
    assert_eq!(a, v_new, "v_cache");
}
