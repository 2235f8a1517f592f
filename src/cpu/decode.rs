//! Argmax and seeded sampling (plain, top-k, top-p) by the Gumbel-max trick.

use rayon::prelude::*;

use super::alloc;
use super::math::exp;
use super::reduce::max;
use super::rng::{LANES, TILE, group, member_noise, members, noise, noise_bound, row_key};
use super::softmax::top_k_indices;

/// First maximal index; a NaN counts as maximal (numpy's argmax).
pub fn argmax_row(x: &[f32]) -> usize {
    if let Some(j) = x.iter().position(|v| v.is_nan()) {
        return j;
    }
    let m = max(x);
    x.iter().position(|&v| v == m).unwrap_or(0)
}

/// How a row is sampled.
#[derive(Clone, Copy)]
pub enum Sampler {
    All,
    TopK(usize),
    TopP(f32),
}

/// argmax_j (x_j / T + noise_j) over the tokens `keep` admits; ties go to the
/// lower index. A group is drawn only when its largest kept x / T plus its
/// noise bound reaches the best score so far (the bound is monotone in both
/// terms, and rounding is monotone, so no skipped token could have won).
fn gumbel_argmax(x: &[f32], key: u64, temperature: f32, keep: impl Fn(usize) -> bool) -> usize {
    let mut best = (f32::NEG_INFINITY, usize::MAX);
    for (tile, chunk) in x.chunks(TILE).enumerate() {
        let start = tile * TILE;
        let top = lane_maxima(chunk, start, &keep);
        for (lane, &top) in top.iter().enumerate() {
            let n = members(x.len(), start, lane);
            if n == 0 || top.is_nan() {
                continue; // no kept token with a score
            }
            let g = group(key, tile, lane, n);
            if top / temperature + noise_bound(&g) < best.0 {
                continue;
            }
            for i in 0..n {
                let j = start + i * LANES + lane;
                if !keep(j) {
                    continue;
                }
                let s = x[j] / temperature + member_noise(key, &g, i, j);
                // A score of -inf is never drawn (the row's token is then 0).
                if s > best.0 || (s == best.0 && j < best.1 && s > f32::NEG_INFINITY) {
                    best = (s, j);
                }
            }
        }
    }
    if best.1 == usize::MAX { 0 } else { best.1 }
}

/// The largest kept logit of each group of a tile (NaN where none is kept);
/// NaN logits are ignored (their scores never win).
fn lane_maxima(chunk: &[f32], start: usize, keep: &impl Fn(usize) -> bool) -> [f32; LANES] {
    let mut top = [f32::NAN; LANES];
    for (r, row) in chunk.chunks(LANES).enumerate() {
        for (lane, &v) in row.iter().enumerate() {
            if keep(start + r * LANES + lane) {
                top[lane] = top[lane].max(v);
            }
        }
    }
    top
}

/// The nucleus: probabilities (unnormalised) p, the smallest set of most probable
/// tokens (ties: lower index first) whose mass reaches top_p of the total.
/// Returns the last member (p*, j*): j is in iff p_j > p* or (p_j == p* and j <= j*).
fn nucleus_floor(p: &[f32], top_p: f32) -> Option<(f32, usize)> {
    // Positive floats order like their bits: bin by exponent and 3 mantissa bits.
    const SHIFT: u32 = 20;
    let bins = (f32::MAX.to_bits() >> SHIFT) as usize + 1;
    let mut mass = vec![0.0f64; bins];
    for &v in p {
        // NaN probabilities (from NaN logits) share the top bin rather than index past it.
        mass[((v.to_bits() >> SHIFT) as usize).min(bins - 1)] += v as f64;
    }
    let target = top_p as f64 * mass.iter().sum::<f64>();
    let mut cum = 0.0;
    for b in (0..bins).rev() {
        if cum + mass[b] < target {
            cum += mass[b];
            continue;
        }
        let in_bin = |v: f32| ((v.to_bits() >> SHIFT) as usize).min(bins - 1) == b;
        let mut members = alloc::with_capacity(p.iter().filter(|&&v| in_bin(v)).count());
        members.extend(p.iter().enumerate().filter(|&(_, &v)| in_bin(v)).map(|(j, &v)| (v, j)));
        members.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(v, j) in &members {
            cum += v as f64;
            if cum >= target {
                return Some((v, j));
            }
        }
        return members.last().copied();
    }
    None // rounding left the target unreached: every token is in
}

/// One token from row `x` (temperature > 0).
pub fn sample_row(x: &[f32], key: u64, temperature: f32, sampler: Sampler) -> usize {
    match sampler {
        Sampler::TopK(k) if k < x.len() => {
            let kept = top_k_indices(x, k);
            let score = |j: usize| x[j] / temperature + noise(key, j, x.len());
            kept.iter().copied().fold((f32::NEG_INFINITY, kept[0]), |best, j| {
                let s = score(j);
                if s > best.0 || (s == best.0 && j < best.1) { (s, j) } else { best }
            }).1
        }
        Sampler::TopP(top_p) if top_p < 1.0 => {
            let m = max(x);
            if m == f32::NEG_INFINITY {
                return 0; // every token impossible: token 0, as the plain sampler and the GPU give
            }
            let p = alloc::collect(x.iter().map(|&v| exp((v - m) / temperature)));
            match nucleus_floor(&p, top_p) {
                Some((pf, jf)) => gumbel_argmax(x, key, temperature, |j| p[j] > pf || (p[j] == pf && j <= jf)),
                None => gumbel_argmax(x, key, temperature, |_| true),
            }
        }
        _ => gumbel_argmax(x, key, temperature, |_| true),
    }
}

/// One token per row: greedy when temperature == 0, else a seeded draw.
pub fn sample(logits: &[f32], seeds: &[u64], out: &mut [i32], vocab: usize, temperature: f32, sampler: Sampler) {
    out.par_iter_mut().zip(logits.par_chunks(vocab)).enumerate().for_each(|(row, (o, x))| {
        let token = if temperature == 0.0 { argmax_row(x) } else { sample_row(x, row_key(seeds[row], row), temperature, sampler) };
        *o = token as i32;
    });
}

pub fn argmax(logits: &[f32], out: &mut [i32], vocab: usize) {
    out.par_iter_mut().zip(logits.par_chunks(vocab)).for_each(|(o, x)| *o = argmax_row(x) as i32);
}
