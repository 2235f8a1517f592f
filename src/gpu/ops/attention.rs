//! Attention launches: scores, output, flash attention, the KV-cache write.

use super::{line, strided};
use crate::gpu::driver::{Arg, DevPtr, Launch, Stream};
use crate::gpu::scratch::Scratch;
use crate::gpu::Gpu;
use crate::error::Result;
use crate::cpu::attention::{Attention, AttnShape};
use crate::cpu::convert::Float;

use Arg::{F32, I32, I64, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

/// Square attention tiles: block (16, 16), each block a 64x64 tile, grid.z over
/// (batch, head) pairs (blocks stride past 65535).
fn attention_tiles(cols: usize, rows: usize, pairs: usize) -> Launch {
    Launch { grid: (cols.div_ceil(64) as u32, rows.div_ceil(64) as u32, pairs.min(65535) as u32), block: (16, 16, 1), shared: 0 }
}

pub unsafe fn attention_scores(g: &Gpu, s: Stream, q: DevPtr, k: DevPtr, scores: DevPtr, a: AttnShape, scale: f32) -> Result<()> {
    let at = attention_tiles(a.seq, a.seq, a.batch * a.heads);
    let args = &mut [Ptr(q), Ptr(k), Ptr(scores), I32(a.batch as i32), I32(a.heads as i32), I32(a.seq as i32), I32(a.head_dim as i32), F32(scale)];
    unsafe { g.launch("attention_scores_f32", at, s, args) }
}

pub unsafe fn attention_output(g: &Gpu, s: Stream, w: DevPtr, v: DevPtr, out: DevPtr, a: AttnShape) -> Result<()> {
    let at = attention_tiles(a.head_dim, a.seq, a.batch * a.heads);
    let args = &mut [Ptr(w), Ptr(v), Ptr(out), I32(a.batch as i32), I32(a.heads as i32), I32(a.seq as i32), I32(a.head_dim as i32)];
    unsafe { g.launch("attention_output_f32", at, s, args) }
}

/// The largest head_dim the flash kernel handles (larger ones run on the CPU).
pub(crate) const FLASH_MAX_HEAD_DIM: usize = 256;

/// Fused attention: 64 threads a block, [`flash_rows`] query rows each; `mask`
/// 0 for none. Head dims 33..=64 that are
/// multiples of 4, on 16-byte aligned Q/K/V/O, take the vectorised d64 kernel.
pub unsafe fn flash_attention(g: &Gpu, s: Stream, q: DevPtr, k: DevPtr, v: DevPtr, out: DevPtr, mask: DevPtr, a: AttnShape, scale: f32, causal: bool) -> Result<()> {
    let rows_per_block = flash_rows(a.head_dim);
    let aligned = [q, k, v, out].iter().all(|p| p % 16 == 0);
    let tf32 = a.head_dim == 64 && aligned && crate::gpu::allow_tf32() && g.has("flash_attention_tf32_d64");
    let kernel = match a.head_dim {
        _ if tf32 => "flash_attention_tf32_d64",
        33..=64 if a.head_dim % 4 == 0 && aligned => "flash_attention_d64_f32",
        _ => "flash_attention_f32",
    };
    // The TF32 kernel: 128 threads and 64 query rows a block; its blocks stride.
    let at = if tf32 { line((a.seq.div_ceil(64) * a.heads * a.batch).min(1 << 20), 128) } else { line(a.seq.div_ceil(rows_per_block) * a.heads * a.batch, 64) };
    let args = &mut [
        Ptr(q), Ptr(k), Ptr(v), Ptr(out),
        I32(a.batch as i32), I32(a.seq as i32), I32(a.heads as i32), I32(a.kv_heads as i32), I32(a.head_dim as i32),
        F32(scale), I32(causal as i32), Ptr(mask),
    ];
    unsafe { g.launch(kernel, at, s, args) }
}

/// `k_new`, `v_new` `[batch, new_len, row]` into rows `pos ..` of the caches
/// `[batch, max_seq, row]`, one launch for both; elements of type `t`, copied
/// as they are.
pub unsafe fn kv_cache_write(g: &Gpu, s: Stream, t: Float, k_new: DevPtr, v_new: DevPtr, k_cache: DevPtr, v_cache: DevPtr, batch: usize, new_len: usize, max_seq: usize, row: usize, pos: usize) -> Result<()> {
    let args = &mut [
        Ptr(k_new), Ptr(v_new), Ptr(k_cache), Ptr(v_cache),
        I32(batch as i32), I32(new_len as i32), I32(max_seq as i32), I64(row as i64), I32(pos as i32),
    ];
    let kernel = if t == Float::F32 { "kv_cache_write_f32" } else { "kv_cache_write_h16" };
    unsafe { g.launch(kernel, strided(batch * new_len * row), s, args) }
}

/// Query rows a flash block takes for `head_dim` (the kernels' tile configurations).
fn flash_rows(head_dim: usize) -> usize {
    match head_dim {
        0..=64 => 64,
        65..=128 => 32,
        _ => 16,
    }
}

/// General attention forward (`cudann_attention_forward`, float32): `mask` and
/// `lse` 0 for none; head_dim <= [`FLASH_MAX_HEAD_DIM`].
pub unsafe fn attention_forward(g: &Gpu, s: Stream, [q, k, v, out, mask, lse]: [DevPtr; 6], a: &Attention) -> Result<()> {
    if let Some(rows) = decode_rows(a, [q, k, v, out]) {
        return unsafe { attention_decode(g, s, [q, k, v, out, mask, lse], a, rows) };
    }
    let at = line((a.q_len.div_ceil(flash_rows(a.head_dim)) * a.heads * a.batch).min(1 << 20), 64);
    let aligned = [q, k, v].iter().all(|p| p % 16 == 0);
    let kernel = if (33..=64).contains(&a.head_dim) && a.head_dim % 4 == 0 && aligned { "attention_forward_d64_f32" } else { "attention_forward_f32" };
    let args = &mut [
        Ptr(q), Ptr(k), Ptr(v), Ptr(out), Ptr(mask), Ptr(lse),
        I32(a.batch as i32), I32(a.q_len as i32), I32(a.kv_len as i32), I32(a.kv_capacity as i32),
        I32(a.heads as i32), I32(a.kv_heads as i32), I32(a.head_dim as i32), I32(a.pos0 as i32), I32(a.causal as i32), F32(a.scale),
    ];
    unsafe { g.launch(kernel, at, s, args) }
}

/// The most query rows (q_len x heads per KV head) the decode kernels take.
const DECODE_MAX_ROWS: usize = 8;
/// Blocks the decode kernels aim for: about two per SM of a current GPU (as
/// many as are resident at once), each streaming a long split; a function of
/// the shape alone, so results do not depend on the device.
const DECODE_BLOCKS: usize = 256;
/// Keys a decode block takes at least (two tiles, so that the second tile's
/// loads overlap the work on the first) and at most (past that, more blocks
/// fill the GPU better).
const DECODE_SPLIT: std::ops::RangeInclusive<usize> = 64..=1024;
/// The one-pass combine takes the partials of up to this many splits (one a
/// lane: the other combine's very bits)...
const DECODE_ONE_PASS_SPLITS: usize = 32;
/// ...of up to this many query rows. On an H100 it is faster from 4 to 32
/// splits of 4 to 128 rows (1x4096: 2.8 us a call against 3.3; 2x4096, 16
/// splits: 0.7 us less) and slower for 8 splits of 512 rows or 4 of 2048.
const DECODE_ONE_PASS_ROWS: usize = 128;
/// Threads of a decode block (DC_THREADS in attention.cu).
const DECODE_THREADS: u32 = 256;

/// The decode kernels by head-dim class (d <= 64, d <= 128, d <= 256) and row
/// class (1, 2, 4, 8). A class's tile holds 16 KB of keys: 64 of them at
/// d <= 64, so narrow heads read whole tiles (at d 64 the d <= 128 kernels
/// moved half the bytes a tile for the same work: 38% of the copy bandwidth).
const DECODE_KERNELS: [[&str; 4]; 3] = [
    ["attention_decode_r1_d64_f32", "attention_decode_r2_d64_f32", "attention_decode_r4_d64_f32", "attention_decode_r8_d64_f32"],
    ["attention_decode_r1_d128_f32", "attention_decode_r2_d128_f32", "attention_decode_r4_d128_f32", "attention_decode_r8_d128_f32"],
    ["attention_decode_r1_d256_f32", "attention_decode_r2_d256_f32", "attention_decode_r4_d256_f32", "attention_decode_r8_d256_f32"],
];
/// Their cp.async forms (attention_sm80.cu, same bits), taken where loaded:
/// the next tile waits in shared memory, not registers (1x4096 on an H100:
/// 76.6% -> 86.3% of the copy bandwidth).
const DECODE_ASYNC_KERNELS: [[&str; 4]; 3] = [
    ["attention_decode_async_r1_d64_f32", "attention_decode_async_r2_d64_f32", "attention_decode_async_r4_d64_f32", "attention_decode_async_r8_d64_f32"],
    ["attention_decode_async_r1_d128_f32", "attention_decode_async_r2_d128_f32", "attention_decode_async_r4_d128_f32", "attention_decode_async_r8_d128_f32"],
    ["attention_decode_async_r1_d256_f32", "attention_decode_async_r2_d256_f32", "attention_decode_async_r4_d256_f32", "attention_decode_async_r8_d256_f32"],
];
/// Dynamic shared memory of the cp.async forms (DC_ASYNC_SHARED).
const DECODE_ASYNC_SHARED: u32 = 76 * 1024;

/// The decode kernels' row class (1, 2, 4 or 8) when they apply: few query
/// rows per KV head, `head_dim % 4 == 0`, 16-byte aligned tensors.
fn decode_rows(a: &Attention, ptrs: [DevPtr; 4]) -> Option<usize> {
    let rows = a.q_len * (a.heads / a.kv_heads);
    let fits = rows <= DECODE_MAX_ROWS && a.head_dim % 4 == 0 && ptrs.iter().all(|p| p % 16 == 0);
    fits.then(|| rows.next_power_of_two())
}

/// Split-KV decode attention: `batch * kv_heads * splits` blocks, each over
/// `split_len` keys for all query rows of a KV head; with more than one split
/// the partials go to scratch and a second launch combines them in order.
unsafe fn attention_decode(g: &Gpu, s: Stream, [q, k, v, out, mask, lse]: [DevPtr; 6], a: &Attention, rows: usize) -> Result<()> {
    let kv_end = if a.causal { a.kv_len.min(a.pos0 + a.q_len) } else { a.kv_len };
    let kv_rows = a.batch * a.kv_heads; // (sequence, KV head) pairs
    let want = DECODE_BLOCKS.div_ceil(kv_rows);
    let split_len = kv_end.div_ceil(want).next_multiple_of(32).clamp(*DECODE_SPLIT.start(), *DECODE_SPLIT.end());
    let splits = kv_end.div_ceil(split_len).max(1);
    let mut scratch = Scratch::new(s);
    let part = if splits > 1 { scratch.alloc(kv_rows * splits * rows * (a.head_dim / 4 + 1) * 16)? } else { 0 };
    let (class, row_class) = (usize::from(a.head_dim > 64) + usize::from(a.head_dim > 128), rows.trailing_zeros() as usize);
    let async_kernel = DECODE_ASYNC_KERNELS[class][row_class];
    let (kernel, shared) =
        if g.has(async_kernel) { (async_kernel, DECODE_ASYNC_SHARED) } else { (DECODE_KERNELS[class][row_class], 0) };
    let args = &mut [
        Ptr(q), Ptr(k), Ptr(v), Ptr(out), Ptr(mask), Ptr(lse),
        I32(a.batch as i32), I32(a.q_len as i32), I32(a.kv_len as i32), I32(a.kv_capacity as i32),
        I32(a.heads as i32), I32(a.kv_heads as i32), I32(a.head_dim as i32), I32(a.pos0 as i32), I32(a.causal as i32), F32(a.scale),
        I32(splits as i32), I32(split_len as i32), Ptr(part),
    ];
    unsafe { g.launch(kernel, Launch { shared, ..line((kv_rows * splits).min(1 << 20), DECODE_THREADS) }, s, args)? };
    if splits > 1 {
        let args = &mut [
            Ptr(part), Ptr(out), Ptr(lse), I32(a.batch as i32), I32(a.q_len as i32), I32(a.heads as i32), I32(a.kv_heads as i32),
            I32(a.head_dim as i32), I32(splits as i32), I32(rows as i32),
        ];
        let query_rows = kv_rows * a.q_len * (a.heads / a.kv_heads);
        let one_pass = splits <= DECODE_ONE_PASS_SPLITS && query_rows <= DECODE_ONE_PASS_ROWS;
        let combine = if one_pass { "attention_decode_combine_many_f32" } else { "attention_decode_combine_f32" };
        unsafe { g.launch(combine, line(query_rows.min(65535), 256), s, args)? };
    }
    Ok(())
}

/// Keys and queries a tile of the fused backward (FB_T in attention.cu).
const FUSED_TILE: usize = 64;

/// General attention backward (`cudann_attention_backward`, float32). Head
/// dims up to 128 that are multiples of 4, on 16-byte aligned tensors, take the
/// fused kernel where the GPU has the shared memory it needs (see
/// [`attention_backward_fused`]; with CUDANN_ALLOW_TF32=1, up to 64 on tensor
/// cores); the rest one launch for dK and dV over key
/// tiles and one for dQ over query tiles, of the kernel for the head-dim class
/// (tile of 32 rows up to 64, 2048 / class above).
pub unsafe fn attention_backward(g: &Gpu, s: Stream, ptrs: [DevPtr; 10], a: &Attention) -> Result<()> {
    let [dy, q, k, v, mask, o, lse, dq, dk, dv] = ptrs;
    let aligned = [dy, q, k, v, o, dq, dk, dv].iter().all(|p| p % 16 == 0);
    // The fused form needs a query and a key: it writes dQ from key tiles.
    let work = a.batch * a.heads * a.q_len * a.kv_len * a.head_dim > 0;
    let fused = fused_backward_kernel(g, a.head_dim).filter(|&(_, shared)| shared <= g.shared_optin);
    if let (Some(kernel), true, true) = (fused, aligned, work) {
        return unsafe { attention_backward_fused(g, s, ptrs, a, kernel) };
    }
    let (kernel, class) = match a.head_dim {
        0..=32 => ("attention_backward_d32_f32", 32),
        33..=64 => ("attention_backward_d64_f32", 64),
        65..=128 => ("attention_backward_d128_f32", 128),
        _ => ("attention_backward_d256_f32", 256),
    };
    let tile = if class <= 64 { 32 } else { 2048 / class };
    for (want_dq, blocks) in [(0, a.batch * a.kv_heads * a.kv_len.div_ceil(tile)), (1, a.batch * a.heads * a.q_len.div_ceil(tile))] {
        let args = &mut [
            Ptr(dy), Ptr(q), Ptr(k), Ptr(v), Ptr(mask), Ptr(o), Ptr(lse), Ptr(dq), Ptr(dk), Ptr(dv),
            I32(a.batch as i32), I32(a.q_len as i32), I32(a.kv_len as i32), I32(a.heads as i32), I32(a.kv_heads as i32),
            I32(a.head_dim as i32), I32(a.pos0 as i32), I32(a.causal as i32), F32(a.scale), I32(want_dq),
        ];
        unsafe { g.launch(kernel, line(blocks.min(1 << 20), 256), s, args)? };
    }
    Ok(())
}

/// The fused backward: Dr = rowsum(dO o O) into scratch, then one block per
/// (sequence, KV head, tile of 64 keys), exactly that many (they wait on each
/// other in launch order), summing dQ across key tiles through zeroed
/// counters, one per (sequence, head, query tile).
unsafe fn attention_backward_fused(
    g: &Gpu, s: Stream, [dy, q, k, v, mask, o, lse, dq, dk, dv]: [DevPtr; 10], a: &Attention, (kernel, shared): (&'static str, usize),
) -> Result<()> {
    let rows = a.batch * a.q_len * a.heads;
    let counters = a.batch * a.heads * a.q_len.div_ceil(FUSED_TILE);
    let mut scratch = Scratch::new(s);
    let dr = scratch.alloc(rows * 4)?;
    let sem = scratch.alloc_filled(counters, 0)?;
    let args = &mut [Ptr(dy), Ptr(o), Ptr(dr), I64(rows as i64), I32(a.head_dim as i32)];
    unsafe { g.launch("attention_backward_dr_f32", line(rows.div_ceil(8).min(65535), 256), s, args)? };
    let blocks = a.batch * a.kv_heads * a.kv_len.div_ceil(FUSED_TILE);
    let args = &mut [
        Ptr(dy), Ptr(q), Ptr(k), Ptr(v), Ptr(mask), Ptr(lse), Ptr(dr), Ptr(dq), Ptr(dk), Ptr(dv), Ptr(sem),
        I32(a.batch as i32), I32(a.q_len as i32), I32(a.kv_len as i32), I32(a.heads as i32), I32(a.kv_heads as i32),
        I32(a.head_dim as i32), I32(a.pos0 as i32), I32(a.causal as i32), F32(a.scale),
    ];
    unsafe { g.launch(kernel, Launch { shared: shared as u32, ..line(blocks, 256) }, s, args) }
}

/// The fused backward on TF32 tensor cores (attention_tf32.cu, sm_80 and
/// later), for head dims up to 64 where CUDANN_ALLOW_TF32=1 allows it.
const TF32_BACKWARD: &str = "attention_backward_fused_tf32_d64";

/// The fused backward kernel for `head_dim` (a multiple of 4 up to 128) and
/// the shared memory it takes, in bytes.
fn fused_backward_kernel(g: &Gpu, head_dim: usize) -> Option<(&'static str, usize)> {
    let tf32 = crate::gpu::allow_tf32() && g.has(TF32_BACKWARD);
    let (kernel, class) = match head_dim {
        _ if head_dim % 4 != 0 => return None,
        // Shared floats: K, V, Q, dO tiles [64][68], K and dS^T [64][72], lse and Dr.
        0..=64 if tf32 => return Some((TF32_BACKWARD, (4 * FUSED_TILE * 68 + 2 * FUSED_TILE * 72 + 2 * FUSED_TILE) * 4)),
        0..=32 => ("attention_backward_fused_d32_f32", 32),
        33..=64 => ("attention_backward_fused_d64_f32", 64),
        65..=128 => ("attention_backward_fused_d128_f32", 128),
        _ => return None,
    };
    // Shared floats: K, V, Q, dO tiles [64][class + 4], Pt and dSt [64][68], lse and Dr.
    let floats = 4 * FUSED_TILE * (class + 4) + 2 * FUSED_TILE * (FUSED_TILE + 4) + 2 * FUSED_TILE;
    Some((kernel, floats * 4))
}
