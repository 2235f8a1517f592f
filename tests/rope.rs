//! RoPE: the angle table and the five rotation calls against float64.
mod common;
use common::*;
use cudann::*;

fn freqs_ref(rows: usize, d: usize, base: f64, alpha: f64) -> Vec<f64> {
    let b = base * alpha.powf(d as f64 / (d as f64 - 2.0));
    (0..rows).flat_map(|p| (0..d / 2).map(move |i| p as f64 * b.powf(-2.0 * i as f64 / d as f64))).collect()
}

fn freqs(rows: usize, d: usize, base: f32, alpha: f32) -> Vec<f32> {
    let mut f = poisoned(rows * d / 2);
    assert_ok(unsafe { cuda_rope_freqs(f.as_mut_ptr(), rows as i32, d as i32, base, alpha, NULL) });
    f
}

/// Rotates `[batch, seq, heads, d]` with angle(p, i) = f(p, i) * scale(i).
fn rotate_ref(x: &[f32], f: &[f32], seq: usize, heads: usize, d: usize, offset: usize, scale: impl Fn(usize) -> f64) -> Vec<f64> {
    rotate_ref64(&f64s(x), f, seq, heads, d, offset, scale)
}

fn rotate_ref64(x: &[f64], f: &[f32], seq: usize, heads: usize, d: usize, offset: usize, scale: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (t, token) in x.chunks(heads * d).enumerate() {
        let p = t % seq + offset;
        for h in 0..heads {
            for i in 0..d / 2 {
                let angle = f[p * d / 2 + i] as f64 * scale(i);
                let (x0, x1) = (token[h * d + 2 * i], token[h * d + 2 * i + 1]);
                let o = t * heads * d + h * d + 2 * i;
                out[o] = x0 * angle.cos() - x1 * angle.sin();
                out[o + 1] = x0 * angle.sin() + x1 * angle.cos();
            }
        }
    }
    out
}

#[test]
fn freqs_are_angles_with_ntk_base() {
    for (rows, d, base, alpha) in [(1, 2, 10000.0, 1.0), (64, 64, 10000.0, 1.0), (300, 128, 500000.0, 4.0), (17, 4, 10.0, 0.5)] {
        let f = freqs(rows, d, base, alpha);
        assert_close(&f, &freqs_ref(rows, d, base as f64, alpha as f64), 2e-7, 0.0, &format!("freqs d={d} alpha={alpha}"));
    }
}

#[test]
fn rope_forward_with_offset_matches_float64() {
    let mut rng = Rng::new(40);
    for (batch, seq, heads, d, offset) in [(1, 1, 1, 2, 0), (2, 7, 3, 8, 5), (3, 33, 4, 64, 100), (1, 5, 2, 128, 4000)] {
        let f = freqs(seq + offset, d, 10000.0, 1.0);
        let x = rng.vec(batch * seq * heads * d, 1.0);
        let mut y = poisoned(x.len());
        assert_ok(unsafe { cuda_rope_forward(x.as_ptr(), f.as_ptr(), y.as_mut_ptr(), batch as i32, seq as i32, heads as i32, d as i32, offset as i32, NULL) });
        assert_close(&y, &rotate_ref(&x, &f, seq, heads, d, offset, |_| 1.0), 1e-5, 1e-5, "rope_forward");
        // In place gives the same.
        let mut z = x.clone();
        assert_ok(unsafe { cuda_rope_forward(z.as_ptr(), f.as_ptr(), z.as_mut_ptr(), batch as i32, seq as i32, heads as i32, d as i32, offset as i32, NULL) });
        assert_eq!(z, y);
    }
}

