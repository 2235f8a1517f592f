//! RoPE launches.

use super::strided;
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::Gpu;
use crate::error::Result;

use Arg::{F32, I32, I64, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

pub unsafe fn rope_freqs(g: &Gpu, s: Stream, freqs: DevPtr, rows: usize, head_dim: usize, base: f32, alpha: f32) -> Result<()> {
    let args = &mut [Ptr(freqs), I32(rows as i32), I32(head_dim as i32), F32(base), F32(alpha)];
    unsafe { g.launch("rope_freqs_f32", strided(rows * head_dim / 2), s, args) }
}

/// Rotates `[tokens, heads, head_dim]`; `ntk_alpha` 1 uses the stored angles.
pub unsafe fn rope_rotate(g: &Gpu, s: Stream, x: DevPtr, freqs: DevPtr, y: DevPtr, shape: crate::cpu::rope::RopeShape, tokens: usize, ntk_alpha: f32) -> Result<()> {
    unsafe { rotate("rope_rotate_f32", g, s, x, freqs, y, shape, tokens, ntk_alpha) }
}

/// The rotation back (each pair by minus its angle): RoPE's backward.
pub unsafe fn rope_rotate_back(g: &Gpu, s: Stream, x: DevPtr, freqs: DevPtr, y: DevPtr, shape: crate::cpu::rope::RopeShape, tokens: usize) -> Result<()> {
    unsafe { rotate("rope_rotate_back_f32", g, s, x, freqs, y, shape, tokens, 1.0) }
}

unsafe fn rotate(kernel: &'static str, g: &Gpu, s: Stream, x: DevPtr, freqs: DevPtr, y: DevPtr, shape: crate::cpu::rope::RopeShape, tokens: usize, ntk_alpha: f32) -> Result<()> {
    let pairs = tokens * shape.heads * shape.head_dim / 2;
    let args = &mut [
        Ptr(x), Ptr(freqs), Ptr(y), I64(tokens as i64),
        I32(shape.seq_len as i32), I32(shape.heads as i32), I32(shape.head_dim as i32), I32(shape.offset as i32), F32(ntk_alpha),
    ];
    unsafe { g.launch(kernel, strided(pairs), s, args) }
}
