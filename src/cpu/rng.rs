//! Counter-based randomness for sampling: every draw is a pure function of
//! (seed, row, token index), so results do not depend on threads or on the order
//! of any sum, and the GPU kernels reproduce them with the same integer hash.

use super::math::ln;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

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

/// Uniform in (0, 1), 24 bits, never 0 or 1.
#[inline(always)]
pub fn uniform(key: u64, index: u64) -> f32 {
    let bits = (mix64(key.wrapping_add(index.wrapping_mul(GOLDEN))) >> 40) as u32;
    (bits as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// Standard Gumbel noise -ln(-ln u): argmax(logit/T + noise) is a draw from
/// softmax(logit/T) (the Gumbel-max trick).
#[inline(always)]
pub fn gumbel(key: u64, index: u64) -> f32 {
    -ln(-ln(uniform(key, index)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_uniform_and_open() {
        let key = row_key(42, 3);
        let n = 200_000;
        let mut bins = [0usize; 10];
        for i in 0..n {
            let u = uniform(key, i);
            assert!(u > 0.0 && u < 1.0);
            bins[(u * 10.0) as usize] += 1;
        }
        let expected = n as f64 / 10.0;
        let chi2: f64 = bins.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
        assert!(chi2 < 27.9, "chi2 {chi2} (p < 0.001 at 9 dof)"); 
    }

    #[test]
    fn rows_with_one_seed_differ() {
        assert_ne!(row_key(7, 0), row_key(7, 1));
        assert_eq!(row_key(7, 1), row_key(7, 1));
    }
}
