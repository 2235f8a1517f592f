//! SiLU, add, mul, scale.

use super::simd::{self, simd};

use rayon::prelude::*;

use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};

use super::convert::{Element, Float, TILE};
use super::math::{exp, exp_parts, exp_parts_in_range, ldexp, scale_normal};
use super::par::{CHUNK, Src, blocks};
use super::reduce::{add_into, column_sums};

/// x * sigmoid(x) with e = e^-|x| (never overflows): x / (1 + e) for x >= 0 and
/// x e / (1 + e) below, where the 2^n of e is applied last so that results
/// near the subnormals keep their precision. Below -200 the result is -0
/// (the limit, also for -inf).
#[inline(always)]
fn silu_one(x: f32) -> f32 {
    let (p, n) = exp_parts::<true>(-x.abs());
    let e = ldexp(p, n);
    // One division serves both signs (vectorised code computes both sides).
    let q = (if x >= 0.0 { x } else { x * p }) / (1.0 + e);
    if x >= 0.0 {
        q
    } else if x < -200.0 {
        -0.0
    } else {
        ldexp(q, n)
    }
}

/// Past this |x| (and for NaN), [`silu_near`] is not [`silu_one`].
const SILU_NEAR: f32 = 80.0;

/// [`silu_one`] for |x| <= SILU_NEAR, with the same bits in about 20% fewer
/// vector operations: there e = p 2^n (n >= -116) and the result are normal,
/// so each scaling by 2^n is one exact multiplication, and the clamps and
/// the -0 tail are not needed.
#[inline(always)]
fn silu_near(x: f32) -> f32 {
    let (p, n) = exp_parts_in_range::<true>(-x.abs());
    let e = scale_normal(p, n);
    let q = (if x >= 0.0 { x } else { x * p }) / (1.0 + e);
    if x >= 0.0 { q } else { scale_normal(q, n) }
}

/// y[i] = f(silu(x[i]), i): [`silu_near`] in one vectorised pass, then
/// [`silu_one`] again for the elements outside its range, if any.
#[inline(always)]
fn silu_map(x: &[f32], y: &mut [f32], f: impl Fn(f32, usize) -> f32) {
    let x = &x[..y.len()];
    let mut far = 0u32;
    for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
        *y = f(silu_near(x), i);
        far |= u32::from(!(x.abs() <= SILU_NEAR));
    }
    if far != 0 {
        for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            if !(x.abs() <= SILU_NEAR) {
                *y = f(silu_one(x), i);
            }
        }
    }
}

#[simd]
pub(crate) fn silu_block(x: &[f32], y: &mut [f32]) {
    silu_map(x, y, |s, _| s);
}

#[simd]
pub(crate) fn add_block(a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a + b;
    }
}

#[simd]
pub(crate) fn mul_block(a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a * b;
    }
}

#[simd]
pub(crate) fn scale_block(x: &[f32], s: f32, y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * s;
    }
}

pub fn silu(x: Src, y: &mut [f32]) {
    blocks([x], y, CHUNK, |_, [x], y| silu_block(x, y));
}

pub fn add(a: Src, b: Src, y: &mut [f32]) {
    blocks([a, b], y, CHUNK, |_, [a, b], y| add_block(a, b, y));
}

pub fn mul(a: Src, b: Src, y: &mut [f32]) {
    blocks([a, b], y, CHUNK, |_, [a, b], y| mul_block(a, b, y));
}

pub fn scale(x: Src, s: f32, y: &mut [f32]) {
    blocks([x], y, CHUNK, |_, [x], y| scale_block(x, s, y));
}

/// sigmoid(x) = 1 / (1 + e^-x), without overflow: e^-|x| is at most 1.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 { s } else { e * s }
}

/// d silu(x) / dx = s (1 + x (1 - s)), s = sigmoid(x). Past |x| = 100 the value
/// is 0 or 1 in f32; clamping there keeps x = ±inf from giving 0 * inf.
#[inline(always)]
fn silu_grad_one(x: f32) -> f32 {
    let x = x.clamp(-100.0, 100.0);
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

// GELU, tanh form: 0.5 x (1 + tanh u) with u = sqrt(2/pi) (x + 0.044715 x³),
// computed as x sigmoid(2u) (the same function, with no cancellation near 0).
const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_A: f32 = 0.044_715;
/// Past |x| = 50, GELU is x or -0 and its slope 1 or 0 in f32; the clamp keeps
/// x³ finite.
const GELU_CLAMP: f32 = 50.0;

#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    let c = x.clamp(-GELU_CLAMP, GELU_CLAMP);
    // x.max(c) is x except below the clamp, where sigmoid is 0: -0, not -inf * 0.
    x.max(c) * sigmoid(2.0 * GELU_C * (c + GELU_A * c * c * c))
}

