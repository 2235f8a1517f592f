//! Softmax's row passes at the AVX-512 level, in intrinsics: the maximum,
//! the exponentials with their sum, and float16's rounding with the scaling.
//!
//! The exponential is [`math::exp_with`]'s fused form, operation for
//! operation, but for its last step. There `ldexp` scales p by 2^n with
//! eight integer and float operations (two exact factors, so that results
//! reach the subnormals with one rounding); here `vscalefps` does it in one,
//! with the same single rounding. A third of the operations go (softmax is
//! bound by them on the dev machine's cores), and the bits are
//! [`reduce::exp_into`]'s at the other levels (the test below compares them,
//! subnormal results and each element's NaN payload included). Rows are
//! read as float32, bfloat16 or float16 ([`Load`]), widened in registers.
//!
//! [`math::exp_with`]: super::math::exp_with
//! [`reduce::exp_into`]: super::reduce::exp_into

use std::arch::x86_64::*;

use super::math::{EXP_ARG_RANGE, EXP_TAYLOR, LN2_HI, LN2_LO, LOG2_E, ROUND_MAGIC};
use super::reduce::{BLOCK, LANES, lane_total, prefetch};

/// e^(x - shift) of 16 lanes, as `exp_with::<true>(x - shift)` computes each.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512, shift: __m512) -> __m512 {
    // The clamp: max and min return their second operand when either is NaN,
    // so NaN goes through, as in `f32::clamp`.
    let (lo, hi) = (_mm512_set1_ps(EXP_ARG_RANGE.0), _mm512_set1_ps(EXP_ARG_RANGE.1));
    let x = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_sub_ps(x, shift)));
    let magic = _mm512_set1_ps(ROUND_MAGIC);
    let n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(LOG2_E), magic), magic);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x));
    let mut p = _mm512_set1_ps(EXP_TAYLOR[0]);
    for c in &EXP_TAYLOR[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    _mm512_scalef_ps(p, n)
}

/// The mask of lanes at..at + 16 that lie before `end` (at < end).
#[inline]
fn lanes_to(end: usize, at: usize) -> __mmask16 {
    if end - at >= LANES { !0 } else { (1u16 << (end - at)) - 1 }
}

/// 16 elements of a row as float32 (zeros past `mask`).
pub trait Load: Sized {
    /// Safety: the CPU has AVX-512 (F, BW, VL); the masked lanes from `p` are readable.
    unsafe fn load(p: *const Self, mask: __mmask16) -> __m512;
}

impl Load for f32 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32, mask: __mmask16) -> __m512 {
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }
}

/// bfloat16 bits widened unquieted (the subtraction in [`exp16`] quiets a
/// NaN to the bits that widening would have given).
impl Load for u16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const u16, mask: __mmask16) -> __m512 {
        let bits = unsafe { _mm256_maskz_loadu_epi16(mask, p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    }
}

/// float16 widened by `vcvtph2ps` (which quiets a NaN, as widening does).
impl Load for half::f16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const half::f16, mask: __mmask16) -> __m512 {
        _mm512_cvtph_ps(unsafe { _mm256_maskz_loadu_epi16(mask, p.cast()) })
    }
}

/// The largest element of x widened by [`Load`], NaN skipped; -inf for an
/// empty x (`reduce::max`'s value: a maximum does not depend on the order it
/// is taken in). Safety: the CPU has AVX-512 (F, BW, VL).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn max<T: Load>(x: &[T]) -> f32 {
    // Four sets of lanes, so that consecutive maxima do not wait on each other
    // (named, so that they stay in registers); max_ps returns its second
    // operand when either is NaN, so NaN is skipped.
    // SAFETY (of each call): lanes at..at + 16, masked to the end, lie within x.
    let lanes = |at: usize, mask: __mmask16| unsafe { T::load(x.as_ptr().add(at), mask) };
    let mut acc = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    let whole = x.len() / (4 * LANES) * (4 * LANES);
    for at in (0..whole).step_by(4 * LANES) {
        let [a, b, c, d] = acc;
        acc = [(0, a), (1, b), (2, c), (3, d)].map(|(i, acc)| _mm512_max_ps(lanes(at + i * LANES, !0), acc));
    }
    for (at, acc) in (whole..x.len()).step_by(LANES).zip(&mut acc) {
        let mask = lanes_to(x.len(), at);
        *acc = _mm512_mask_max_ps(*acc, mask, lanes(at, mask), *acc);
    }
    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(acc[0], acc[1]), _mm512_max_ps(acc[2], acc[3])))
}