#[test]
fn rope_qk_and_in_place_rope_match_float64() {
    let mut rng = Rng::new(41);
    let (batch, seq, hq, hkv, d, offset) = (2, 9, 8, 2, 16, 3);
    let f = freqs(seq + offset, d, 10000.0, 1.0);
    let q = rng.vec(batch * seq * hq * d, 1.0);
    let k = rng.vec(batch * seq * hkv * d, 1.0);
    let (mut qo, mut ko) = (poisoned(q.len()), poisoned(k.len()));
    assert_ok(unsafe {
        cuda_rope_qk(q.as_ptr(), k.as_ptr(), f.as_ptr(), qo.as_mut_ptr(), ko.as_mut_ptr(), batch as i32, seq as i32, hq as i32, hkv as i32, d as i32, offset as i32, NULL)
    });
    assert_close(&qo, &rotate_ref(&q, &f, seq, hq, d, offset, |_| 1.0), 1e-5, 1e-5, "q_out");
    assert_close(&ko, &rotate_ref(&k, &f, seq, hkv, d, offset, |_| 1.0), 1e-5, 1e-5, "k_out");

    let k2 = rng.vec(q.len(), 1.0);
    let (mut qi, mut ki) = (q.clone(), k2.clone());
    assert_ok(unsafe { cuda_rope(qi.as_mut_ptr(), ki.as_mut_ptr(), f.as_ptr(), batch as i32, seq as i32, hq as i32, d as i32, NULL) });
    assert_close(&qi, &rotate_ref(&q, &f, seq, hq, d, 0, |_| 1.0), 1e-5, 1e-5, "rope q");
    assert_close(&ki, &rotate_ref(&k2, &f, seq, hq, d, 0, |_| 1.0), 1e-5, 1e-5, "rope k");
}

#[test]
fn rope_ntk_scales_only_beyond_the_original_length() {
    let mut rng = Rng::new(42);
    let (batch, seq, heads, d, alpha) = (2, 12, 3, 32, 4.0f32);
    let f = freqs(seq, d, 10000.0, 1.0);
    let q = rng.vec(batch * seq * heads * d, 1.0);
    let k = rng.vec(q.len(), 1.0);
    let scaled = |i: usize| (alpha as f64).powf(-2.0 * i as f64 / (d as f64 - 2.0));
    for (orig_len, scaling) in [(8, true), (12, false), (100, false)] {
        let (mut qi, mut ki) = (q.clone(), k.clone());
        assert_ok(unsafe { cuda_rope_ntk(qi.as_mut_ptr(), ki.as_mut_ptr(), f.as_ptr(), batch as i32, seq as i32, heads as i32, d as i32, alpha, orig_len, NULL) });
        let scale = |i: usize| if scaling { scaled(i) } else { 1.0 };
        assert_close(&qi, &rotate_ref(&q, &f, seq, heads, d, 0, scale), 1e-5, 1e-5, &format!("ntk q orig_len={orig_len}"));
        assert_close(&ki, &rotate_ref(&k, &f, seq, heads, d, 0, scale), 1e-5, 1e-5, "ntk k");
    }
}

