//! Embedding launches: the lookup and its backward.

use super::{per_row, zero};
use crate::gpu::driver::{Arg, DevPtr, Launch, Stream};
use crate::gpu::Gpu;
use crate::cpu::convert::Float;
use crate::error::Result;

use Arg::{I32, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

/// A block per id (blocks stride past 65535); rows of type `t` copied as they
/// are (an id >= vocab: a row of the type's quiet NaN).
pub unsafe fn embedding(g: &Gpu, s: Stream, t: Float, ids: DevPtr, table: DevPtr, out: DevPtr, n_ids: usize, vocab: usize, dim: usize) -> Result<()> {
    let at = per_row(n_ids.min(65535), 256);
    let args = [Ptr(ids), Ptr(table), Ptr(out), I32(n_ids as i32), I32(vocab as i32), I32(dim as i32)];
    let nan = match t {
        Float::F32 => return unsafe { g.launch("embedding_f32", at, s, &mut { args }) },
        Float::F16 => 0x7e00,
        Float::Bf16 => 0x7fc0,
    };
    let [a, b, c, d, e, f] = args;
    unsafe { g.launch("embedding_h16", at, s, &mut [a, b, c, d, e, f, I32(nan)]) }
}

/// Zeroes the table's gradient, then adds the rows in id order.
pub unsafe fn embedding_backward(g: &Gpu, s: Stream, ids: DevPtr, dy: DevPtr, d_table: DevPtr, n_ids: usize, vocab: usize, dim: usize) -> Result<()> {
    // grid.y splits the destination rows (row % 32), as cuda_scatter_add.
    let at = Launch { grid: (dim.div_ceil(256) as u32, 32, 1), block: (256, 1, 1), shared: 0 };
    unsafe {
        zero(s, d_table, vocab * dim)?;
        g.launch("embedding_backward_f32", at, s, &mut [Ptr(ids), Ptr(dy), Ptr(d_table), I32(n_ids as i32), I32(vocab as i32), I32(dim as i32)])
    }
}