/// y = e^(x - shift), x read by [`Load`]; returns Σ y in `map_sum`'s lanes,
/// blocks and order (16 lane sums a block, a short tail in the first lanes,
/// blocks totalled in f64). Meanwhile the cache lines of x's length in `A`
/// from `ahead` on are asked for. Safety: the CPU has AVX-512 (F, BW, VL).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn exp_sum<T: Load, A>(x: &[T], shift: f32, y: &mut [f32], ahead: *const A) -> f32 {
    unsafe { exp_sum_with(x, shift, y, ahead, &mut ()) }
}

/// Work done in [`exp_sum_with`]'s loop, on the same lanes as each step.
pub trait Alongside {
    /// Lanes at..at + 16 of a row as long as exp_sum's, masked to its end.
    /// Safety: the CPU has AVX-512 (F, BW, VL).
    unsafe fn step(&mut self, at: usize, mask: __mmask16);
}

impl Alongside for () {
    #[inline]
    unsafe fn step(&mut self, _: usize, _: __mmask16) {}
}

/// A half type's softmax output: y = e * s rounded, by [`Alongside`] steps,
/// so that one row's scaling and rounding can run in the loop of the next
/// row's exponentials (whose arithmetic then covers the stores' waits for
/// their cache lines).
pub trait Rounded: Load {
    /// The steps of y = e * s rounded, for s whose products are not NaN.
    /// Safety: the CPU has AVX-512 (F, BW, VL); e and y outlive the value.
    unsafe fn scaled(e: &[f32], s: f32, y: &mut [Self]) -> Scaled<Self> {
        assert_eq!(e.len(), y.len(), "scaled: e and y differ in length");
        Scaled { e: e.as_ptr(), s, y: y.as_mut_ptr() }
    }
    /// 16 rounded lanes. Safety: the CPU has AVX-512 (F, BW, VL).
    unsafe fn round(v: __m512) -> __m256i;
}

/// [`Rounded::scaled`]'s steps.
pub struct Scaled<T> {
    e: *const f32,
    s: f32,
    y: *mut T,
}

impl<T: Rounded> Alongside for Scaled<T> {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn step(&mut self, at: usize, mask: __mmask16) {
        // SAFETY: lanes at..at + 16, masked to the row's end, lie within e and y.
        let v = _mm512_mul_ps(unsafe { _mm512_maskz_loadu_ps(mask, self.e.add(at)) }, _mm512_set1_ps(self.s));
        unsafe { _mm256_mask_storeu_epi16(self.y.add(at).cast(), mask, T::round(v)) };
    }
}

impl<T: Rounded> Scaled<T> {
    /// The steps of a whole row of `len`, on their own. Safety: as [`Rounded::scaled`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn run(mut self, len: usize) {
        for at in (0..len).step_by(LANES) {
            let mask = lanes_to(len, at);
            unsafe { self.step(at, mask) };
        }
    }
}

/// bfloat16 by `to_bf16`'s rounding without its NaN case: the bits plus
/// 0x7fff plus the kept lowest bit, high half.
impl Rounded for u16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn round(v: __m512) -> __m256i {
        let v = _mm512_castps_si512(v);
        let lowest = _mm512_and_si512(_mm512_srli_epi32::<16>(v), _mm512_set1_epi32(1));
        _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_add_epi32(_mm512_add_epi32(v, _mm512_set1_epi32(0x7fff)), lowest)))
    }
}

