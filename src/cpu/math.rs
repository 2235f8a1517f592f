//! Branch-free f32 `exp` and `ln` that vectorise (the std versions call libm one
//! element at a time). Both are within ~1 ulp over their documented ranges; the
//! GPU kernels use the same formulas so both backends draw the same samples.

pub(crate) const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that n * LN2_HI is exact for |n| <= 2^9.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
// Adding then subtracting 1.5 * 2^23 rounds to the nearest integer in any SIMD width.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;
/// [`exp_parts`]' clamp of x.
pub(crate) const EXP_ARG_RANGE: (f32, f32) = (-170.0, 88.8);
/// e^r's Taylor coefficients to r^7, highest first (Horner's order): on
/// |r| <= ln2/2 the truncation is below 0.1 ulp.
pub(crate) const EXP_TAYLOR: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];

/// 2^n for integer n in [-126, 127], built from the exponent bits.
#[inline(always)]
fn pow2i(n: i32) -> f32 {
    f32::from_bits((n.wrapping_add(127) as u32) << 23)
}

/// e^x as (p, n) with e^x = p * 2^n and p in [1/sqrt 2, sqrt 2]: callers that
/// multiply more factors in before scaling keep full precision where e^x alone
/// would be subnormal. x is clamped to [-170, 88.8]; NaN gives a NaN p.
/// FUSED: the multiply-adds fused (fewer operations; the GPU's sampling
/// kernels match only the unfused form's bits, which [`exp`] keeps).
#[inline(always)]
pub fn exp_parts<const FUSED: bool>(x: f32) -> (f32, i32) {
    exp_parts_in_range::<FUSED>(x.clamp(EXP_ARG_RANGE.0, EXP_ARG_RANGE.1))
}

/// [`exp_parts`] for x already in [-170, 88.8], where the clamp changes nothing.
#[inline(always)]
pub fn exp_parts_in_range<const FUSED: bool>(x: f32) -> (f32, i32) {
    let mul_add = |a: f32, b: f32, c: f32| if FUSED { a.mul_add(b, c) } else { a * b + c };
    let shifted = mul_add(x, LOG2_E, ROUND_MAGIC);
    let n = shifted - ROUND_MAGIC;
    // The integer n read from the low mantissa bits: unlike a float-to-int cast,
    // this vectorises (a NaN gives garbage here, but NaN stays NaN through p).
    let ni = (shifted.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = mul_add(-n, LN2_LO, mul_add(-n, LN2_HI, x));
    let mut p = EXP_TAYLOR[0];
    for c in &EXP_TAYLOR[1..] {
        p = mul_add(p, r, *c);
    }
    (p, ni)
}

/// v * 2^n for n in [-252, 254], in two exact factors so that results reach the
/// subnormals (or overflow) with a single rounding.
#[inline(always)]
pub fn ldexp(v: f32, n: i32) -> f32 {
    let half = n >> 1;
    v * pow2i(half) * pow2i(n.wrapping_sub(half))
}

/// v * 2^n for n in [-126, 127] when the result is normal: exact, so the
/// same bits as [`ldexp`] there, with one multiplication.
#[inline(always)]
pub fn scale_normal(v: f32, n: i32) -> f32 {
    v * pow2i(n)
}

/// e^x for all f32 x: overflows to +inf above ~88.72, underflows through the
/// subnormals to 0 below ~-103.97, NaN stays NaN. The unfused form, whose bits
/// the GPU's sampling kernels match.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// [`exp`] with its multiply-adds fused or not (see [`exp_parts`]).
#[inline(always)]
pub fn exp_with<const FUSED: bool>(x: f32) -> f32 {
    let (p, n) = exp_parts::<FUSED>(x);
    ldexp(p, n)
}

/// ln x for positive normal x (the only inputs the callers give it).
/// fdlibm's decomposition: x = 2^e (1 + f), ln(1 + f) = f - f²/2 + s (f²/2 + R(s²))
/// with s = f / (2 + f); f is exact, so only the small correction is rounded.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits() as i32;
    // Split so that 1 + f lies in [sqrt(1/2), sqrt(2)).
    let e = (bits - 0x3f35_04f3) >> 23; // bits of sqrt(1/2)
    let f = f32::from_bits((bits - (e << 23)) as u32) - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    // Minimax coefficients of (ln((1+s)/(1-s)) - 2s) / s for |s| < 0.1716.
    let r = z * (0.666_666_6 + w * 0.284_987_87) + w * (0.400_009_72 + w * 0.242_790_79);
    let half_f2 = 0.5 * f * f;
    let e = e as f32;
    s * (half_f2 + r) + e * LN2_LO - half_f2 + f + e * LN2_HI
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        if a == b32 {
            return 0.0;
        }
        let spacing = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / spacing
    }

    #[test]
    fn exp_is_within_two_ulp_everywhere() {
        for exp in [exp_with::<false>, exp_with::<true>] {
            let mut worst = 0.0f64;
            let mut x = -103.0f32;
            while x < 88.7 {
                let want = (x as f64).exp();
                if want > f32::MIN_POSITIVE as f64 {
                    worst = worst.max(ulps(exp(x), want));
                } else {
                    assert!((exp(x) as f64 - want).abs() <= 2.0 * 1.4e-45, "exp({x})");
                }
                x += 0.000_731;
            }
            assert!(worst <= 2.0, "worst exp error {worst} ulp");
            assert_eq!(exp(f32::NEG_INFINITY), 0.0);
            assert_eq!(exp(89.0), f32::INFINITY);
            assert!(exp(f32::NAN).is_nan());
        }
    }

    #[test]
    fn ln_is_within_two_ulp_on_normals() {
        let mut worst = 0.0f64;
        let mut x = f32::MIN_POSITIVE;
        while x < 1e30 {
            worst = worst.max(ulps(ln(x), (x as f64).ln()));
            x *= 1.000_37;
        }
        assert!(worst <= 2.0, "worst ln error {worst} ulp");
        assert_eq!(ln(1.0), 0.0);
    }
}
