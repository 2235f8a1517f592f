//! The GPU paths of the half-precision ops: device pointers on a non-default
//! stream give bitwise the CPU backend's results (the CPU conversions are
//! themselves checked against numpy and ml_dtypes in tests/convert.rs and the
//! Python suite), and host memory runs where the float32 op runs. Skipped,
//! visibly, where there is no GPU (but the host-memory test, trivially true there).
mod common;
use common::device::{Dev, Stream, present};
use common::*;
use cudann::*;

/// `n` elements of type `from` (as raw bits in u32 words, 4 or 2 bytes each)
/// converted on the device at element offset `skew` (misaligned vector paths)
/// and on the host: the two results' bytes.
fn both_ways(s: &Stream, src: &[u8], from: i32, to: i32, elem_in: usize, elem_out: usize, skew: usize) -> (Vec<u8>, Vec<u8>) {
    let n = src.len() / elem_in - skew;
    let mut host = vec![0xA5u8; n * elem_out];
    let dsrc = Dev::from(src);
    let ddst = Dev::from(&vec![0xA5u8; (n + skew) * elem_out]);
    unsafe {
        assert_ok(cudann_convert(src[skew * elem_in..].as_ptr().cast(), from, host.as_mut_ptr().cast(), to, n as i64, NULL));
        let at = |d: &Dev<u8>, bytes| (d.ptr as usize + bytes) as *mut std::ffi::c_void;
        assert_ok(cudann_convert(at(&dsrc, skew * elem_in), from, at(&ddst, skew * elem_out), to, n as i64, s.raw()));
    }
    s.sync();
    (ddst.read()[skew * elem_out..].to_vec(), host)
}

#[test]
fn convert_matches_the_cpu_bit_for_bit() {
    if !present("convert_matches_the_cpu_bit_for_bit") {
        return;
    }
    let s = Stream::new();
    // Every half bit pattern; float32: specials, every exponent around the
    // half ranges, and random bits (NaN payloads included).
    let halves: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    let mut rng = Rng::new(77);
    let mut floats: Vec<u32> = vec![0, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0xffbf_ffff, 0x7f7f_ffff, 0x477f_f000, 0x477f_efff, 0x3380_0000, 0x3380_0001, 0x3300_0000, 0x0000_0001];
    for e in 90..160u32 {
        for m in [0u32, 1, 0x1000, 0x1fff, 0x2000, 0x7fff, 0x8000, 0x8001, 0xffff, 0x7f_ffff] {
            floats.extend([(e << 23) | m, 0x8000_0000 | (e << 23) | m]);
        }
    }
    floats.extend((0..200_000).map(|_| rng.next_u64() as u32));
    let floats: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
    let (f32_, f16_, bf16_) = (CUDANN_F32, CUDANN_F16, CUDANN_BF16);
    for skew in [0, 1, 3] {
        for (src, from, to, ein, eout) in [
            (&halves, f16_, f32_, 2, 4), (&halves, bf16_, f32_, 2, 4), (&halves, f16_, bf16_, 2, 2), (&halves, bf16_, f16_, 2, 2),
            (&floats, f32_, f16_, 4, 2), (&floats, f32_, bf16_, 4, 2), (&halves, f16_, f16_, 2, 2), (&floats, f32_, f32_, 4, 4),
        ] {
            let (gpu, cpu) = both_ways(&s, src, from, to, ein, eout, skew);
            if let Some(i) = (0..cpu.len() / eout).find(|&i| gpu[i * eout..(i + 1) * eout] != cpu[i * eout..(i + 1) * eout]) {
                panic!("convert {from} -> {to} (skew {skew}) element {i}: input {:02x?}, gpu {:02x?}, cpu {:02x?}", &src[(i + skew) * ein..(i + skew + 1) * ein], &gpu[i * eout..(i + 1) * eout], &cpu[i * eout..(i + 1) * eout]);
            }
        }
    }
}

/// Half bits (u16) of `x` in `t`, and their exact float32 values.
fn to_half(x: &[f32], t: i32) -> (Vec<u16>, Vec<f32>) {
    let (mut bits, mut back) = (vec![0u16; x.len()], vec![0f32; x.len()]);
    unsafe {
        assert_ok(cudann_convert(x.as_ptr().cast(), CUDANN_F32, bits.as_mut_ptr().cast(), t, x.len() as i64, NULL));
        assert_ok(cudann_convert(bits.as_ptr().cast(), t, back.as_mut_ptr().cast(), CUDANN_F32, x.len() as i64, NULL));
    }
    (bits, back)
}

