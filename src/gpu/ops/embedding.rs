//! Embedding launches: the lookup and its backward.

use super::{counting_sort_pass, line, per_row, zero};
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

/// The ids' positions grouped by the id's high bits (one pass of the counting
/// sort; ids outside `[0, vocab)` dropped) into buckets of at most 2048 rows,
/// at most 256 buckets up to 2^19 rows, the sorted ids written beside their
/// positions; then each block takes a slice of a
/// bucket's rows, and a warp per row sums its positions' rows of `dy` in
/// order and writes the row once (zeros where no id names it).
pub unsafe fn embedding_backward(g: &Gpu, s: Stream, ids: DevPtr, dy: DevPtr, d_table: DevPtr, n_ids: usize, vocab: usize, dim: usize) -> Result<()> {
    if n_ids == 0 {
        return unsafe { zero(s, d_table, vocab * dim) };
    }
    let bits = usize::BITS - vocab.saturating_sub(1).leading_zeros();
    let shift = bits.saturating_sub(8).min(11);
    let buckets = ((vocab - 1) >> shift) + 1;
    // A block's rows: 16 to 256 (2 to 32 a warp), each bucket read by at most
    // 8 blocks (a bucket's positions are read once per block).
    let per_bucket = 1usize << shift;
    let rows = (per_bucket / 8).clamp(16, 256).min(per_bucket);
    let parts = per_bucket / rows;
    let mut scratch = Scratch::new(s);
    let order = scratch.alloc(n_ids * 4)?;
    let sorted_ids = scratch.alloc(n_ids * 4)?;
    let offsets = scratch.alloc((buckets + 1) * 4)?;
    unsafe {
        counting_sort_pass(g, s, [ids, order, sorted_ids, offsets, 0], n_ids, vocab, shift, buckets)?;
        let args = &mut [Ptr(sorted_ids), Ptr(order), Ptr(offsets), Ptr(dy), Ptr(d_table), I32(vocab as i32), I32(dim as i32), I32(shift as i32), I32(buckets as i32), I32(parts as i32)];
        g.launch("embedding_backward_f32", line((buckets * parts).min(65535), 256), s, args)
    }
}
