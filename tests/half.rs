//! The `_ex` ops in float16 and bfloat16: each result must be exactly the
//! float32 op on the widened inputs, rounded once to the type (the float32 ops
//! are checked against float64 in their own files, and the conversions in
//! tests/convert.rs); samplers must pick the very tokens the float32 sampler
//! picks from the widened logits. In place, bad types and the float32 path too.
mod common;
use std::ffi::c_void;

use common::*;
use cudann::*;

const HALVES: [i32; 2] = [CUDANN_F16, CUDANN_BF16];

/// `x` rounded to `t`: (the half bits, their float32 values).
fn to_half(x: &[f32], t: i32) -> (Vec<u16>, Vec<f32>) {
    let (mut h, mut w) = (vec![0u16; x.len()], vec![0f32; x.len()]);
    unsafe {
        assert_ok(cudann_convert(x.as_ptr().cast(), CUDANN_F32, h.as_mut_ptr().cast(), t, x.len() as i64, NULL));
        assert_ok(cudann_convert(h.as_ptr().cast(), t, w.as_mut_ptr().cast(), CUDANN_F32, x.len() as i64, NULL));
    }
    (h, w)
}

/// Float32 results rounded to `t`.
fn rounded(y: &[f32], t: i32) -> Vec<u16> {
    to_half(y, t).0
}

fn vp<T>(x: &[T]) -> *const c_void {
    x.as_ptr().cast()
}

fn vm<T>(x: &mut [T]) -> *mut c_void {
    x.as_mut_ptr().cast()
}