#[test]
fn half_gemm_ex_is_the_float64_product_of_the_half_inputs() {
    if !present("half_gemm_ex_is_the_float64_product_of_the_half_inputs") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(78);
    let (m, n, k, batch, pad) = (67usize, 45usize, 130usize, 2usize, 3usize);
    for (t, c_half, ulp) in [(CUDANN_BF16, false, 0.0), (CUDANN_BF16, true, 2f64.powi(-8)), (CUDANN_F16, false, 0.0), (CUDANN_F16, true, 2f64.powi(-11))] {
        for (ta, tb) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let (ar, ac) = if ta == 1 { (k, m) } else { (m, k) };
            let (br, bc) = if tb == 1 { (n, k) } else { (k, n) };
            let (lda, ldb, ldc) = (ac + pad, bc + pad, n + pad);
            let (sa, sb, sc) = (ar * lda, br * ldb, m * ldc);
            let (a, a32) = to_half(&rng.vec(batch * sa, 1.0), t);
            let (b, b32) = to_half(&rng.vec(batch * sb, 1.0), t);
            let c0 = rng.vec(batch * sc, 1.0);
            let (alpha, beta) = (0.75f32, 0.5f32);
            let (c_bits, c_wide) = to_half(&c0, t);
            let (dc32, dc16) = (Dev::from(&c0), Dev::from(&c_bits));
            let (dc, c_type) = if c_half { (dc16.p().cast::<std::ffi::c_void>(), t) } else { (dc32.p().cast(), CUDANN_F32) };
            let c_keep = if c_half { c_wide } else { c0.clone() };
            let (da, db) = (Dev::from(&a), Dev::from(&b));
            unsafe {
                assert_ok(cudann_gemm_ex(ta, tb, m as i32, n as i32, k as i32, alpha, da.p().cast(), t, lda as i64, sa as i64, db.p().cast(), t, ldb as i64, sb as i64, beta, dc, c_type, ldc as i64, sc as i64, batch as i32, s.raw()));
            }
            s.sync();
            let got: Vec<f32> = if c_half {
                let bits = dc16.read();
                let mut v = vec![0f32; bits.len()];
                unsafe { assert_ok(cudann_convert(bits.as_ptr().cast(), t, v.as_mut_ptr().cast(), CUDANN_F32, bits.len() as i64, NULL)) };
                v
            } else {
                dc32.read()
            };
            let at = |x: &[f32], ld: usize, tr: i32, i: usize, j: usize| if tr == 1 { x[j * ld + i] } else { x[i * ld + j] } as f64;
            for bi in 0..batch {
                for i in 0..m {
                    for j in 0..ldc {
                        let idx = bi * sc + i * ldc + j;
                        if j >= n {
                            assert_eq!(got[idx].to_bits(), c_keep[idx].to_bits(), "the gap between C's rows is untouched");
                            continue;
                        }
                        let (mut sum, mut mag) = (0.0f64, 0.0f64);
                        for l in 0..k {
                            let p = at(&a32[bi * sa..], lda, ta, i, l) * at(&b32[bi * sb..], ldb, tb, l, j);
                            sum += p;
                            mag += p.abs();
                        }
                        let want = alpha as f64 * sum + beta as f64 * c_keep[idx] as f64;
                        let tol = 1e-5 * (mag + c_keep[idx].abs() as f64) + ulp * want.abs();
                        assert!((got[idx] as f64 - want).abs() <= tol, "gemm_ex type {t} c_half {c_half} ta {ta} tb {tb} [{bi},{i},{j}]: got {}, want {want}", got[idx]);
                    }
                }
            }
        }
    }
}