/// d/dx [x s(2u)] = s + x s (1 - s) 2u'(x), u' = sqrt(2/pi) (1 + 3 * 0.044715 x²).
#[inline(always)]
fn gelu_grad_one(x: f32) -> f32 {
    let x = x.clamp(-GELU_CLAMP, GELU_CLAMP);
    let s = sigmoid(2.0 * GELU_C * (x + GELU_A * x * x * x));
    s + x * s * (1.0 - s) * 2.0 * GELU_C * (1.0 + 3.0 * GELU_A * x * x)
}

#[simd]
fn silu_backward_block(dy: &[f32], x: &[f32], dx: &mut [f32]) {
    for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
        *dx = dy * silu_grad_one(x);
    }
}

#[simd]
fn gelu_block(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = gelu_one(x);
    }
}

#[simd]
fn gelu_backward_block(dy: &[f32], x: &[f32], dx: &mut [f32]) {
    for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
        *dx = dy * gelu_grad_one(x);
    }
}

#[simd]
pub(crate) fn swiglu_block(gate: &[f32], up: &[f32], y: &mut [f32]) {
    let up = &up[..y.len()];
    silu_map(gate, y, |s, i| s * up[i]);
}

/// A table of SiLU over every value of a half type, indexed by its bits: the
/// float32 op's own results on the values as `widen` gives them. 256 KiB,
/// built on first use.
type SiluTable = std::sync::OnceLock<Box<[f32; 1 << 16]>>;

fn silu_of(table: &'static SiluTable, widen: impl FnOnce(&[u16], &mut [f32])) -> &'static [f32; 1 << 16] {
    table.get_or_init(|| {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let (mut x, mut table) = (vec![0.0f32; 1 << 16], Box::new([0.0f32; 1 << 16]));
        widen(&bits, &mut x);
        silu_block(&x, &mut table[..]);
        table
    })
}

/// SwiGLU on the bits of half type `t`, each result the float32 op's rounded
/// once (but for NaN pairs: see `convert::elementwise`): the gate's SiLU is
/// read from a table of the type's 65536 values (the exponential and division
/// bounded half SwiGLU on two cores, at float32's speed), sixteen lookups a
/// gather with AVX-512.
pub(crate) fn swiglu_half(t: Float, gate: &[u16], up: &[u16], y: &mut [u16]) {
    static BF16: SiluTable = SiluTable::new();
    static F16: SiluTable = SiluTable::new();
    let is_bf16 = t == Float::Bf16;
    let silu = if is_bf16 {
        silu_of(&BF16, |b, x| bf16::load(b.reinterpret_cast(), x))
    } else {
        silu_of(&F16, |b, x| f16::load(b.reinterpret_cast(), x))
    };
    #[cfg(target_arch = "x86_64")]
    let done = if simd::level() == simd::Level::Avx512 {
        // SAFETY: the CPU has AVX-512 (the level is never above the CPU's).
        unsafe { swiglu_half_avx512(is_bf16, gate, up, y, silu) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let (gate, up, y) = (&gate[done..], &up[done..], &mut y[done..]);
    if is_bf16 {
        swiglu_tiles::<bf16>(silu, gate, up.reinterpret_cast(), y.reinterpret_cast_mut());
    } else {
        swiglu_tiles::<f16>(silu, gate, up.reinterpret_cast(), y.reinterpret_cast_mut());
    }
}

/// [`swiglu_half`] through the type's own widening and rounding, on tiles on
/// the stack.
fn swiglu_tiles<T: Element>(silu: &[f32; 1 << 16], gate: &[u16], up: &[T], y: &mut [T]) {
    let mut wide = [0.0f32; TILE];
    for ((gate, up), y) in gate.chunks(TILE).zip(up.chunks(TILE)).zip(y.chunks_mut(TILE)) {
        let wide = &mut wide[..y.len()];
        T::load(up, wide);
        for (w, &g) in wide.iter_mut().zip(gate) {
            *w *= silu[g as usize];
        }
        T::store(wide, y);
    }
}

/// [`swiglu_half`] on the whole vectors of 16 elements (bfloat16 or, if not
/// `is_bf16`, float16 bits); returns how many it did. The widening quiets a
/// NaN as `Element::load`, the rounding is `Element::store`'s (float16:
/// F16C's, to nearest even). Safety: the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn swiglu_half_avx512(is_bf16: bool, gate: &[u16], up: &[u16], y: &mut [u16], silu: &[f32; 1 << 16]) -> usize {
    use std::arch::x86_64::*;
    let n = y.len() / 16 * 16;
    let (gate, up) = (&gate[..n], &up[..n]);
    let c = _mm512_set1_epi32;
    // NaN lanes of float32 bits.
    let nan = |x: __m512i| _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, c(0x7fff_ffff)), c(0x7f80_0000));
    for i in (0..n).step_by(16) {
        // SAFETY: i + 16 <= n elements of each slice.
        unsafe {
            // Any 16 bits index the table (a signalling NaN's entry is its quiet twin's).
            let s = _mm512_i32gather_ps::<4>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(gate.as_ptr().add(i).cast())), silu.as_ptr());
            let u = _mm256_loadu_si256(up.as_ptr().add(i).cast());
            let u = if is_bf16 { _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(u)) } else { _mm512_castps_si512(_mm512_cvtph_ps(u)) };
            let u = _mm512_mask_or_epi32(u, nan(u), u, c(0x0040_0000));
            let p = _mm512_mul_ps(s, _mm512_castsi512_ps(u));
            let bits = if is_bf16 {
                let p = _mm512_castps_si512(p);
                let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(p), c(1));
                let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(p, _mm512_add_epi32(odd, c(0x7fff))));
                _mm512_cvtepi32_epi16(_mm512_mask_or_epi32(rounded, nan(p), _mm512_srli_epi32::<16>(p), c(0x0040)))
            } else {
                _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p)
            };
            _mm256_storeu_si256(y.as_mut_ptr().add(i).cast(), bits);
        }
    }
    n
}

