//! SiLU, add, mul, scale.

use multiversion::multiversion;

use super::math::{exp_parts, ldexp};
use super::par::{CHUNK, Src, blocks};

/// x * sigmoid(x) with e = e^-|x| (never overflows): x / (1 + e) for x >= 0 and
/// x e / (1 + e) below, where the 2^n of e is applied last so that results
/// near the subnormals keep their precision. Below -200 the result is -0
/// (the limit, also for -inf).
#[inline(always)]
fn silu_one(x: f32) -> f32 {
    let (p, n) = exp_parts(-x.abs());
    let e = ldexp(p, n);
    let negative = if x < -200.0 { -0.0 } else { ldexp(x * p / (1.0 + e), n) };
    if x >= 0.0 { x / (1.0 + e) } else { negative }
}

#[multiversion(targets = "simd")]
fn silu_block(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = silu_one(x);
    }
}

#[multiversion(targets = "simd")]
fn add_block(a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a + b;
    }
}

#[multiversion(targets = "simd")]
fn mul_block(a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a * b;
    }
}

#[multiversion(targets = "simd")]
fn scale_block(x: &[f32], s: f32, y: &mut [f32]) {
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