#[test]
fn half_embedding_and_kv_cache_write_copy_bit_for_bit() {
    if !present("half_embedding_and_kv_cache_write_copy_bit_for_bit") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(79);
    let bits = |rng: &mut Rng, n: usize| (0..n).map(|_| rng.next_u64() as u16).collect::<Vec<u16>>();
    for t in [CUDANN_F16, CUDANN_BF16] {
        // Embedding: odd and vector-sized rows; a negative id pads with zeros.
        for (n_ids, vocab, dim) in [(5usize, 7usize, 3usize), (33, 50, 64), (9, 4, 1000)] {
            let table = bits(&mut rng, vocab * dim);
            let ids: Vec<i32> = (0..n_ids).map(|i| if i == 1 { -1 } else { (rng.next_u64() % vocab as u64) as i32 }).collect();
            let mut host = vec![0xA5A5u16; n_ids * dim];
            let (dids, dtable, dout) = (Dev::from(&ids), Dev::from(&table), Dev::from(&vec![0x5A5Au16; n_ids * dim]));
            unsafe {
                assert_ok(cudann_embedding(ids.as_ptr(), table.as_ptr().cast(), host.as_mut_ptr().cast(), n_ids as i32, vocab as i32, dim as i32, t, NULL));
                assert_ok(cudann_embedding(dids.p(), dtable.p().cast(), dout.p().cast(), n_ids as i32, vocab as i32, dim as i32, t, s.raw()));
            }
            s.sync();
            assert_eq!(dout.read(), host, "embedding type {t} {n_ids} ids {vocab}x{dim}");
        }
        // KV-cache write: rows around the written ones untouched.
        for (batch, new_len, max_seq, row, pos) in [(1usize, 1usize, 4usize, 3usize, 2usize), (2, 3, 16, 64, 5), (3, 7, 9, 100, 1)] {
            let (kn, vn) = (bits(&mut rng, batch * new_len * row), bits(&mut rng, batch * new_len * row));
            let (mut kc, mut vc) = (bits(&mut rng, batch * max_seq * row), bits(&mut rng, batch * max_seq * row));
            let (dkc, dvc) = (Dev::from(&kc), Dev::from(&vc));
            let a = (batch as i32, new_len as i32, max_seq as i32, 1, row as i32, pos as i32);
            unsafe {
                assert_ok(cudann_kv_cache_write(Dev::from(&kn).p().cast(), Dev::from(&vn).p().cast(), dkc.p().cast(), dvc.p().cast(), a.0, a.1, a.2, a.3, a.4, a.5, t, s.raw()));
                assert_ok(cudann_kv_cache_write(kn.as_ptr().cast(), vn.as_ptr().cast(), kc.as_mut_ptr().cast(), vc.as_mut_ptr().cast(), a.0, a.1, a.2, a.3, a.4, a.5, t, NULL));
            }
            s.sync();
            assert_eq!(dkc.read(), kc, "kv_cache_write k type {t}");
            assert_eq!(dvc.read(), vc, "kv_cache_write v type {t}");
        }
    }
}

/// Half values (as u16 bits) of N(0, scale) draws in type `t`.
fn half_vec(rng: &mut Rng, n: usize, scale: f64, t: i32) -> Vec<u16> {
    to_half(&rng.vec(n, scale), t).0
}

/// The float32 values of half bits.
fn widen(bits: &[u16], t: i32) -> Vec<f32> {
    let mut v = vec![0f32; bits.len()];
    unsafe { assert_ok(cudann_convert(bits.as_ptr().cast(), t, v.as_mut_ptr().cast(), CUDANN_F32, bits.len() as i64, NULL)) };
    v
}

/// Half results of the GPU and the CPU: equal, or (`ulps` > 0) within that
/// many units of the half type's last place (the GPU's float32 kernels round
/// differently from the CPU's, before the one rounding to half).
#[track_caller]
fn half_agree(gpu: &[u16], cpu: &[u16], t: i32, ulps: f64, what: &str) {
    let (g, c) = (widen(gpu, t), widen(cpu, t));
    // The spacing of the type's values: relative above the normal range, fixed below it.
    let (eps, subnormal_step) = if t == CUDANN_BF16 { (2f64.powi(-7), 2f64.powi(-133)) } else { (2f64.powi(-10), 2f64.powi(-24)) };
    for (i, (&a, &b)) in g.iter().zip(&c).enumerate() {
        let ok = if ulps == 0.0 { gpu[i] == cpu[i] } else { a == b || (a as f64 - b as f64).abs() <= ulps * (eps * (b as f64).abs()).max(subnormal_step) };
        assert!(ok, "{what}[{i}]: gpu {a} ({:#06x}), cpu {b} ({:#06x})", gpu[i], cpu[i]);
    }
}