#[test]
fn elementwise_ex_is_the_float32_op_rounded_once() {
    let mut rng = Rng::new(61);
    for t in HALVES {
        for n in [1usize, 33, 16_385, 100_003] {
            let (ha, a) = to_half(&rng.vec(n, 3.0), t);
            let (hb, b) = to_half(&rng.vec(n, 3.0), t);
            let (mut want, mut got) = (vec![0f32; n], vec![0u16; n]);
            let ni = n as i64;
            unsafe {
                assert_ok(cuda_add(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
                assert_ok(cudann_add_ex(vp(&ha), vp(&hb), vm(&mut got), ni, t, NULL));
                assert_eq!(got, rounded(&want, t), "add type {t} n {n}");
                assert_ok(cuda_mul(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
                assert_ok(cudann_mul_ex(vp(&ha), vp(&hb), vm(&mut got), ni, t, NULL));
                assert_eq!(got, rounded(&want, t), "mul type {t} n {n}");
                assert_ok(cuda_scale(a.as_ptr(), want.as_mut_ptr(), -0.3, ni, NULL));
                assert_ok(cudann_scale_ex(vp(&ha), vm(&mut got), -0.3, ni, t, NULL));
                assert_eq!(got, rounded(&want, t), "scale type {t} n {n}");
                // In place: the output is the input.
                let mut inplace = ha.clone();
                assert_ok(cudann_add_ex(vp(&inplace), vp(&hb), vm(&mut inplace), ni, t, NULL));
                assert_ok(cuda_add(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
                assert_eq!(inplace, rounded(&want, t), "add in place type {t} n {n}");
            }
        }
    }
}

#[test]
fn softmax_ex_keeps_the_float32_special_cases() {
    let mut rng = Rng::new(64);
    for t in HALVES {
        for cols in [5, 70_000] {
            // Rows: all -inf (zeros), some -inf and a -0, a NaN, a +inf, a
            // plain one, all -inf again, and a plain one (a row's scaling
            // may wait for the next row's exponentials, past the -inf rows).
            let mut v = rng.vec(7 * cols, 3.0);
            v[..cols].fill(f32::NEG_INFINITY);
            v[cols + 1] = f32::NEG_INFINITY;
            v[cols + 2] = -0.0;
            v[2 * cols + 3 % cols] = f32::NAN;
            v[3 * cols + 4 % cols] = f32::INFINITY;
            v[5 * cols..6 * cols].fill(f32::NEG_INFINITY);
            let (hx, x) = to_half(&v, t);
            let (mut want, mut got) = (vec![0f32; v.len()], vec![7u16; v.len()]);
            unsafe {
                assert_ok(cuda_softmax(x.as_ptr(), want.as_mut_ptr(), 7, cols as i32, NULL));
                assert_ok(cudann_softmax_ex(vp(&hx), vm(&mut got), 7, cols as i32, t, NULL));
            }
            let zeros = |r: usize| want[r * cols..(r + 1) * cols].iter().all(|&p| p == 0.0);
            assert!(zeros(0) && zeros(5) && want[2 * cols..3 * cols].iter().all(|p| p.is_nan()), "float32 specials");
            assert_eq!(got, rounded(&want, t), "softmax type {t} cols {cols}");
        }
    }
}

/// Rows spread over 112 below their maximum, so that many results are
/// subnormal floats, whole vectors of them (CPUs with AVX512-BF16 round
/// other vectors by its instruction, which takes subnormals as zero): the
/// float32 op's bits rounded once.
#[test]
fn softmax_ex_rounds_subnormal_results() {
    let mut rng = Rng::new(69);
    for t in HALVES {
        for cols in [48, 4103] {
            let v: Vec<f32> = (0..9 * cols).map(|_| (rng.uniform() * -112.0) as f32).collect();
            let (hx, x) = to_half(&v, t);
            let (mut want, mut got) = (vec![0f32; v.len()], vec![0u16; v.len()]);
            unsafe {
                assert_ok(cuda_softmax(x.as_ptr(), want.as_mut_ptr(), 9, cols as i32, NULL));
                assert_ok(cudann_softmax_ex(vp(&hx), vm(&mut got), 9, cols as i32, t, NULL));
            }
            let subnormal = want.iter().filter(|&&p| p > 0.0 && p < f32::MIN_POSITIVE).count();
            assert!(subnormal > v.len() / 20, "{subnormal} subnormal results of {}", v.len());
            assert_eq!(got, rounded(&want, t), "softmax type {t} cols {cols}");
        }
    }
}

#[test]
fn row_ops_ex_are_the_float32_op_rounded_once() {
    let mut rng = Rng::new(62);
    for t in HALVES {
        // (1, 70_000): a row longer than a worker's kept scratch.
        for (rows, cols) in [(1, 1), (3, 31), (7, 1000), (2, 40_000), (600, 7), (1, 70_000)] {
            let n = rows * cols;
            let (hx, x) = to_half(&rng.vec(n, 3.0), t);
            let (hw, w) = to_half(&rng.vec(cols, 1.0), t);
            let (mut want, mut got) = (vec![0f32; n], vec![0u16; n]);
            let (r, c) = (rows as i32, cols as i32);
            unsafe {
                assert_ok(cuda_softmax(x.as_ptr(), want.as_mut_ptr(), r, c, NULL));
                assert_ok(cudann_softmax_ex(vp(&hx), vm(&mut got), r, c, t, NULL));
                assert_eq!(got, rounded(&want, t), "softmax type {t} {rows}x{cols}");
                assert_ok(cuda_rmsnorm(x.as_ptr(), w.as_ptr(), want.as_mut_ptr(), r, c, 1e-5, NULL));
                assert_ok(cudann_rmsnorm_ex(vp(&hx), vp(&hw), vm(&mut got), r, c, 1e-5, t, NULL));
                assert_eq!(got, rounded(&want, t), "rmsnorm type {t} {rows}x{cols}");
                let mut inplace = hx.clone();
                assert_ok(cudann_rmsnorm_ex(vp(&inplace), vp(&hw), vm(&mut inplace), r, c, 1e-5, t, NULL));
                assert_eq!(inplace, rounded(&want, t), "rmsnorm in place type {t} {rows}x{cols}");
            }
        }
    }
}

#[test]
fn samplers_ex_pick_the_float32_samplers_tokens() {
    let mut rng = Rng::new(63);
    let (batch, vocab) = (9, 5003);
    for t in HALVES {
        let (hx, x) = to_half(&rng.vec(batch * vocab, 4.0), t);
        let seeds: Vec<u64> = (0..batch as u64).map(|i| i * 7919 + 3).collect();
        let (mut want, mut got) = (vec![-1i32; batch], vec![-1i32; batch]);
        let (b, v) = (batch as i32, vocab as i32);
        unsafe {
            assert_ok(cuda_argmax(x.as_ptr(), want.as_mut_ptr(), b, v, NULL));
            assert_ok(cudann_argmax_ex(vp(&hx), got.as_mut_ptr(), b, v, t, NULL));
            assert_eq!(got, want, "argmax type {t}");
            assert_ok(cuda_sample(x.as_ptr(), want.as_mut_ptr(), seeds.as_ptr(), b, v, 0.8, NULL));
            assert_ok(cudann_sample_ex(vp(&hx), got.as_mut_ptr(), seeds.as_ptr(), b, v, 0.8, t, NULL));
            assert_eq!(got, want, "sample type {t}");
            assert_ok(cuda_topk_sample(x.as_ptr(), want.as_mut_ptr(), seeds.as_ptr(), b, v, 40, 1.1, NULL));
            assert_ok(cudann_topk_sample_ex(vp(&hx), got.as_mut_ptr(), seeds.as_ptr(), b, v, 40, 1.1, t, NULL));
            assert_eq!(got, want, "top-k type {t}");
            assert_ok(cuda_topp_sample(x.as_ptr(), want.as_mut_ptr(), seeds.as_ptr(), b, v, 0.9, 0.7, NULL));
            assert_ok(cudann_topp_sample_ex(vp(&hx), got.as_mut_ptr(), seeds.as_ptr(), b, v, 0.9, 0.7, t, NULL));
            assert_eq!(got, want, "top-p type {t}");
        }
    }
}

#[test]
fn the_float32_type_is_the_plain_op() {
    let mut rng = Rng::new(64);
    let x = rng.vec(4 * 300, 2.0);
    let w = rng.vec(300, 1.0);
    let (mut want, mut got) = (vec![0f32; x.len()], poisoned(x.len()));
    unsafe {
        assert_ok(cuda_rmsnorm(x.as_ptr(), w.as_ptr(), want.as_mut_ptr(), 4, 300, 1e-6, NULL));
        assert_ok(cudann_rmsnorm_ex(vp(&x), vp(&w), vm(&mut got), 4, 300, 1e-6, CUDANN_F32, NULL));
        assert_eq!(got, want);
        assert_ok(cuda_softmax(x.as_ptr(), want.as_mut_ptr(), 4, 300, NULL));
        assert_ok(cudann_softmax_ex(vp(&x), vm(&mut got), 4, 300, CUDANN_F32, NULL));
        assert_eq!(got, want);
    }
}

#[test]
fn bad_arguments_are_refused_and_nothing_is_written() {
    let x = vec![0x3c00u16; 64];
    let mut y = vec![0x5555u16; 64];
    let mut tokens = vec![-7i32; 2];
    unsafe {
        assert_invalid(cudann_add_ex(vp(&x), vp(&x), vm(&mut y), 64, 5, NULL), "cudann_add_ex", "dtype must be CUDANN_F32 (0), CUDANN_F16 (1) or CUDANN_BF16 (2) (got 5)");
        assert_invalid(cudann_softmax_ex(vp(&x), vm(&mut y), 2, 32, CUDANN_I32, NULL), "cudann_softmax_ex", "dtype must be");
        assert_invalid(cudann_rmsnorm_ex(vp(&x), vp(&x), vm(&mut y), 2, 32, -1.0, CUDANN_BF16, NULL), "cudann_rmsnorm_ex", "eps must be finite and >= 0");
        assert_invalid(cudann_scale_ex(vp(&x), vm(&mut y), 2.0, -1, CUDANN_F16, NULL), "cudann_scale_ex", "n must be >= 0");
        assert_invalid(cudann_add_ex(vp(&x), vp(&x), x.as_ptr().cast::<u8>().add(1).cast_mut().cast(), 8, CUDANN_F16, NULL), "cudann_add_ex", "output is not aligned to 2 bytes");
        let overlap = y.as_mut_ptr();
        assert_invalid(cudann_add_ex(overlap.add(1).cast(), vp(&x), overlap.cast(), 32, CUDANN_BF16, NULL), "cudann_add_ex", "partially overlaps");
        assert_invalid(cudann_topk_sample_ex(vp(&x), tokens.as_mut_ptr(), [1u64, 2].as_ptr(), 2, 32, 0, 1.0, CUDANN_BF16, NULL), "cudann_topk_sample_ex", "k must be >= 1");
        assert_invalid(cudann_sample_ex(vp(&x), tokens.as_mut_ptr(), [1u64, 2].as_ptr(), 2, 32, -1.0, CUDANN_F16, NULL), "cudann_sample_ex", "temperature must be >= 0");
        assert_invalid(cudann_argmax_ex(vp(&x), tokens.as_mut_ptr(), 2, 32, 3, NULL), "cudann_argmax_ex", "dtype must be");
    }
    assert!(y.iter().all(|&v| v == 0x5555), "outputs after refused calls");
    assert_eq!(tokens, [-7, -7]);
}

#[test]
fn embedding_and_kv_cache_write_copy_half_bits() {
    let mut rng = Rng::new(65);
    let (vocab, dim) = (50usize, 33usize);
    // Any bits, NaNs and infinities included: both ops copy, never convert.
    let table: Vec<u16> = rng.vec(vocab * dim, 1.0).iter().map(|v| v.to_bits() as u16).collect();
    let ids = [3i32, -1, 49, 0, 3];
    for t in HALVES {
        let mut got = vec![0x5555u16; ids.len() * dim];
        unsafe { assert_ok(cudann_embedding(ids.as_ptr(), vp(&table), vm(&mut got), ids.len() as i32, vocab as i32, dim as i32, t, NULL)) };
        for (row, &id) in got.chunks(dim).zip(&ids) {
            let want = if id < 0 { vec![0u16; dim] } else { table[id as usize * dim..(id as usize + 1) * dim].to_vec() };
            assert_eq!(row, &want[..], "embedding row of id {id}, type {t}");
        }
        let (batch, new_len, max_seq, row, pos) = (2usize, 3usize, 8usize, 2 * 5usize, 4usize);
        let k_new = &table[..batch * new_len * row];
        let v_new = &table[100..100 + batch * new_len * row];
        let (mut kc, mut vc) = (vec![0x5555u16; batch * max_seq * row], vec![0x5555u16; batch * max_seq * row]);
        unsafe { assert_ok(cudann_kv_cache_write(vp(k_new), vp(v_new), vm(&mut kc), vm(&mut vc), batch as i32, new_len as i32, max_seq as i32, 2, 5, pos as i32, t, NULL)) };
        for (cache, new) in [(&kc, k_new), (&vc, v_new)] {
            for b in 0..batch {
                for p in 0..max_seq {
                    let got = &cache[(b * max_seq + p) * row..(b * max_seq + p + 1) * row];
                    if (pos..pos + new_len).contains(&p) {
                        let t0 = (b * new_len + p - pos) * row;
                        assert_eq!(got, &new[t0..t0 + row], "cache row {b}, {p}");
                    } else {
                        assert!(got.iter().all(|&v| v == 0x5555), "cache row {b}, {p} outside the write was touched");
                    }
                }
            }
        }
    }
}

#[test]
fn swiglu_and_rope_ex_are_the_float32_op_rounded_once() {
    let mut rng = Rng::new(66);
    for t in HALVES {
        let n = 70_001;
        let (hg, g) = to_half(&rng.vec(n, 4.0), t);
        let (hu, u) = to_half(&rng.vec(n, 2.0), t);
        let (mut want, mut got) = (vec![0f32; n], vec![0u16; n]);
        unsafe {
            assert_ok(cudann_swiglu(vp(&g), vp(&u), vm(&mut want), n as i64, CUDANN_F32, NULL));
            assert_ok(cudann_swiglu(vp(&hg), vp(&hu), vm(&mut got), n as i64, t, NULL));
        }
        assert_eq!(got, rounded(&want, t), "swiglu type {t}");
        // In place, with gates past SiLU's fast range (|x| > 80) among them.
        let mut far = rng.vec(n, 4.0);
        for (i, v) in [(5, -95.0), (700, 120.0), (9_000, -300.0), (40_000, f32::NEG_INFINITY)] {
            far[i] = v;
        }
        let (mut inplace, f) = to_half(&far, t);
        unsafe {
            assert_ok(cudann_swiglu(vp(&f), vp(&u), vm(&mut want), n as i64, CUDANN_F32, NULL));
            assert_ok(cudann_swiglu(vp(&inplace), vp(&hu), vm(&mut inplace), n as i64, t, NULL));
        }
        assert_eq!(inplace, rounded(&want, t), "swiglu in place type {t}");

        // Tokens of 6 and 2 heads of 64 (blocks of whole tokens cross batch
        // entries, so positions must follow the token index), from offset 7.
        let (max_seq, hd) = (400usize, 64usize);
        let mut freqs = vec![0f32; max_seq * hd / 2];
        unsafe { assert_ok(cuda_rope_freqs(freqs.as_mut_ptr(), max_seq as i32, hd as i32, 10_000.0, 1.0, NULL)) };
        for (batch, seq, hq, hk) in [(2usize, 5usize, 6usize, 2usize), (3, 131, 1, 1), (1, 300, 4, 0)] {
            let (nq, nk) = (batch * seq * hq * hd, batch * seq * hk * hd);
            let (hq_in, q) = to_half(&rng.vec(nq, 2.0), t);
            let (hk_in, k) = to_half(&rng.vec(nk, 2.0), t);
            let (mut wq, mut wk) = (vec![0f32; nq], vec![0f32; nk]);
            let (mut gq, mut gk) = (vec![0u16; nq], vec![0u16; nk]);
            let args = (batch as i32, seq as i32, hq as i32, hk as i32, hd as i32);
            let kp = |x: &[u16]| if hk == 0 { std::ptr::null() } else { vp(x) };
            unsafe {
                assert_ok(cuda_rope_qk(q.as_ptr(), k.as_ptr(), freqs.as_ptr(), wq.as_mut_ptr(), wk.as_mut_ptr(), args.0, args.1, args.2, args.3, args.4, 7, NULL));
                let kout = if hk == 0 { std::ptr::null_mut() } else { vm(&mut gk) };
                assert_ok(cudann_rope_qk_ex(vp(&hq_in), kp(&hk_in), freqs.as_ptr(), vm(&mut gq), kout, args.0, args.1, args.2, args.3, args.4, 7, t, NULL));
            }
            assert_eq!(gq, rounded(&wq, t), "rope q type {t} {batch}x{seq}x{hq}");
            assert_eq!(gk, rounded(&wk, t), "rope k type {t} {batch}x{seq}x{hk}");
            // In place, each side into its own buffer.
            let (mut iq, mut ik) = (hq_in.clone(), hk_in.clone());
            unsafe {
                let (qp, kp) = (vm(&mut iq), if hk == 0 { std::ptr::null_mut() } else { vm(&mut ik) });
                assert_ok(cudann_rope_qk_ex(qp, kp, freqs.as_ptr(), qp, kp, args.0, args.1, args.2, args.3, args.4, 7, t, NULL));
            }
            assert_eq!((iq, ik), (gq, gk), "rope in place type {t}");
        }
    }
}

#[test]
fn attention_ex_is_the_float32_op_rounded_once() {
    let mut rng = Rng::new(67);
    let f = CUDANN_F32;
    // (batch, q_len, kv_len, capacity, heads, kv heads, pos0, causal, mask):
    // decoding against a longer cache, and training with blocks past 64 rows.
    for (batch, q_len, kv_len, cap, h, g, pos0, causal, masked) in [(2usize, 1usize, 37usize, 64usize, 4usize, 2usize, 36usize, 1, false), (1, 70, 70, 70, 2, 1, 0, 1, true), (2, 5, 9, 12, 3, 3, 4, 0, false)] {
        let hd = 16usize;
        let (nq, nkv) = (batch * q_len * h * hd, batch * cap * g * hd);
        let mask: Vec<f32> = (0..q_len * kv_len).map(|i| if i % 7 == 3 { f32::NEG_INFINITY } else { 0.25 * (i % 3) as f32 }).collect();
        let mp = if masked { mask.as_ptr() } else { std::ptr::null() };
        for t in HALVES {
            let (hq, q) = to_half(&rng.vec(nq, 1.5), t);
            let (hk, k) = to_half(&rng.vec(nkv, 1.5), t);
            let (hv, v) = to_half(&rng.vec(nkv, 1.5), t);
            let (mut want, mut want_lse) = (vec![0f32; nq], vec![0f32; batch * q_len * h]);
            let (mut got, mut got_lse) = (vec![0u16; nq], vec![0f32; batch * q_len * h]);
            let dims = (batch as i32, q_len as i32, kv_len as i32, cap as i32, h as i32, g as i32, hd as i32, pos0 as i32);
            unsafe {
                assert_ok(cudann_attention_forward(vp(&q), vp(&k), vp(&v), mp, vm(&mut want), want_lse.as_mut_ptr(), dims.0, dims.1, dims.2, dims.3, dims.4, dims.5, dims.6, dims.7, causal, 0.25, f, NULL));
                assert_ok(cudann_attention_forward(vp(&hq), vp(&hk), vp(&hv), mp, vm(&mut got), got_lse.as_mut_ptr(), dims.0, dims.1, dims.2, dims.3, dims.4, dims.5, dims.6, dims.7, causal, 0.25, t, NULL));
            }
            assert_eq!(got, rounded(&want, t), "attention output type {t} ({batch}, {q_len}, {kv_len}, {cap})");
            assert_eq!(got_lse, want_lse, "attention lse type {t}");
        }
    }
}

/// Every bit pattern (NaNs of both signs, quiet and signalling, infinities,
/// subnormals) through the elementwise ops, softmax and RMSNorm: the same bits as the
/// float32 op on the widened inputs, NaN signs and payloads included (but
/// for bf16 RMSNorm's NaNs).
#[test]
fn any_bits_give_the_float32_ops_bits() {
    let mut rng = Rng::new(68);
    for t in HALVES {
        let n = 70_001;
        let bits = |rng: &mut Rng| -> Vec<u16> { (0..n).map(|_| rng.next_u64() as u16).collect() };
        let (mut ha, mut hb) = (bits(&mut rng), bits(&mut rng));
        // NaNs in both inputs at one element (NaN in both half types): which
        // one a two-NaN operation gives is the compiled code's choice.
        for (i, a, b) in [(5, 0x7fc1, 0xffa2), (40_000, 0xff81, 0x7fff), (n - 1, 0xfffe, 0xffc0)] {
            (ha[i], hb[i]) = (a, b);
        }
        let wide = |h: &[u16]| {
            let mut w = vec![0f32; h.len()];
            assert_ok(unsafe { cudann_convert(vp(h), t, vm(&mut w), CUDANN_F32, h.len() as i64, NULL) });
            w
        };
        let (a, b) = (wide(&ha), wide(&hb));
        let (mut want, mut got) = (vec![0f32; n], vec![0u16; n]);
        let ni = n as i64;
        unsafe {
            assert_ok(cudann_swiglu(vp(&a), vp(&b), vm(&mut want), ni, CUDANN_F32, NULL));
            assert_ok(cudann_swiglu(vp(&ha), vp(&hb), vm(&mut got), ni, t, NULL));
            same_bits(&got, &rounded(&want, t), "swiglu", t);
            assert_ok(cuda_add(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
            assert_ok(cudann_add_ex(vp(&ha), vp(&hb), vm(&mut got), ni, t, NULL));
            same_bits(&got, &rounded(&want, t), "add", t);
            assert_ok(cuda_mul(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
            assert_ok(cudann_mul_ex(vp(&ha), vp(&hb), vm(&mut got), ni, t, NULL));
            same_bits(&got, &rounded(&want, t), "mul", t);
            assert_ok(cuda_scale(a.as_ptr(), want.as_mut_ptr(), -1.25, ni, NULL));
            assert_ok(cudann_scale_ex(vp(&ha), vm(&mut got), -1.25, ni, t, NULL));
            same_bits(&got, &rounded(&want, t), "scale", t);
            // In place, into either input.
            let mut inplace = ha.clone();
            assert_ok(cudann_add_ex(vp(&inplace), vp(&hb), vm(&mut inplace), ni, t, NULL));
            assert_ok(cuda_add(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
            same_bits(&inplace, &rounded(&want, t), "add into a", t);
            let mut inplace = hb.clone();
            assert_ok(cudann_mul_ex(vp(&ha), vp(&inplace), vm(&mut inplace), ni, t, NULL));
            assert_ok(cuda_mul(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ni, NULL));
            same_bits(&inplace, &rounded(&want, t), "mul into b", t);
            // Short rows, so most hold no NaN (a NaN makes its whole row NaN).
            let (rows, cols) = (n as i32 / 7, 7);
            assert_ok(cuda_softmax(a.as_ptr(), want.as_mut_ptr(), rows, cols, NULL));
            assert_ok(cudann_softmax_ex(vp(&ha), vm(&mut got), rows, cols, t, NULL));
            same_bits(&got[..n - 1], &rounded(&want, t)[..n - 1], "softmax", t);
            assert_ok(cuda_rmsnorm(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), rows, cols, 1e-5, NULL));
            assert_ok(cudann_rmsnorm_ex(vp(&ha), vp(&hb), vm(&mut got), rows, cols, 1e-5, t, NULL));
            // RMSNorm's bf16 rows are read in their own fused loops: a NaN result is
            // NaN, its sign and payload unspecified (docs/ABI.md).
            let nan = |b: u16, t: i32| if t == CUDANN_BF16 { b & 0x7fff > 0x7f80 } else { b & 0x7fff > 0x7c00 };
            let want = rounded(&want, t);
            let same = |g: u16, w: u16| g == w || (nan(g, t) && nan(w, t));
            assert!(got.iter().zip(&want).all(|(&g, &w)| same(g, w)), "rmsnorm type {t}: results differ beyond NaN bits");
            assert!(got.iter().any(|&g| !nan(g, t)), "rmsnorm type {t}: some rows hold no NaN");
        }
    }
}

/// The first element where two bit vectors differ, named (the vectors are too
/// long to print whole).
#[track_caller]
fn same_bits(got: &[u16], want: &[u16], what: &str, t: i32) {
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        let count = got.iter().zip(want).filter(|(g, w)| g != w).count();
        panic!("{what} type {t}: {count} elements differ; first at {i}: {:#06x}, want {:#06x}", got[i], want[i]);
    }
}

#[test]
fn half_ops_whose_float32_op_is_parallel_itself_run_on_many_threads() {
    // RoPE runs each widened block through the float32 op, which splits the
    // block across threads again: a thread waiting on that may take another
    // block meanwhile (it used to find its scratch still borrowed and panic).
    let mut rng = Rng::new(68);
    let (batch, seq, hq, hk, hd) = (2usize, 300usize, 8usize, 2usize, 64usize);
    let mut freqs = vec![0f32; (seq + 40) * hd / 2];
    unsafe { assert_ok(cuda_rope_freqs(freqs.as_mut_ptr(), (seq + 40) as i32, hd as i32, 10_000.0, 1.0, NULL)) };
    for t in HALVES {
        let (nq, nk) = (batch * seq * hq * hd, batch * seq * hk * hd);
        let (hq_in, q) = to_half(&rng.vec(nq, 2.0), t);
        let (hk_in, k) = to_half(&rng.vec(nk, 2.0), t);
        let (mut wq, mut wk) = (vec![0f32; nq], vec![0f32; nk]);
        let args = (batch as i32, seq as i32, hq as i32, hk as i32, hd as i32);
        unsafe { assert_ok(cuda_rope_qk(q.as_ptr(), k.as_ptr(), freqs.as_ptr(), wq.as_mut_ptr(), wk.as_mut_ptr(), args.0, args.1, args.2, args.3, args.4, 40, NULL)) };
        for _ in 0..40 {
            let (mut gq, mut gk) = (vec![0u16; nq], vec![0u16; nk]);
            let code = with_threads(16, || unsafe { cudann_rope_qk_ex(vp(&hq_in), vp(&hk_in), freqs.as_ptr(), vm(&mut gq), vm(&mut gk), args.0, args.1, args.2, args.3, args.4, 40, t, NULL) });
            assert_ok(code);
            assert_eq!(gq, rounded(&wq, t), "rope q type {t}");
            assert_eq!(gk, rounded(&wk, t), "rope k type {t}");
        }
    }
}
