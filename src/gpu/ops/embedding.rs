//! Embedding launches: the lookup and its backward.

use super::{counting_sort_pass, line, per_item, per_row, zero};
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::scratch::Scratch;
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

/// The ids' positions sorted by id (radix passes of eight bits over the
/// counting sort; ids outside `[0, vocab)` dropped), each row's first sorted
/// position, then a warp per row of `d_table` sums its positions' rows of
/// `dy` in order and writes the row once (zeros where no id names it).
pub unsafe fn embedding_backward(g: &Gpu, s: Stream, ids: DevPtr, dy: DevPtr, d_table: DevPtr, n_ids: usize, vocab: usize, dim: usize) -> Result<()> {
    if n_ids == 0 {
        return unsafe { zero(s, d_table, vocab * dim) };
    }
    let mut scratch = Scratch::new(s);
    // Two orders the passes alternate between (-1 past the placed positions).
    let orders = [scratch.alloc(n_ids * 4)?, scratch.alloc(n_ids * 4)?];
    let bits = usize::BITS - vocab.saturating_sub(1).leading_zeros();
    let passes = bits.div_ceil(8).max(1) as usize;
    for pass in 0..passes {
        let perm = if pass == 0 { 0 } else { orders[(pass - 1) % 2] };
        unsafe { counting_sort_pass(g, s, [ids, perm, orders[pass % 2], 0, 0], n_ids, vocab, 8 * pass as u32, 256)? };
    }
    let order = orders[(passes - 1) % 2];
    let starts = scratch.alloc((vocab + 1) * 4)?;
    unsafe {
        g.launch("embedding_row_starts_i32", per_item(n_ids + 1), s, &mut [Ptr(ids), Ptr(order), Ptr(starts), I32(n_ids as i32), I32(vocab as i32)])?;
        let args = &mut [Ptr(order), Ptr(starts), Ptr(dy), Ptr(d_table), I32(vocab as i32), I32(dim as i32)];
        g.launch("embedding_backward_f32", line(vocab.div_ceil(8).min(65535), 256), s, args)
    }
}