#[test]
fn half_ex_ops_on_device_memory_match_the_cpu() {
    if !present("half_ex_ops_on_device_memory_match_the_cpu") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(80);
    for t in [CUDANN_F16, CUDANN_BF16] {
        let n = 10_007usize;
        let (a, b) = (half_vec(&mut rng, n, 2.0, t), half_vec(&mut rng, n, 2.0, t));
        let (da, db) = (Dev::from(&a), Dev::from(&b));
        // add, mul, scale: one float32 operation, rounded once: bitwise.
        type Binary = unsafe extern "C" fn(*const std::ffi::c_void, *const std::ffi::c_void, *mut std::ffi::c_void, i64, i32, *mut std::ffi::c_void) -> i32;
        for (name, f, ulps) in [("add", cudann_add_ex as Binary, 0.0), ("mul", cudann_mul_ex as Binary, 0.0), ("swiglu", cudann_swiglu as Binary, 1.0)] {
            let mut host = vec![0u16; n];
            let dout = Dev::from(&vec![0u16; n]);
            unsafe {
                assert_ok(f(a.as_ptr().cast(), b.as_ptr().cast(), host.as_mut_ptr().cast(), n as i64, t, NULL));
                assert_ok(f(da.p().cast(), db.p().cast(), dout.p().cast(), n as i64, t, s.raw()));
            }
            s.sync();
            half_agree(&dout.read(), &host, t, ulps, &format!("{name} type {t}"));
            // In place on the device: output == a.
            let dx = Dev::from(&a);
            unsafe { assert_ok(f(dx.p().cast(), db.p().cast(), dx.p().cast(), n as i64, t, s.raw())) };
            s.sync();
            half_agree(&dx.read(), &host, t, ulps, &format!("{name} type {t} in place"));
        }
        let mut host = vec![0u16; n];
        let dout = Dev::from(&vec![0u16; n]);
        unsafe {
            assert_ok(cudann_scale_ex(a.as_ptr().cast(), host.as_mut_ptr().cast(), 0.37, n as i64, t, NULL));
            assert_ok(cudann_scale_ex(da.p().cast(), dout.p().cast(), 0.37, n as i64, t, s.raw()));
        }
        s.sync();
        half_agree(&dout.read(), &host, t, 0.0, &format!("scale type {t}"));

        // Row ops: RMSNorm and softmax (reductions in another order: 1 ulp).
        let (rows, cols) = (37usize, 1000usize);
        let x = half_vec(&mut rng, rows * cols, 3.0, t);
        let w = half_vec(&mut rng, cols, 1.0, t);
        let (dx, dw) = (Dev::from(&x), Dev::from(&w));
        let (mut hn, mut hs) = (vec![0u16; rows * cols], vec![0u16; rows * cols]);
        let (dn, ds) = (Dev::from(&hn), Dev::from(&hs));
        unsafe {
            assert_ok(cudann_rmsnorm_ex(x.as_ptr().cast(), w.as_ptr().cast(), hn.as_mut_ptr().cast(), rows as i32, cols as i32, 1e-5, t, NULL));
            assert_ok(cudann_rmsnorm_ex(dx.p().cast(), dw.p().cast(), dn.p().cast(), rows as i32, cols as i32, 1e-5, t, s.raw()));
            assert_ok(cudann_softmax_ex(x.as_ptr().cast(), hs.as_mut_ptr().cast(), rows as i32, cols as i32, t, NULL));
            assert_ok(cudann_softmax_ex(dx.p().cast(), ds.p().cast(), rows as i32, cols as i32, t, s.raw()));
        }
        s.sync();
        half_agree(&dn.read(), &hn, t, 1.0, &format!("rmsnorm_ex type {t}"));
        half_agree(&ds.read(), &hs, t, 1.0, &format!("softmax_ex type {t}"));

        // RoPE on q and k in place.
        let (batch, seq, hq, hk, d, offset) = (2usize, 9usize, 4usize, 2usize, 64usize, 3usize);
        let mut f = poisoned((seq + offset) * d / 2);
        unsafe { assert_ok(cuda_rope_freqs(f.as_mut_ptr(), (seq + offset) as i32, d as i32, 10000.0, 1.0, NULL)) };
        let (mut q, mut k) = (half_vec(&mut rng, batch * seq * hq * d, 1.0, t), half_vec(&mut rng, batch * seq * hk * d, 1.0, t));
        let (dq, dk, df) = (Dev::from(&q), Dev::from(&k), Dev::from(&f));
        let sh = (batch as i32, seq as i32, hq as i32, hk as i32, d as i32, offset as i32);
        unsafe {
            assert_ok(cudann_rope_qk_ex(dq.p().cast(), dk.p().cast(), df.p(), dq.p().cast(), dk.p().cast(), sh.0, sh.1, sh.2, sh.3, sh.4, sh.5, t, s.raw()));
            let (qp, kp) = (q.as_mut_ptr(), k.as_mut_ptr());
            assert_ok(cudann_rope_qk_ex(qp.cast(), kp.cast(), f.as_ptr(), qp.cast(), kp.cast(), sh.0, sh.1, sh.2, sh.3, sh.4, sh.5, t, NULL));
        }
        s.sync();
        half_agree(&dq.read(), &q, t, 1.0, &format!("rope_qk_ex q type {t}"));
        half_agree(&dk.read(), &k, t, 1.0, &format!("rope_qk_ex k type {t}"));

        // Samplers: the same tokens as the CPU from the same widened logits.
        let (batch, vocab) = (5usize, 3001usize);
        let logits = half_vec(&mut rng, batch * vocab, 3.0, t);
        let seeds: Vec<u64> = (0..batch as u64).map(|i| 1000 + i).collect();
        let (dl, dseeds) = (Dev::from(&logits), Dev::from(&seeds));
        let (bi, vi) = (batch as i32, vocab as i32);
        let run = |f: &dyn Fn(*const std::ffi::c_void, *mut i32, *const u64, *mut std::ffi::c_void) -> i32, what: &str| {
            let mut host = vec![-1i32; batch];
            let dout = Dev::from(&vec![-1i32; batch]);
            assert_ok(f(logits.as_ptr().cast(), host.as_mut_ptr(), seeds.as_ptr(), NULL));
            assert_ok(f(dl.p().cast(), dout.p(), dseeds.p(), s.raw()));
            s.sync();
            assert_eq!(dout.read(), host, "{what} type {t}");
        };
        unsafe {
            run(&|l, o, _, st| cudann_argmax_ex(l, o, bi, vi, t, st), "argmax_ex");
            run(&|l, o, sd, st| cudann_sample_ex(l, o, sd, bi, vi, 0.8, t, st), "sample_ex");
            run(&|l, o, sd, st| cudann_topk_sample_ex(l, o, sd, bi, vi, 40, 0.8, t, st), "topk_sample_ex");
            run(&|l, o, sd, st| cudann_topp_sample_ex(l, o, sd, bi, vi, 0.9, 0.8, t, st), "topp_sample_ex");
        }

        // Attention forward on half Q, K, V: GQA against a KV cache.
        let (batch, q_len, kv_len, cap, heads, kv_heads, hd) = (2usize, 3usize, 40usize, 48usize, 4usize, 2usize, 64usize);
        let qh = half_vec(&mut rng, batch * q_len * heads * hd, 1.0, t);
        let (kh, vh) = (half_vec(&mut rng, batch * cap * kv_heads * hd, 1.0, t), half_vec(&mut rng, batch * cap * kv_heads * hd, 1.0, t));
        let (mut out, mut lse) = (vec![0u16; qh.len()], poisoned(batch * q_len * heads));
        let (dqh, dkh, dvh, dout, dlse) = (Dev::from(&qh), Dev::from(&kh), Dev::from(&vh), Dev::from(&out), Dev::from(&lse));
        let a = (batch as i32, q_len as i32, kv_len as i32, cap as i32, heads as i32, kv_heads as i32, hd as i32, (kv_len - q_len) as i32, 1);
        let scale = 0.125f32;
        unsafe {
            assert_ok(cudann_attention_forward(qh.as_ptr().cast(), kh.as_ptr().cast(), vh.as_ptr().cast(), std::ptr::null(), out.as_mut_ptr().cast(), lse.as_mut_ptr(), a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8, scale, t, NULL));
            assert_ok(cudann_attention_forward(dqh.p().cast(), dkh.p().cast(), dvh.p().cast(), std::ptr::null(), dout.p().cast(), dlse.p(), a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8, scale, t, s.raw()));
        }
        s.sync();
        // Weighted means of |v| ~ 1: within 2 half ulps of the larger of the value and 1/8.
        let (g, c) = (widen(&dout.read(), t), widen(&out, t));
        let eps = if t == CUDANN_BF16 { 2f64.powi(-7) } else { 2f64.powi(-10) };
        for (i, (&x, &y)) in g.iter().zip(&c).enumerate() {
            assert!((x as f64 - y as f64).abs() <= 2.0 * eps * (y as f64).abs().max(0.125), "attention_forward type {t}[{i}]: gpu {x}, cpu {y}");
        }
        assert_close(&dlse.read(), &f64s(&lse), 1e-5, 1e-5, &format!("attention_forward lse type {t}"));
    }
}

