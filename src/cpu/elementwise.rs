//! SiLU, add, mul, scale.

use super::simd::simd;

use rayon::prelude::*;

use super::math::{exp, exp_parts, ldexp};
use super::par::{CHUNK, Src, blocks};
use super::reduce::{add_into, column_sums};

/// x * sigmoid(x) with e = e^-|x| (never overflows): x / (1 + e) for x >= 0 and
/// x e / (1 + e) below, where the 2^n of e is applied last so that results
/// near the subnormals keep their precision. Below -200 the result is -0
/// (the limit, also for -inf).
#[inline(always)]
fn silu_one(x: f32) -> f32 {
    let (p, n) = exp_parts(-x.abs());
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

#[simd]
fn silu_block(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = silu_one(x);
    }
}

#[simd]
fn add_block(a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a + b;
    }
}

#[simd]
fn mul_block(a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a * b;
    }
}

#[simd]
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
fn swiglu_block(gate: &[f32], up: &[f32], y: &mut [f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
        *y = silu_one(g) * u;
    }
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
