//! Rotary position embedding: the angle table and the pairwise rotations.

use rayon::prelude::*;

use super::par::Src;

/// freqs[p, i] = p * B^(-2i/head_dim) with the NTK-aware base
/// B = base * alpha^(head_dim / (head_dim - 2)); computed in f64.
pub fn freqs(table: &mut [f32], head_dim: usize, base: f32, alpha: f32) {
    let half = head_dim / 2;
    let d = head_dim as f64;
    let scaled_base = if alpha == 1.0 { base as f64 } else { base as f64 * (alpha as f64).powf(d / (d - 2.0)) };
    let theta: Vec<f64> = (0..half).map(|i| scaled_base.powf(-2.0 * i as f64 / d)).collect();
    table.par_chunks_mut(half).enumerate().for_each(|(p, row)| {
        for (f, t) in row.iter_mut().zip(&theta) {
            *f = (p as f64 * t) as f32;
        }
    });
}

/// How a stored angle is used: as is, or with dynamic NTK scaling
/// `angle * alpha^(-2i/(head_dim-2))`.
#[derive(Clone, Copy)]
pub enum Angles {
    AsStored,
    NtkScaled { alpha: f32 },
}

impl Angles {
    /// The scaling factor's base as the GPU kernel takes it (1 = as stored).
    pub fn ntk_alpha(self) -> f32 {
        match self {
            Angles::AsStored => 1.0,
            Angles::NtkScaled { alpha } => alpha,
        }
    }
}

/// Shape of one rotation call: `[batch, seq_len, heads, head_dim]`, positions
/// start at `offset`.
#[derive(Clone, Copy)]
pub struct RopeShape {
    pub seq_len: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub offset: usize,
}

/// (cos, sin) of every angle one position uses; with `inverse`, of the
/// negated angles (the rotation back, for the backward pass).
fn rotation_row(freqs: &[f32], position: usize, head_dim: usize, angles: Angles, inverse: bool) -> Vec<(f32, f32)> {
    let half = head_dim / 2;
    let row = &freqs[position * half..(position + 1) * half];
    row.iter()
        .enumerate()
        .map(|(i, &angle)| {
            let angle = match angles {
                Angles::AsStored => angle,
                Angles::NtkScaled { alpha } => {
                    (angle as f64 * (alpha as f64).powf(-2.0 * i as f64 / (head_dim as f64 - 2.0))) as f32
                }
            };
            (angle.cos(), if inverse { -angle.sin() } else { angle.sin() })
        })
        .collect()
}

/// Rotates every interleaved pair (x[2i], x[2i+1]) of `x` by its position's
/// angle into `y` (by minus that angle with `inverse`: the backward of a
/// rotation is the rotation back). `y` starts at token `first` of the tensor.
pub fn rotate(x: Src, y: &mut [f32], freqs: &[f32], shape: RopeShape, angles: Angles, inverse: bool, first: usize) {
    let token = shape.heads * shape.head_dim;
    if y.is_empty() {
        return; // no heads on this side (e.g. rope_qk with n_kv_heads = 0)
    }
    y.par_chunks_mut(token).enumerate().for_each(|(t, y)| {
        let position = (first + t) % shape.seq_len + shape.offset;
        let rot = rotation_row(freqs, position, shape.head_dim, angles, inverse);
        let x = match &x {
            Src::Slice(x) => Some(&x[t * token..(t + 1) * token]),
            Src::Copy(x) => Some(&x[t * token..(t + 1) * token]),
            Src::Output => None, // in place: each pair is read before it is written
        };
        for (h, y) in y.chunks_exact_mut(shape.head_dim).enumerate() {
            for (i, &(cos, sin)) in rot.iter().enumerate() {
                let (x0, x1) = match x {
                    Some(x) => (x[h * shape.head_dim + 2 * i], x[h * shape.head_dim + 2 * i + 1]),
                    None => (y[2 * i], y[2 * i + 1]),
                };
                y[2 * i] = x0 * cos - x1 * sin;
                y[2 * i + 1] = x0 * sin + x1 * cos;
            }
        }
    });
}