#[test]
fn float32_activations_times_half_weights_on_the_device() {
    if !present("float32_activations_times_half_weights_on_the_device") {
        return;
    }
    let s = Stream::new();
    let mut rng = Rng::new(81);
    let (m, n, k) = (3usize, 100usize, 256usize);
    for t in [CUDANN_F16, CUDANN_BF16] {
        let x = rng.vec(m * k, 1.0);
        let (w, w32) = to_half(&rng.vec(n * k, 1.0), t);
        let (dx, dw, dy) = (Dev::from(&x), Dev::from(&w), Dev::from(&poisoned(m * n)));
        // decoding's y = x·Wᵀ, W [n, k] stored row-major
        unsafe { assert_ok(cudann_gemm_ex(0, 1, m as i32, n as i32, k as i32, 1.0, dx.p().cast(), CUDANN_F32, k as i64, 0, dw.p().cast(), t, k as i64, 0, 0.0, dy.p().cast(), CUDANN_F32, n as i64, 0, 1, s.raw())) };
        s.sync();
        let got = dy.read();
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut mag) = (0.0f64, 0.0f64);
                for l in 0..k {
                    let p = x[i * k + l] as f64 * w32[j * k + l] as f64;
                    sum += p;
                    mag += p.abs();
                }
                assert!((got[i * n + j] as f64 - sum).abs() <= 1e-5 * mag, "x·Wᵀ type {t} [{i},{j}]: got {}, want {sum}", got[i * n + j]);
            }
        }
    }
}

