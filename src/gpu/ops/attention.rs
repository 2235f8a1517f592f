//! Attention launches: scores, output, flash attention, the KV-cache write.

use super::{line, strided};
use crate::gpu::driver::{Arg, DevPtr, Launch, Stream};
use crate::gpu::Gpu;
use crate::error::Result;
use crate::cpu::attention::AttnShape;

use Arg::{F32, I32, I64, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

/// Square attention tiles: block (16, 16), each block a 64x64 tile, grid.z over
/// (batch, head) pairs (blocks stride past 65535).
fn attention_tiles(cols: usize, rows: usize, pairs: usize) -> Launch {
    Launch { grid: (cols.div_ceil(64) as u32, rows.div_ceil(64) as u32, pairs.min(65535) as u32), block: (16, 16, 1) }
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

/// Fused attention: 64 threads a block, BR query rows each (64 for head_dim <= 64,
/// 32 up to 128, 16 up to 256); `mask` 0 for none. Head dims 33..=64 that are
/// multiples of 4, on 16-byte aligned Q/K/V/O, take the vectorised d64 kernel.
pub unsafe fn flash_attention(g: &Gpu, s: Stream, q: DevPtr, k: DevPtr, v: DevPtr, out: DevPtr, mask: DevPtr, a: AttnShape, scale: f32, causal: bool) -> Result<()> {
    let rows_per_block = match a.head_dim {
        0..=64 => 64,
        65..=128 => 32,
        _ => 16,
    };
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
/// `[batch, max_seq, row]`, one launch for both.
pub unsafe fn kv_cache_write(g: &Gpu, s: Stream, k_new: DevPtr, v_new: DevPtr, k_cache: DevPtr, v_cache: DevPtr, batch: usize, new_len: usize, max_seq: usize, row: usize, pos: usize) -> Result<()> {
    let args = &mut [
        Ptr(k_new), Ptr(v_new), Ptr(k_cache), Ptr(v_cache),
        I32(batch as i32), I32(new_len as i32), I32(max_seq as i32), I64(row as i64), I32(pos as i32),
    ];
    unsafe { g.launch("kv_cache_write_f32", strided(batch * new_len * row), s, args) }
}
