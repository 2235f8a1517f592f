//! Mixture-of-experts launches: router and aux-loss backwards, dispatch,
//! combine and their backwards.

use super::{counting_sort_pass, line, strided};
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::scratch::Scratch;
use crate::gpu::Gpu;
use crate::error::Result;

use Arg::{I32, I64, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

/// A warp per row, 8 rows per block (warps stride past 65535 blocks).
fn warp_rows(rows: usize) -> crate::gpu::driver::Launch {
    line(rows.div_ceil(8).min(65535), 256)
}

/// 16 lanes per token, 16 tokens per block.
pub unsafe fn moe_router_backward(g: &Gpu, s: Stream, w: DevPtr, idx: DevPtr, dw: DevPtr, d: DevPtr, tokens: usize, experts: usize, k: usize) -> Result<()> {
    let args = &mut [Ptr(w), Ptr(idx), Ptr(dw), Ptr(d), I32(tokens as i32), I32(experts as i32), I32(k as i32)];
    unsafe { g.launch("moe_router_backward_f32", line(tokens.div_ceil(16).min(65535), 256), s, args) }
}

/// `factor` (computed in f64, as the CPU backend) travels as its bits.
pub unsafe fn aux_loss_backward(g: &Gpu, s: Stream, f: DevPtr, d: DevPtr, tokens: usize, experts: usize, factor: f64) -> Result<()> {
    let args = &mut [Ptr(f), Ptr(d), I32(tokens as i32), I32(experts as i32), I64(factor.to_bits() as i64)];
    unsafe { g.launch("aux_loss_backward_f32", strided(tokens * experts), s, args) }
}

/// The row each pair went to (the inverse of `order`; -1: none), in scratch
/// that lives as long as `scratch`.
unsafe fn rows_of_pairs(g: &Gpu, s: Stream, scratch: &mut Scratch, order: DevPtr, pairs: usize) -> Result<DevPtr> {
    let inv = scratch.alloc_filled(pairs, u32::MAX)?;
    unsafe { g.launch("moe_rows_of_pairs_i32", strided(pairs), s, &mut [Ptr(order), Ptr(inv), I32(pairs as i32)])? };
    Ok(inv)
}

/// The stable grouping by expert (one pass of the counting sort, which also
/// gives each pair's row), then a warp per token copies its row to its pairs'
/// rows: x is read once.
pub unsafe fn moe_dispatch(g: &Gpu, s: Stream, x: DevPtr, idx: DevPtr, y: DevPtr, order: DevPtr, offsets: DevPtr, pairs: usize, dim: usize, experts: usize, k: usize) -> Result<()> {
    let tokens = pairs / k;
    let mut scratch = Scratch::new(s);
    unsafe {
        let inv = scratch.alloc(pairs * std::mem::size_of::<i32>())?;
        counting_sort_pass(g, s, [idx, order, 0, offsets, inv], pairs, experts, 0, experts)?;
        let args = &mut [Ptr(x), Ptr(inv), Ptr(offsets), Ptr(y), I32(tokens as i32), I32(dim as i32), I32(k as i32), I32(experts as i32)];
        g.launch("moe_scatter_f32", warp_rows(tokens), s, args)
    }
}

/// `dst[t] = Σ_j w[t, j] src[row of (t, j)]` (`w` 0: without weights), the
/// sums in `j` order: a warp per token reads its `k` rows once.
unsafe fn gather_sum(g: &Gpu, s: Stream, src: DevPtr, w: DevPtr, order: DevPtr, dst: DevPtr, tokens: usize, dim: usize, k: usize) -> Result<()> {
    let pairs = tokens * k;
    if pairs == 0 {
        return Ok(());
    }
    let mut scratch = Scratch::new(s);
    unsafe {
        let inv = rows_of_pairs(g, s, &mut scratch, order, pairs)?;
        let args = &mut [Ptr(src), Ptr(w), Ptr(inv), Ptr(dst), I32(tokens as i32), I32(dim as i32), I32(k as i32)];
        g.launch("moe_gather_sum_f32", warp_rows(tokens), s, args)
    }
}

pub unsafe fn moe_dispatch_backward(g: &Gpu, s: Stream, dy: DevPtr, order: DevPtr, dx: DevPtr, tokens: usize, dim: usize, k: usize) -> Result<()> {
    unsafe { gather_sum(g, s, dy, 0, order, dx, tokens, dim, k) }
}

pub unsafe fn moe_combine(g: &Gpu, s: Stream, e: DevPtr, w: DevPtr, order: DevPtr, y: DevPtr, tokens: usize, dim: usize, k: usize) -> Result<()> {
    unsafe { gather_sum(g, s, e, w, order, y, tokens, dim, k) }
}

/// A warp per token: its `d_output` row is read once for all its pairs.
pub unsafe fn moe_combine_backward(g: &Gpu, s: Stream, dy: DevPtr, e: DevPtr, w: DevPtr, order: DevPtr, de: DevPtr, dw: DevPtr, pairs: usize, dim: usize, k: usize) -> Result<()> {
    if pairs == 0 {
        return Ok(());
    }
    let tokens = pairs / k;
    let mut scratch = Scratch::new(s);
    unsafe {
        let inv = rows_of_pairs(g, s, &mut scratch, order, pairs)?;
        let args = &mut [Ptr(dy), Ptr(e), Ptr(w), Ptr(inv), Ptr(de), Ptr(dw), I32(tokens as i32), I32(dim as i32), I32(k as i32)];
        g.launch("moe_combine_backward_f32", warp_rows(tokens), s, args)
    }
}
