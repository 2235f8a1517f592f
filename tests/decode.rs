//! argmax and seeded sampling: exact argmax semantics, determinism, and the
//! sampled distributions against the exact probabilities.
mod common;
use common::*;
use cudann::*;

fn argmax_ref(x: &[f32]) -> i32 {
    if let Some(j) = x.iter().position(|v| v.is_nan()) {
        return j as i32;
    }
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    x.iter().position(|&v| v == m).unwrap() as i32
}

#[test]
fn argmax_is_first_max_and_nan_wins() {
    let mut rng = Rng::new(80);
    for vocab in [1, 31, 33, 1000, 131_072] {
        let batch = 5;
        let mut x = rng.vec(batch * vocab, 1.0);
        if vocab > 2 {
            x[vocab + 1] = 100.0; // row 1: a tie, the first wins
            x[vocab + vocab - 1] = 100.0;
            x[2 * vocab + vocab / 2] = f32::NAN; // row 2: NaN counts as maximal
            x[3 * vocab..4 * vocab].fill(f32::NEG_INFINITY); // row 3: all -inf
        }
        let mut out = vec![-1i32; batch];
        assert_ok(unsafe { cuda_argmax(x.as_ptr(), out.as_mut_ptr(), batch as i32, vocab as i32, NULL) });
        let want: Vec<i32> = x.chunks(vocab).map(argmax_ref).collect();
        assert_eq!(out, want, "vocab {vocab}");
    }
}

type Sampler = unsafe extern "C" fn(*const f32, *mut i32, *const u64, i32, i32, f32, *mut std::ffi::c_void) -> i32;

unsafe extern "C" fn topk50(logits: *const f32, out: *mut i32, seeds: *const u64, batch: i32, vocab: i32, t: f32, s: *mut std::ffi::c_void) -> i32 {
    unsafe { cuda_topk_sample(logits, out, seeds, batch, vocab, 50, t, s) }
}
unsafe extern "C" fn topp09(logits: *const f32, out: *mut i32, seeds: *const u64, batch: i32, vocab: i32, t: f32, s: *mut std::ffi::c_void) -> i32 {
    unsafe { cuda_topp_sample(logits, out, seeds, batch, vocab, 0.9, t, s) }
}
const SAMPLERS: [(&str, Sampler); 3] = [("sample", cuda_sample), ("topk", topk50), ("topp", topp09)];

fn draw(sampler: Sampler, x: &[f32], seeds: &[u64], vocab: usize, temperature: f32) -> Vec<i32> {
    let mut out = vec![-1i32; seeds.len()];
    assert_ok(unsafe { sampler(x.as_ptr(), out.as_mut_ptr(), seeds.as_ptr(), seeds.len() as i32, vocab as i32, temperature, NULL) });
    out
}

#[test]
fn temperature_zero_is_argmax_and_seeds_are_deterministic() {
    let mut rng = Rng::new(81);
    for vocab in [1, 33, 1000, 131_072] {
        let batch = 4;
        let x = rng.vec(batch * vocab, 2.0);
        let seeds: Vec<u64> = (0..batch as u64).map(|i| i * 7919 + 1).collect();
        let greedy: Vec<i32> = x.chunks(vocab).map(argmax_ref).collect();
        for (name, sampler) in SAMPLERS {
            assert_eq!(draw(sampler, &x, &seeds, vocab, 0.0), greedy, "{name} greedy, vocab {vocab}");
            let first = draw(sampler, &x, &seeds, vocab, 1.0);
            assert_eq!(draw(sampler, &x, &seeds, vocab, 1.0), first, "{name} same seeds, vocab {vocab}");
            assert!(first.iter().all(|&t| (0..vocab as i32).contains(&t)));
        }
    }
}

/// Exact probabilities of each sampler for one row, in float64.
fn exact_probs(name: &str, x: &[f32], temperature: f64) -> Vec<f64> {
    let p = softmax_ref(&x.iter().map(|&v| v as f64 / temperature).collect::<Vec<_>>());
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).unwrap().then(a.cmp(&b)));
    let kept = match name {
        "topk" => order[..50.min(x.len())].to_vec(),
        "topp" => {
            let mut cum = 0.0;
            order.into_iter().take_while(|&j| { let before = cum; cum += p[j]; before < 0.9 }).collect()
        }
        _ => order,
    };
    let total: f64 = kept.iter().map(|&j| p[j]).sum();
    let mut q = vec![0.0; x.len()];
    for j in kept {
        q[j] = p[j] / total;
    }
    q
}