#[test]
fn rope_bad_arguments() {
    let mut f = poisoned(64);
    let x = vec![1.0f32; 64];
    let mut y = poisoned(64);
    unsafe {
        assert_invalid(cuda_rope_freqs(f.as_mut_ptr(), 4, 7, 10000.0, 1.0, NULL), "cuda_rope_freqs", "head_dim must be even and > 0 (got 7)");
        assert_invalid(cuda_rope_freqs(f.as_mut_ptr(), 4, 2, 10000.0, 2.0, NULL), "cuda_rope_freqs", "alpha != 1 needs head_dim >= 4");
        assert_invalid(cuda_rope_freqs(f.as_mut_ptr(), 4, 8, -1.0, 1.0, NULL), "cuda_rope_freqs", "base must be finite and > 0");
        assert_invalid(cuda_rope_freqs(f.as_mut_ptr(), -4, 8, 10000.0, 1.0, NULL), "cuda_rope_freqs", "max_seq_len must be >= 0");
        assert_untouched(&f, "freqs");
        let fr = vec![0.1f32; 64];
        assert_invalid(cuda_rope_forward(x.as_ptr(), fr.as_ptr(), y.as_mut_ptr(), 1, 2, 2, 8, -1, NULL), "cuda_rope_forward", "offset must be >= 0");
        assert_invalid(cuda_rope_forward(x.as_ptr(), fr.as_ptr(), y.as_mut_ptr(), 1, 2, 2, 5, 0, NULL), "cuda_rope_forward", "head_dim must be even");
        assert_invalid(cuda_rope_forward(x.as_ptr(), std::ptr::null(), y.as_mut_ptr(), 1, 2, 2, 8, 0, NULL), "cuda_rope_forward", "freqs is NULL");
        let p = y.as_mut_ptr();
        assert_invalid(cuda_rope(p, p.add(8), fr.as_ptr(), 1, 2, 2, 8, NULL), "cuda_rope", "overlaps");
        assert_invalid(cuda_rope_ntk(p, p.add(32), fr.as_ptr(), 1, 2, 2, 2, 3.0, 1, NULL), "cuda_rope_ntk", "alpha != 1 needs head_dim >= 4");
        assert_invalid(cuda_rope_ntk(p, p.add(32), fr.as_ptr(), 1, 2, 2, 8, 0.0, 1, NULL), "cuda_rope_ntk", "alpha must be finite and > 0");
        assert_invalid(cuda_rope_ntk(p, p.add(32), fr.as_ptr(), 1, 2, 2, 8, 2.0, -1, NULL), "cuda_rope_ntk", "orig_len must be >= 0");
        let mut ko = poisoned(64);
        assert_invalid(cuda_rope_qk(x.as_ptr(), x.as_ptr(), fr.as_ptr(), y.as_mut_ptr(), ko.as_mut_ptr(), 1, 2, -2, 2, 8, 0, NULL), "cuda_rope_qk", "n_q_heads must be >= 0");
        assert_untouched(&ko, "k_out");
    }
    assert_untouched(&y, "output");
}

/// The backward is the inverse rotation: against finite differences of
/// ⟨dy, rope(x)⟩ in float64, for q and k of different head counts at an offset.
#[test]
fn rope_backward_matches_finite_differences() {
    let mut rng = Rng::new(45);
    for (batch, seq, hq, hk, d, offset) in [(1, 1, 1, 1, 2, 0), (2, 5, 4, 2, 8, 3), (1, 7, 4, 1, 16, 100), (2, 3, 2, 0, 4, 0)] {
        let f = freqs(seq + offset, d, 10000.0, 1.0);
        let (nq, nk) = (batch * seq * hq * d, batch * seq * hk * d);
        let (dq, dk) = (rng.vec(nq, 1.0), rng.vec(nk, 1.0));
        let (mut dq_out, mut dk_out) = (poisoned(nq), poisoned(nk));
        let (b, s, d32, o) = (batch as i32, seq as i32, d as i32, offset as i32);
        let code = unsafe { cudann_rope_backward(dq.as_ptr(), dk.as_ptr(), f.as_ptr(), dq_out.as_mut_ptr(), dk_out.as_mut_ptr(), b, s, hq as i32, hk as i32, d32, o, NULL) };
        assert_ok(code);
        for (heads, dy, got) in [(hq, &dq, &dq_out), (hk, &dk, &dk_out)] {
            let x = vec![0.0f32; dy.len()];
            let dy64 = f64s(dy);
            let want = numeric_grad(&f64s(&x), |x| dot64(&dy64, &rotate_ref64(x, &f, seq, heads, d, offset, |_| 1.0)));
            assert_close(got, &want, 1e-5, 1e-6, &format!("rope_backward heads {heads} d {d} offset {offset}"));
        }
        // In place gives the same bits.
        let (mut q2, mut k2) = (dq.clone(), dk.clone());
        let code = unsafe { cudann_rope_backward(q2.as_ptr(), k2.as_ptr(), f.as_ptr(), q2.as_mut_ptr(), k2.as_mut_ptr(), b, s, hq as i32, hk as i32, d32, o, NULL) };
        assert_ok(code);
        assert_eq!((q2, k2), (dq_out, dk_out));
    }
    let mut out = poisoned(8);
    let code = unsafe { cudann_rope_backward(std::ptr::null(), out.as_ptr(), std::ptr::null(), std::ptr::null_mut(), out.as_mut_ptr(), 1, 1, 1, 1, 8, 0, NULL) };
    assert_invalid(code, "cudann_rope_backward", "d_q is NULL");
    assert_untouched(&out, "d_k_out");
}