/// bfloat16 bits rounded by AVX512-BF16's `vcvtneps2bf16` (2 operations
/// where the integer rounding above takes 7), for CPUs that have it. The
/// instruction takes subnormal inputs as zero: a vector holding one is
/// rounded the integer way instead. Elsewhere, on finite values, both round
/// to nearest even: the same bits.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Bf16Native(pub u16);

impl Bf16Native {
    /// bfloat16 bits as this type, and back (the same memory).
    pub fn of(bits: &[u16]) -> &[Self] {
        // SAFETY: Bf16Native is a transparent u16.
        unsafe { std::slice::from_raw_parts(bits.as_ptr().cast(), bits.len()) }
    }
    pub fn of_mut(bits: &mut [u16]) -> &mut [Self] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(bits.as_mut_ptr().cast(), bits.len()) }
    }
    pub fn bits_mut(values: &mut [Self]) -> &mut [u16] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), values.len()) }
    }
}

impl Load for Bf16Native {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const Bf16Native, mask: __mmask16) -> __m512 {
        unsafe { u16::load(p.cast(), mask) }
    }
}

impl Rounded for Bf16Native {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn round(v: __m512) -> __m256i {
        let (rounded, subnormal): (__m256i, __mmask16);
        // SAFETY: Bf16Native is used only where the CPU has AVX512-BF16 and
        // AVX512-DQ (`vfpclassps`); registers only. (asm!: the compiler
        // enables neither feature for this function.)
        unsafe {
            std::arch::asm!(
                "vfpclassps {k}, {v}, 0x20",
                "vcvtneps2bf16 {r}, {v}",
                v = in(zmm_reg) v, r = out(ymm_reg) rounded, k = out(kreg) subnormal,
                options(pure, nomem, nostack, preserves_flags),
            )
        };
        if subnormal == 0 { rounded } else { unsafe { u16::round(v) } }
    }
}

/// float16 by `vcvtps2ph` (to nearest even: `Element::store`'s rounding).
impl Rounded for half::f16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn round(v: __m512) -> __m256i {
        _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)
    }
}

/// [`exp_sum`], with `side` stepped over the same lanes in its loop.
/// Safety: the CPU has AVX-512 (F, BW, VL).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn exp_sum_with<T: Load, A, S: Alongside>(x: &[T], shift: f32, y: &mut [f32], ahead: *const A, side: &mut S) -> f32 {
    assert_eq!(x.len(), y.len(), "exp_sum: x and y differ in length");
    if x.len() <= BLOCK {
        return unsafe { block_sum(x, 0, shift, y, ahead, side) };
    }
    let mut total = 0.0f64;
    for start in (0..x.len()).step_by(BLOCK) {
        total += unsafe { block_sum(x, start, shift, y, ahead, side) } as f64;
    }
    total as f32
}

/// [`exp_sum_with`]'s block from `start`. Safety: as [`exp_sum`]; x and y of one length.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn block_sum<T: Load, A, S: Alongside>(x: &[T], start: usize, shift: f32, y: &mut [f32], ahead: *const A, side: &mut S) -> f32 {
    let (end, shift) = (x.len().min(start + BLOCK), _mm512_set1_ps(shift));
    let mut acc = _mm512_setzero_ps();
    // Whole vectors with a constant mask (which the compiler drops), then the tail.
    let whole = start + (end - start) / LANES * LANES;
    for at in (start..whole).step_by(LANES) {
        unsafe { exp_step(x, at, !0, shift, y, ahead, side, &mut acc) };
    }
    if whole < end {
        unsafe { exp_step(x, whole, lanes_to(end, whole), shift, y, ahead, side, &mut acc) };
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: lanes holds 16 floats.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    lane_total(lanes)
}