#[test]
fn sampled_frequencies_match_exact_probabilities() {
    // One row repeated with a different seed per row: token counts follow the
    // sampler's exact distribution (chi-square, p > 0.001 for fixed seeds).
    let mut rng = Rng::new(82);
    // 70: one tile, groups of 3 and of 2 tokens; 1100: a second, partial tile.
    for (vocab, scale) in [(70, 1.5), (1100, 0.6)] {
        let row = rng.vec(vocab, scale);
        let draws = 40_000;
        let x: Vec<f32> = row.iter().cycle().take(vocab * draws).cloned().collect();
        let seeds: Vec<u64> = (0..draws as u64).map(|i| i.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 99).collect();
        for (name, sampler) in SAMPLERS {
            for temperature in [0.7, 1.3] {
                let out = draw(sampler, &x, &seeds, vocab, temperature as f32);
                let q = exact_probs(name, &row, temperature);
                let mut counts = vec![0usize; vocab];
                for &t in &out {
                    assert!(q[t as usize] > 0.0, "{name}: token {t} has probability 0 (outside the kept set)");
                    counts[t as usize] += 1;
                }
                // Pool cells with expected count < 5 so the chi-square approximation holds.
                let (mut chi2, mut cells, mut pooled_obs, mut pooled_exp) = (0.0, 0usize, 0.0, 0.0);
                for (j, &c) in counts.iter().enumerate() {
                    let e = q[j] * draws as f64;
                    if e >= 5.0 {
                        chi2 += (c as f64 - e).powi(2) / e;
                        cells += 1;
                    } else {
                        pooled_obs += c as f64;
                        pooled_exp += e;
                    }
                }
                if pooled_exp >= 5.0 {
                    chi2 += (pooled_obs - pooled_exp).powi(2) / pooled_exp;
                    cells += 1;
                }
                let dof = (cells - 1) as f64;
                // Wilson-Hilferty: the chi-square quantile at p = 0.001.
                let z = 3.09;
                let limit = dof * (1.0 - 2.0 / (9.0 * dof) + z * (2.0 / (9.0 * dof)).sqrt()).powi(3);
                assert!(chi2 < limit, "{name} vocab {vocab} T={temperature}: chi2 {chi2:.1} over {dof} dof exceeds {limit:.1}");
            }
        }
    }
}

#[test]
fn top_k_and_top_p_stay_inside_their_sets_on_large_vocabularies() {
    let mut rng = Rng::new(83);
    let (batch, vocab) = (6, 50_000);
    let x = rng.vec(batch * vocab, 3.0);
    for round in 0..4u64 {
        let seeds: Vec<u64> = (0..batch as u64).map(|i| i + 1000 * round).collect();
        for (name, sampler) in [("topk", topk50 as Sampler), ("topp", topp09)] {
            let out = draw(sampler, &x, &seeds, vocab, 1.0);
            for (r, &t) in out.iter().enumerate() {
                let q = exact_probs(name, &x[r * vocab..(r + 1) * vocab], 1.0);
                assert!(q[t as usize] > 0.0, "{name} row {r}: token {t} outside the kept set");
            }
        }
    }
}

#[test]
fn samplers_never_fail_on_all_minus_infinity_or_nan_rows() {
    let vocab = 40;
    let mut x = vec![f32::NEG_INFINITY; 2 * vocab];
    x[vocab + 3] = f32::NAN;
    x[vocab + 7] = 1.0;
    let seeds = [5u64, 6];
    for (name, sampler) in SAMPLERS {
        let mut out = [-1i32; 2];
        assert_ok(unsafe { sampler(x.as_ptr(), out.as_mut_ptr(), seeds.as_ptr(), 2, vocab as i32, 1.0, NULL) });
        assert_eq!(out[0], 0, "{name}: an all -inf row gives token 0");
        assert!((0..vocab as i32).contains(&out[1]), "{name}: a row with a NaN still gives a token");
    }
}

#[test]
fn sampling_bad_arguments() {
    let x = vec![0.0f32; 16];
    let seeds = [1u64, 2];
    let mut out = vec![-9i32; 2];
    unsafe {
        assert_invalid(cuda_sample(x.as_ptr(), out.as_mut_ptr(), seeds.as_ptr(), 2, 8, -1.0, NULL), "cuda_sample", "temperature must be >= 0 (got -1)");
        assert_invalid(cuda_sample(x.as_ptr(), out.as_mut_ptr(), seeds.as_ptr(), 2, 8, f32::NAN, NULL), "cuda_sample", "temperature must be >= 0 (got NaN)");
        assert_invalid(cuda_sample(x.as_ptr(), out.as_mut_ptr(), std::ptr::null(), 2, 8, 1.0, NULL), "cuda_sample", "seeds is NULL");
        assert_invalid(cuda_topk_sample(x.as_ptr(), out.as_mut_ptr(), seeds.as_ptr(), 2, 8, 0, 1.0, NULL), "cuda_topk_sample", "k must be >= 1 (got 0)");
        assert_invalid(cuda_topp_sample(x.as_ptr(), out.as_mut_ptr(), seeds.as_ptr(), 2, 8, 0.0, 1.0, NULL), "cuda_topp_sample", "top_p must be in (0, 1] (got 0)");
        assert_invalid(cuda_topp_sample(x.as_ptr(), out.as_mut_ptr(), seeds.as_ptr(), 2, 8, 1.5, 1.0, NULL), "cuda_topp_sample", "(got 1.5)");
        assert_invalid(cuda_argmax(x.as_ptr(), out.as_mut_ptr(), 2, 0, NULL), "cuda_argmax", "vocab_size must be >= 1");
        assert_invalid(cuda_argmax(x.as_ptr(), out.as_mut_ptr(), -2, 8, NULL), "cuda_argmax", "batch must be >= 0");
        assert_invalid(cuda_argmax(x.as_ptr(), x.as_ptr() as *mut i32, 2, 8, NULL), "cuda_argmax", "output partially overlaps logits");
    }
    assert_eq!(out, [-9, -9]);
}