#[simd]
fn swiglu_backward_block(dy: &[f32], gate: &[f32], up: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    for ((((dg, du), &dy), &g), &u) in d_gate.iter_mut().zip(d_up.iter_mut()).zip(dy).zip(gate).zip(up) {
        *dg = dy * u * silu_grad_one(g);
        *du = dy * silu_one(g);
    }
}

/// d_input = d_output * silu'(input).
pub fn silu_backward(dy: Src, x: Src, dx: &mut [f32]) {
    blocks([dy, x], dx, CHUNK, |_, [dy, x], dx| silu_backward_block(dy, x, dx));
}

/// GELU (tanh approximation), as GPT-2 uses it.
pub fn gelu(x: Src, y: &mut [f32]) {
    blocks([x], y, CHUNK, |_, [x], y| gelu_block(x, y));
}

/// d_input = d_output * gelu'(input).
pub fn gelu_backward(dy: Src, x: Src, dx: &mut [f32]) {
    blocks([dy, x], dx, CHUNK, |_, [dy, x], dx| gelu_backward_block(dy, x, dx));
}

/// output = silu(gate) * up.
pub fn swiglu(gate: Src, up: Src, y: &mut [f32]) {
    blocks([gate, up], y, CHUNK, |_, [g, u], y| swiglu_block(g, u, y));
}

/// d_gate = d_output * up * silu'(gate), d_up = d_output * silu(gate). The
/// inputs must not alias the outputs (the caller copies them first).
pub fn swiglu_backward(dy: &[f32], gate: &[f32], up: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    d_gate
        .par_chunks_mut(CHUNK)
        .zip(d_up.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(i, (dg, du))| {
            let r = i * CHUNK..i * CHUNK + dg.len();
            swiglu_backward_block(&dy[r.clone()], &gate[r.clone()], &up[r], dg, du);
        });
}

#[simd]
fn bias_row(x: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
        *y = x + b;
    }
}

/// output[r, :] = input[r, :] + bias.
pub fn bias_add(x: Src, bias: &[f32], y: &mut [f32]) {
    blocks([x], y, bias.len(), |_, [x], y| bias_row(x, bias, y));
}

/// d_bias = column sums of d_output[rows, cols].
pub fn bias_backward(dy: &[f32], d_bias: &mut [f32]) {
    let cols = d_bias.len();
    let sums = column_sums(dy.len() / cols, cols, |r, acc| add_into(acc, &dy[r * cols..(r + 1) * cols]));
    d_bias.copy_from_slice(&sums);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SiLU and SwiGLU on `x` against [`silu_one`], bit for bit (NaN: any NaN).
    fn check(x: &[f32]) {
        let mut y = vec![0.0; x.len()];
        silu_block(x, &mut y);
        for (&x, &y) in x.iter().zip(&y) {
            let want = silu_one(x);
            assert!(y.to_bits() == want.to_bits() || (x.is_nan() && y.is_nan()), "silu({x:e}) = {y:e}, want {want:e}");
        }
        let up: Vec<f32> = (0..x.len()).map(|i| 1.5 - (i % 7) as f32).collect();
        swiglu_block(x, &up, &mut y);
        for ((&x, &u), &y) in x.iter().zip(&up).zip(&y) {
            let want = silu_one(x) * u;
            assert!(y.to_bits() == want.to_bits() || (want.is_nan() && y.is_nan()), "swiglu({x:e}, {u}) = {y:e}, want {want:e}");
        }
    }

    #[test]
    fn the_vectorised_silu_has_the_bits_of_silu_one() {
        // Every 509th float with |x| <= SILU_NEAR, in slices of 2^20 (a stride of 1
        // passed once, all 2.2e9 of them), then the edges and the far values mixed in.
        let top = SILU_NEAR.to_bits();
        let bits: Vec<u32> = (0..=top).step_by(509).collect();
        for slice in bits.chunks(1 << 19) {
            check(&slice.iter().flat_map(|&b| [f32::from_bits(b), -f32::from_bits(b)]).collect::<Vec<_>>());
        }
        let mut x: Vec<f32> = (top - 40..top + 40).flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)]).collect();
        x.extend([-87.0, -103.9, -150.0, -200.5, 1e30, -1e30, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN]);
        check(&x);
    }
}