/// One step of [`block_sum`]: lanes at..at + 16 masked to `mask`.
/// Safety: as [`exp_sum`]; the masked lanes lie within x and y.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn exp_step<T: Load, A, S: Alongside>(x: &[T], at: usize, mask: __mmask16, shift: __m512, y: &mut [f32], ahead: *const A, side: &mut S, acc: &mut __m512) {
    prefetch(ahead.wrapping_add(at).cast());
    let e = unsafe { exp16(T::load(x.as_ptr().add(at), mask), shift) };
    unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr().add(at), mask, e) };
    *acc = _mm512_mask_add_ps(*acc, mask, *acc, e);
    unsafe { side.step(at, mask) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::convert::bf16_value;
    use crate::cpu::math::exp_with;
    use crate::cpu::reduce::{max as reduce_max, sum};

    /// Inputs across exp's range and past it, and its special values.
    fn inputs(len: usize, seed: u32) -> Vec<f32> {
        let special = [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, -87.5, -103.9, -150.0, 88.7, 1e-40];
        let mut state = seed;
        (0..len)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                match i % 37 {
                    0 => special[(state >> 8) as usize % special.len()],
                    _ => (state >> 8) as f32 / (1 << 24) as f32 * 300.0 - 200.0,
                }
            })
            .collect()
    }

    /// exp_sum's y and total against `exp_with::<true>` element by element and
    /// `reduce::sum` of that (the lanes and blocks `map_sum` promises): the
    /// same bits (a NaN total: NaN), for float32, bfloat16 and float16 rows
    /// (and `max` against `reduce::max`), lengths around the lane and
    /// block sizes, and shifts that leave results in the subnormals.
    #[test]
    fn the_same_bits_as_the_other_levels() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl")) {
            eprintln!("SKIPPED: this CPU has no AVX-512");
            return;
        }
        let same = |got: f32, want: f32| got.to_bits() == want.to_bits();
        // A total of two NaNs keeps the one the compiled addition picks (the
        // compiler may swap its operands): there, NaN is all that is promised.
        let same_total = |got: f32, want: f32| same(got, want) || (got.is_nan() && want.is_nan());
        for len in [0, 1, 15, 16, 17, 1000, 1023, 1024, 1025, 2048, 4103] {
            for shift in [0.0, 3.5, -20.0, 70.0] {
                let x = inputs(len, len as u32 + 7);
                let want: Vec<f32> = x.iter().map(|&x| exp_with::<true>(x - shift)).collect();
                let mut y = vec![0.0; len];
                // SAFETY: the CPU has AVX-512 F and BW (checked above).
                let total = unsafe { exp_sum(&x, shift, &mut y, std::ptr::null::<f32>()) };
                assert!(y.iter().zip(&want).all(|(&g, &w)| same(g, w)), "float32 len {len} shift {shift}");
                assert!(same_total(total, sum(&want)), "float32 total len {len} shift {shift}");

                let h: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
                let want: Vec<f32> = h.iter().map(|&h| exp_with::<true>(bf16_value(h) - shift)).collect();
                let total = unsafe { exp_sum(&h, shift, &mut y, h.as_ptr()) };
                assert!(y.iter().zip(&want).all(|(&g, &w)| same(g, w)), "bf16 len {len} shift {shift}");
                assert!(same_total(total, sum(&want)), "bf16 total len {len} shift {shift}");

                let f: Vec<half::f16> = h.iter().map(|&h| half::f16::from_bits(h)).collect();
                let wide: Vec<f32> = f.iter().map(|v| v.to_f32()).collect();
                let want: Vec<f32> = wide.iter().map(|&v| exp_with::<true>(v - shift)).collect();
                let total = unsafe { exp_sum(&f, shift, &mut y, f.as_ptr()) };
                // (The half crate keeps a signalling NaN's payload unquieted: compare NaN as NaN.)
                assert!(y.iter().zip(&want).all(|(&g, &w)| same(g, w) || (g.is_nan() && w.is_nan())), "f16 len {len} shift {shift}");
                assert!(same_total(total, sum(&want)), "f16 total len {len} shift {shift}");
                // SAFETY: as above.
                let maxima = unsafe { [max(&x), max(&f)] };
                assert!(same(maxima[0], reduce_max(&x)) && same(maxima[1], reduce_max(&wide)), "max len {len}");
            }
        }
    }
}
