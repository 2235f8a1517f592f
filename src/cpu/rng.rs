//! Counter-based Gumbel noise for sampling: every draw is a pure function of
//! (seed, row, token index), so results do not depend on threads or on the order
//! of any sum, and the GPU kernels reproduce them with the same integer hash.
//!
//! The noise is drawn group by group so that a sampler can skip a whole group
//! after one hash: tokens fall into groups of up to 32, group (t, l) holding the
//! tokens 1024 t + 32 i + l of the row (the tokens one GPU lane loads from a
//! tile of 1024). For each group the hash gives its maximum noise M, a Gumbel
//! with location ln n (the maximum of n standard Gumbels), and which member
//! takes it (uniform); every other member draws a standard Gumbel conditioned
//! on lying below M: -ln(e^-M + E), E exponential. Jointly these are n
//! independent standard Gumbels, so argmax(logit / T + noise) over any set of
//! tokens chosen without looking at the noise is a draw from the softmax over
//! that set (the Gumbel-max trick), and a group whose largest logit / T plus M
//! cannot reach the best score so far need not be drawn at all.

use super::math::{exp, ln};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// Separates the groups' hash stream from the tokens'.
const GROUP_SALT: u64 = 0xD1B5_4A32_D192_ED03;
/// Tokens per tile; a tile holds LANES groups.
pub(crate) const TILE: usize = 1024;
pub(crate) const LANES: usize = 32;

/// SplitMix64's finaliser: a bijective 64-bit mix.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream key of one row: its seed, mixed with the row index so that rows
/// given the same seed still draw independently.
pub fn row_key(seed: u64, row: usize) -> u64 {
    mix64(seed ^ mix64((row as u64).wrapping_add(GOLDEN)))
}

/// Uniform in (0, 1) from a hash's top 23 bits: (b + 0.5) 2^-23, exact in f32,
/// so never 0 or 1.
#[inline(always)]
fn uniform(hash: u64) -> f32 {
    ((hash >> 41) as u32 as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// The noise of one group.
#[derive(Clone, Copy, Debug)]
pub struct Group {
    /// M: the largest noise of the group.
    pub max: f32,
    /// e^-M, shared by the other members' formula.
    pub exp_neg_max: f32,
    /// The member (0-based, in token order) whose noise is M.
    pub argmax: usize,
}

/// Members of group `lane` of the tile that starts at token `tile_start`.
#[inline(always)]
pub fn members(vocab: usize, tile_start: usize, lane: usize) -> usize {
    let len = (vocab - tile_start).min(TILE);
    if lane < len { (len - lane).div_ceil(LANES) } else { 0 }
}

/// Group `lane` of tile `tile` (of `members` >= 1 tokens) in the row with `key`.
#[inline(always)]
pub fn group(key: u64, tile: usize, lane: usize, members: usize) -> Group {
    let id = (tile * LANES + lane) as u64;
    let h = mix64((key ^ GROUP_SALT).wrapping_add(id.wrapping_mul(GOLDEN)));
    let max = ln(members as f32) - ln(-ln(uniform(h)));
    // The low 24 bits pick the member: floor(v n / 2^24).
    let argmax = (((h & 0xFF_FFFF) * members as u64) >> 24) as usize;
    Group { max, exp_neg_max: exp(-max), argmax }
}

/// The noise of member `member` of group `g`, token `token` of the row.
#[inline(always)]
pub fn member_noise(key: u64, g: &Group, member: usize, token: usize) -> f32 {
    if member == g.argmax {
        return g.max;
    }
    let e = -ln(uniform(mix64(key.wrapping_add((token as u64).wrapping_mul(GOLDEN)))));
    -ln(g.exp_neg_max + e)
}

/// The noise of token `token` of a row of `vocab` tokens (one token alone;
/// streaming samplers go group by group).
pub fn noise(key: u64, token: usize, vocab: usize) -> f32 {
    let (tile, lane) = (token / TILE, token % LANES);
    let g = group(key, tile, lane, members(vocab, tile * TILE, lane));
    member_noise(key, &g, (token % TILE) / LANES, token)
}

/// An upper bound on every member's noise: M plus the rounding of
/// -ln(e^-M + E), which can exceed M by a few ulps when E is tiny.
#[inline(always)]
pub fn noise_bound(g: &Group) -> f32 {
    g.max + (g.max.abs() + 1.0) * (1.0 / 524_288.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_open_at_both_ends() {
        assert_eq!(uniform(0), 0.5 / 8_388_608.0);
        assert!(uniform(u64::MAX) < 1.0);
        assert_eq!(uniform(u64::MAX), 1.0 - 0.5 / 8_388_608.0);
    }

    #[test]
    fn groups_cover_every_token_once() {
        for vocab in [1, 31, 32, 33, 1000, 1024, 1025, 2077] {
            let mut seen = vec![0; vocab];
            for tile in 0..vocab.div_ceil(TILE) {
                for lane in 0..LANES {
                    for i in 0..members(vocab, tile * TILE, lane) {
                        seen[tile * TILE + i * LANES + lane] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "vocab {vocab}");
        }
    }

    #[test]
    fn noise_is_standard_gumbel_and_below_its_group_bound() {
        // Kolmogorov-Smirnov against exp(-exp(-g)) over tokens of many groups,
        // full and partial (vocab 1000: the last tile has groups of 31 and 32).
        let vocab = 1000;
        let mut all = Vec::new();
        for row in 0..40 {
            let key = row_key(5, row);
            for j in 0..vocab {
                let g = noise(key, j, vocab);
                let (tile, lane) = (j / TILE, j % LANES);
                let grp = group(key, tile, lane, members(vocab, tile * TILE, lane));
                assert!(g <= noise_bound(&grp));
                all.push(g as f64);
            }
        }
        all.sort_by(f64::total_cmp);
        let n = all.len() as f64;
        let d = all.iter().enumerate().map(|(i, &g)| {
            let cdf = (-(-g).exp()).exp();
            (cdf - i as f64 / n).abs().max(((i + 1) as f64 / n - cdf).abs())
        });
        let d = d.fold(0.0, f64::max);
        assert!(d < 1.95 / n.sqrt(), "KS distance {d} (p < 0.001 at {n} draws)");
    }

    #[test]
    fn rows_with_one_seed_differ() {
        assert_ne!(row_key(7, 0), row_key(7, 1));
        assert_eq!(row_key(7, 1), row_key(7, 1));
    }
}