/// Host memory on a GPU machine: an op is staged to the GPU or not by its
/// size in bytes, and a half-precision call decides as its float32 op of the
/// same shape would, so its results stay that op's results rounded once (RoPE:
/// the GPU's sines may differ from the CPU's in the last bit). Shapes on both
/// sides of the staging threshold; on a machine without a GPU both run on the
/// CPU and this holds trivially.
#[test]
fn host_half_ops_run_where_their_float32_op_runs() {
    let mut rng = Rng::new(79);
    for t in [CUDANN_F16, CUDANN_BF16] {
        for (batch, seq, hq, hk, hd, offset) in [(2usize, 5usize, 4usize, 2usize, 16usize, 3usize), (2, 300, 8, 2, 64, 40), (4, 600, 8, 2, 64, 0)] {
            let mut freqs = vec![0f32; (seq + offset) * hd / 2];
            unsafe { assert_ok(cuda_rope_freqs(freqs.as_mut_ptr(), (seq + offset) as i32, hd as i32, 10_000.0, 1.0, NULL)) };
            let (nq, nk) = (batch * seq * hq * hd, batch * seq * hk * hd);
            let ((hqs, q), (hks, k)) = (to_half(&rng.vec(nq, 3.0), t), to_half(&rng.vec(nk, 3.0), t));
            let (mut wq, mut wk) = (vec![0f32; nq], vec![0f32; nk]);
            let (mut gq, mut gk) = (vec![0u16; nq], vec![0u16; nk]);
            let dims = (batch as i32, seq as i32, hq as i32, hk as i32, hd as i32, offset as i32);
            unsafe {
                assert_ok(cuda_rope_qk(q.as_ptr(), k.as_ptr(), freqs.as_ptr(), wq.as_mut_ptr(), wk.as_mut_ptr(), dims.0, dims.1, dims.2, dims.3, dims.4, dims.5, NULL));
                let (qp, kp) = (hqs.as_ptr().cast(), hks.as_ptr().cast());
                assert_ok(cudann_rope_qk_ex(qp, kp, freqs.as_ptr(), gq.as_mut_ptr().cast(), gk.as_mut_ptr().cast(), dims.0, dims.1, dims.2, dims.3, dims.4, dims.5, t, NULL));
            }
            let shape = format!("type {t} {batch}x{seq}x{hq}x{hd}");
            assert!(gq == to_half(&wq, t).0, "rope q {shape}: not the float32 op's result rounded");
            assert!(gk == to_half(&wk, t).0, "rope k {shape}: not the float32 op's result rounded");
        }
    }
}
