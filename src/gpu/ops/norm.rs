//! RMSNorm and LayerNorm launches, forward and backward.

use super::{column_sums, line, per_row};
use crate::gpu::scratch::Scratch;
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::Gpu;
use crate::error::Result;

use Arg::{F32, I32, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

pub unsafe fn rmsnorm(g: &Gpu, s: Stream, x: DevPtr, w: DevPtr, y: DevPtr, rows: usize, hidden: usize, eps: f32) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(w), Ptr(y), I32(rows as i32), I32(hidden as i32), F32(eps)];
    // 512 threads: measured ~8% faster than 1024 on 4096-wide rows.
    unsafe { g.launch("rmsnorm_f32", per_row(rows, 512), s, args) }
}

pub unsafe fn rmsnorm_residual(g: &Gpu, s: Stream, x: DevPtr, r: DevPtr, w: DevPtr, y: DevPtr, sum: DevPtr, rows: usize, hidden: usize, eps: f32) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(r), Ptr(w), Ptr(y), Ptr(sum), I32(rows as i32), I32(hidden as i32), F32(eps)];
    unsafe { g.launch("rmsnorm_residual_f32", per_row(rows, 1024), s, args) }
}

pub unsafe fn layernorm(g: &Gpu, s: Stream, x: DevPtr, w: DevPtr, b: DevPtr, y: DevPtr, rows: usize, hidden: usize, eps: f32) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(w), Ptr(b), Ptr(y), I32(rows as i32), I32(hidden as i32), F32(eps)];
    unsafe { g.launch("layernorm_f32", per_row(rows, 1024), s, args) }
}

/// The normalised rows into `xhat` (LayerNorm when `center`, else RMSNorm).
unsafe fn xhat(g: &Gpu, s: Stream, x: DevPtr, xhat: DevPtr, rows: usize, hidden: usize, eps: f32, center: bool) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(xhat), I32(rows as i32), I32(hidden as i32), F32(eps), I32(center as i32)];
    unsafe { g.launch("norm_xhat_f32", per_row(rows, 1024), s, args) }
}

/// The widest row the one-pass RMSNorm backward takes (CHUNK_MAX_HIDDEN in norm.cu).
const CHUNK_MAX_HIDDEN: usize = 8192;
/// Chunks the one-pass RMSNorm backward aims for: enough blocks for any
/// current GPU (two resident a multiprocessor fill an H100), few enough that
/// the chunks' column sums, written and read back, stay small (1024 chunks
/// cost 2 points of the copy bandwidth at 16384 x 4096); a function of the
/// shape alone, so the bits do not depend on the device.
const NORM_CHUNKS: usize = 256;

/// RMSNorm backward. The weight gradient is a column sum of `dy * x * r`. Rows
/// up to [`CHUNK_MAX_HIDDEN`] wide take one pass over `dy` and `x` writing `dx`
/// and each chunk's column sums (of up to 64 rows) to scratch, then the sum
/// over chunks; where the rows can be read as float4s they are held in
/// registers (the `regs` kernels), else re-read for `dx`. Wider rows: the
/// normalised rows `x * r` are written into `dx` first (free until the last
/// kernel) for the column sums, then `dx`. `dx` must not alias the inputs (the
/// ABI layer has aliased inputs copied).
pub unsafe fn rmsnorm_backward(g: &Gpu, s: Stream, dy: DevPtr, x: DevPtr, w: DevPtr, dx: DevPtr, dw: DevPtr, rows: usize, hidden: usize, eps: f32) -> Result<()> {
    if rows > 0 && (1..=CHUNK_MAX_HIDDEN).contains(&hidden) {
        let chunk = (rows / NORM_CHUNKS).clamp(1, 64);
        let chunks = rows.div_ceil(chunk);
        let mut scratch = Scratch::new(s);
        let part = scratch.alloc(chunks * hidden * 4)?;
        let vectors = hidden % 4 == 0 && [dy, x, w, dx].iter().all(|p| p % 16 == 0);
        // Rows of 1024 N floats, read as float4s, fit N of them per thread.
        let kernel = match hidden.div_ceil(1024) {
            _ if !vectors => "rmsnorm_backward_chunks_f32",
            1 => "rmsnorm_backward_regs1_f32",
            2 => "rmsnorm_backward_regs2_f32",
            3 | 4 => "rmsnorm_backward_regs4_f32",
            _ => "rmsnorm_backward_regs8_f32",
        };
        let args = &mut [Ptr(dy), Ptr(x), Ptr(w), Ptr(dx), Ptr(part), I32(rows as i32), I32(hidden as i32), F32(eps), I32(chunk as i32)];
        return unsafe {
            g.launch(kernel, line(chunks.min(65535), 256), s, args)?;
            column_sums(g, s, part, 0, dw, chunks, hidden)
        };
    }
    unsafe {
        xhat(g, s, x, dx, rows, hidden, eps, false)?;
        column_sums(g, s, dy, dx, dw, rows, hidden)?;
        let args = &mut [Ptr(dy), Ptr(x), Ptr(w), Ptr(dx), I32(rows as i32), I32(hidden as i32), F32(eps)];
        g.launch("rmsnorm_backward_f32", per_row(rows, 1024), s, args)
    }
}

/// LayerNorm backward, as [`rmsnorm_backward`]: `x̂` into `dx`, the column sums
/// `Σ dy x̂` and `Σ dy`, then `dx`.
pub unsafe fn layernorm_backward(g: &Gpu, s: Stream, dy: DevPtr, x: DevPtr, w: DevPtr, dx: DevPtr, dw: DevPtr, db: DevPtr, rows: usize, hidden: usize, eps: f32) -> Result<()> {
    unsafe {
        xhat(g, s, x, dx, rows, hidden, eps, true)?;
        column_sums(g, s, dy, dx, dw, rows, hidden)?;
        column_sums(g, s, dy, 0, db, rows, hidden)?;
        let args = &mut [Ptr(dy), Ptr(x), Ptr(w), Ptr(dx), I32(rows as i32), I32(hidden as i32), F32(eps)];
        g.launch("layernorm_backward_f32", per_row(rows, 1024), s, args)
    }
}
