//! Softmax launches.

use super::per_row;
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::Gpu;
use crate::error::Result;

use Arg::{I32, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

pub unsafe fn softmax(g: &Gpu, s: Stream, x: DevPtr, y: DevPtr, rows: usize, cols: usize) -> Result<()> {
    unsafe { g.launch("softmax_f32", per_row(rows, 1024), s, &mut [Ptr(x), Ptr(y), I32(rows as i32), I32(cols as i32)]) }
}

pub unsafe fn softmax_topk(g: &Gpu, s: Stream, x: DevPtr, w: DevPtr, idx: DevPtr, rows: usize, cols: usize, k: usize) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(w), Ptr(idx), I32(rows as i32), I32(cols as i32), I32(k as i32)];
    unsafe { g.launch("softmax_topk_f32", per_row(rows, 32), s, args) }
}

/// `dx = y (dy - Σ dy y)` row by row.
pub unsafe fn softmax_backward(g: &Gpu, s: Stream, dy: DevPtr, y: DevPtr, dx: DevPtr, rows: usize, cols: usize) -> Result<()> {
    let args = &mut [Ptr(dy), Ptr(y), Ptr(dx), I32(rows as i32), I32(cols as i32)];
    unsafe { g.launch("softmax_backward_f32", per_row(rows, 1024), s, args) }
}
