//! One launch sequence per op, on device pointers, enqueued on the caller's
//! stream. Launch geometry follows the contract in kernels/README.md.

use super::driver::{Arg, DevPtr, Launch, Stream};
use crate::cpu::attention::AttnShape;
use crate::cpu::decode::Sampler;
use crate::cpu::rng::TILE;

/// Threads per row of the sampling kernels (kernels/README.md).
const SAMPLE_BLOCK: u32 = 1024;
/// Blocks per row of the cluster kernels (SAMPLE_CLUSTER in sample_cluster.cu).
const SAMPLE_CLUSTER: usize = 4;
use super::{Gpu, blas};
use crate::error::Result;

use Arg::{F32, I32, I64, Ptr};

/// A 1-D launch.
fn line(grid: usize, block: u32) -> Launch {
    Launch { grid: (grid.clamp(1, u32::MAX as usize) as u32, 1, 1), block: (block, 1, 1) }
}

/// Grid-stride kernels: 256 threads, about 4 elements per thread, capped grid.
fn strided(n: usize) -> Launch {
    line(n.div_ceil(1024).min(65535), 256)
}

/// One block per row.
fn per_row(rows: usize, block: u32) -> Launch {
    line(rows, block)
}

fn single(block: u32) -> Launch {
    line(1, block)
}

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

pub unsafe fn silu(g: &Gpu, s: Stream, x: DevPtr, y: DevPtr, n: usize) -> Result<()> {
    unsafe { g.launch("silu_f32", strided(n), s, &mut [Ptr(x), Ptr(y), I64(n as i64)]) }
}

pub unsafe fn add(g: &Gpu, s: Stream, a: DevPtr, b: DevPtr, y: DevPtr, n: usize) -> Result<()> {
    unsafe { g.launch("add_f32", strided(n), s, &mut [Ptr(a), Ptr(b), Ptr(y), I64(n as i64)]) }
}

pub unsafe fn mul(g: &Gpu, s: Stream, a: DevPtr, b: DevPtr, y: DevPtr, n: usize) -> Result<()> {
    unsafe { g.launch("mul_f32", strided(n), s, &mut [Ptr(a), Ptr(b), Ptr(y), I64(n as i64)]) }
}

pub unsafe fn scale(g: &Gpu, s: Stream, x: DevPtr, y: DevPtr, factor: f32, n: usize) -> Result<()> {
    unsafe { g.launch("scale_f32", strided(n), s, &mut [Ptr(x), Ptr(y), F32(factor), I64(n as i64)]) }
}

pub unsafe fn softmax(g: &Gpu, s: Stream, x: DevPtr, y: DevPtr, rows: usize, cols: usize) -> Result<()> {
    unsafe { g.launch("softmax_f32", per_row(rows, 1024), s, &mut [Ptr(x), Ptr(y), I32(rows as i32), I32(cols as i32)]) }
}

pub unsafe fn softmax_topk(g: &Gpu, s: Stream, x: DevPtr, w: DevPtr, idx: DevPtr, rows: usize, cols: usize, k: usize) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(w), Ptr(idx), I32(rows as i32), I32(cols as i32), I32(k as i32)];
    unsafe { g.launch("softmax_topk_f32", per_row(rows, 32), s, args) }
}

pub unsafe fn rmsnorm(g: &Gpu, s: Stream, x: DevPtr, w: DevPtr, y: DevPtr, rows: usize, hidden: usize, eps: f32) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(w), Ptr(y), I32(rows as i32), I32(hidden as i32), F32(eps)];
    // 512 threads: measured ~8% faster than 1024 on 4096-wide rows.
    unsafe { g.launch("rmsnorm_f32", per_row(rows, 512), s, args) }
}

pub unsafe fn rmsnorm_residual(g: &Gpu, s: Stream, x: DevPtr, r: DevPtr, w: DevPtr, y: DevPtr, sum: DevPtr, rows: usize, hidden: usize, eps: f32) -> Result<()> {
    let args = &mut [Ptr(x), Ptr(r), Ptr(w), Ptr(y), Ptr(sum), I32(rows as i32), I32(hidden as i32), F32(eps)];
    unsafe { g.launch("rmsnorm_residual_f32", per_row(rows, 1024), s, args) }
}

pub unsafe fn sgemm(g: &Gpu, s: Stream, a: DevPtr, b: DevPtr, c: DevPtr, batch: usize, m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> Result<()> {
    if k == 0 || alpha == 0.0 {
        // No product term (cuBLAS rejects K = 0): C = beta C, never read when beta == 0.
        let len = batch * m * n;
        return if beta == 0.0 { unsafe { zero(s, c, len) } } else { unsafe { scale(g, s, c, c, beta, len) } };
    }
    if blas::available() {
        return unsafe { blas::sgemm(a, b, c, batch, m, n, k, alpha, beta, s) };
    }
    // The fallback kernel: 64x64 tiles, batch in grid.z (at most 65535 per launch).
    let (sa, sb, sc) = (m * k, k * n, m * n);
    for first in (0..batch).step_by(65535) {
        let count = (batch - first).min(65535);
        let at = Launch { grid: (n.div_ceil(64) as u32, m.div_ceil(64).min(65535) as u32, count as u32), block: (16, 16, 1) };
        let (a, b, c) = (a + (first * sa * 4) as DevPtr, b + (first * sb * 4) as DevPtr, c + (first * sc * 4) as DevPtr);
        let args = &mut [Ptr(a), Ptr(b), Ptr(c), I32(m as i32), I32(n as i32), I32(k as i32), F32(alpha), F32(beta), I64(sa as i64), I64(sb as i64), I64(sc as i64)];
        unsafe { g.launch("sgemm_tiled_f32", at, s, args)? };
    }
    Ok(())
}

/// log_probs row-wise, then the mean NLL from log_probs[r, target[r]].
pub unsafe fn cross_entropy_forward(g: &Gpu, s: Stream, x: DevPtr, t: DevPtr, loss: DevPtr, lp: DevPtr, rows: usize, vocab: usize) -> Result<()> {
    let (r, v) = (I32(rows as i32), I32(vocab as i32));
    unsafe {
        g.launch("log_softmax_f32", per_row(rows, 1024), s, &mut [Ptr(x), Ptr(lp), r, v])?;
        g.launch("nll_mean_f32", single(1024), s, &mut [Ptr(lp), Ptr(t), Ptr(loss), r, v])
    }
}

pub unsafe fn cross_entropy_backward(g: &Gpu, s: Stream, lp: DevPtr, t: DevPtr, d: DevPtr, rows: usize, vocab: usize, factor: f32) -> Result<()> {
    let args = &mut [Ptr(lp), Ptr(t), Ptr(d), I32(rows as i32), I32(vocab as i32), F32(factor)];
    unsafe { g.launch("ce_backward_f32", strided(rows * vocab), s, args) }
}

pub unsafe fn aux_loss(g: &Gpu, s: Stream, probs: DevPtr, experts: DevPtr, aux: DevPtr, f: DevPtr, p: DevPtr, rows: usize, n_experts: usize, top_k: usize, alpha: f32) -> Result<()> {
    let e = I32(n_experts as i32);
    unsafe {
        let counts = &mut [Ptr(probs), Ptr(experts), Ptr(f), Ptr(p), I32(rows as i32), e, I32(top_k as i32)];
        g.launch("aux_counts_f32", line(n_experts, 256), s, counts)?;
        g.launch("aux_loss_f32", single(256), s, &mut [Ptr(f), Ptr(p), Ptr(aux), e, F32(alpha)])
    }
}

/// One AdamW step; bias corrections are folded into two factors on the host.
pub unsafe fn adamw(g: &Gpu, s: Stream, p: DevPtr, grad: DevPtr, m: DevPtr, v: DevPtr, h: crate::cpu::optim::AdamW, n: usize) -> Result<()> {
    let (inv_bc1, inv_bc2) = h.inverse_bias_corrections();
    let args = &mut [
        Ptr(p), Ptr(grad), Ptr(m), Ptr(v),
        F32(h.lr), F32(h.beta1), F32(h.beta2), F32(h.eps), F32(h.weight_decay), F32(inv_bc1), F32(inv_bc2), I64(n as i64),
    ];
    unsafe { g.launch("adamw_f32", strided(n), s, args) }
}

pub unsafe fn zero(s: Stream, x: DevPtr, n: usize) -> Result<()> {
    use cudarc::driver::sys;
    super::driver::check(unsafe { sys::cuMemsetD32Async(x, 0, n, s) }, "cuMemsetD32Async")
}

/// ‖g‖ into total (via per-256 partial sums in the caller's scratch), then the
/// scaling decided on the device.
pub unsafe fn grad_clip(g: &Gpu, s: Stream, grad: DevPtr, partial: DevPtr, total: DevPtr, clip: f32, n: usize) -> Result<()> {
    let parts = n.div_ceil(256);
    unsafe {
        // A warp per 256-element part, eight parts per block.
        g.launch("sumsq_partial_f32", line(parts.div_ceil(8).min(65535), 256), s, &mut [Ptr(grad), Ptr(partial), I64(n as i64)])?;
        g.launch("norm_total_f32", single(1024), s, &mut [Ptr(partial), Ptr(total), I64(parts as i64)])?;
        g.launch("clip_scale_f32", strided(n), s, &mut [Ptr(grad), Ptr(total), F32(clip), I64(n as i64)])
    }
}

pub unsafe fn scatter_add(g: &Gpu, s: Stream, go: DevPtr, idx: DevPtr, gw: DevPtr, num: usize, dim: usize) -> Result<()> {
    // grid.y splits the destination rows (row % 32): more parallelism, same order per row.
    let at = Launch { grid: (dim.div_ceil(256) as u32, 32, 1), block: (256, 1, 1) };
    unsafe { g.launch("scatter_add_f32", at, s, &mut [Ptr(go), Ptr(idx), Ptr(gw), I32(num as i32), I32(dim as i32)]) }
}

pub unsafe fn rope_freqs(g: &Gpu, s: Stream, freqs: DevPtr, rows: usize, head_dim: usize, base: f32, alpha: f32) -> Result<()> {
    let args = &mut [Ptr(freqs), I32(rows as i32), I32(head_dim as i32), F32(base), F32(alpha)];
    unsafe { g.launch("rope_freqs_f32", strided(rows * head_dim / 2), s, args) }
}

/// Rotates `[tokens, heads, head_dim]`; `ntk_alpha` 1 uses the stored angles.
pub unsafe fn rope_rotate(g: &Gpu, s: Stream, x: DevPtr, freqs: DevPtr, y: DevPtr, shape: crate::cpu::rope::RopeShape, tokens: usize, ntk_alpha: f32) -> Result<()> {
    let pairs = tokens * shape.heads * shape.head_dim / 2;
    let args = &mut [
        Ptr(x), Ptr(freqs), Ptr(y), I64(tokens as i64),
        I32(shape.seq_len as i32), I32(shape.heads as i32), I32(shape.head_dim as i32), I32(shape.offset as i32), F32(ntk_alpha),
    ];
    unsafe { g.launch("rope_rotate_f32", strided(pairs), s, args) }
}

/// One token per row: greedy at temperature 0, else the seeded Gumbel-max draw
/// the CPU makes (same noise), over all tokens, the top k, or the nucleus.
pub unsafe fn sample(g: &Gpu, s: Stream, logits: DevPtr, seeds: DevPtr, out: DevPtr, batch: usize, vocab: usize, temperature: f32, sampler: Sampler) -> Result<()> {
    if temperature == 0.0 {
        return unsafe { argmax(g, s, logits, out, batch, vocab) };
    }
    let mut args = vec![Ptr(logits), Ptr(out), Ptr(seeds), I32(batch as i32), I32(vocab as i32)];
    // The kernel with one block per row, the one with a cluster per row, and up
    // to how many rows the cluster is faster (one block per row leaves SMs
    // idle; H100, 131072 tokens: bench/RESULTS.md).
    let (single, cluster, cluster_rows) = match sampler {
        Sampler::TopK(k) if k < vocab => {
            args.push(I32(k as i32));
            ("topk_sample_f32", "topk_cluster_f32", 32)
        }
        Sampler::TopP(p) if p < 1.0 => {
            args.push(F32(p));
            ("topp_sample_f32", "topp_cluster_f32", 64)
        }
        _ => ("sample_f32", "sample_cluster_f32", 64),
    };
    args.push(F32(temperature));
    let at = per_row(batch, SAMPLE_BLOCK);
    unsafe {
        // A few rows longer than a tile: a cluster of blocks per row (sm_90+),
        // else (or if the GPU cannot place a cluster now) one block per row.
        if batch <= cluster_rows && vocab > TILE && g.has(cluster) {
            g.launch(cluster, per_row(batch * SAMPLE_CLUSTER, SAMPLE_BLOCK), s, &mut args)
                .or_else(|_| g.launch(single, at, s, &mut args))
        } else {
            g.launch(single, at, s, &mut args)
        }
    }
}

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
    let tf32 = a.head_dim == 64 && aligned && super::allow_tf32() && g.has("flash_attention_tf32_d64");
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

pub unsafe fn argmax(g: &Gpu, s: Stream, x: DevPtr, out: DevPtr, batch: usize, vocab: usize) -> Result<()> {
    unsafe { g.launch("argmax_f32", per_row(batch, 1024), s, &mut [Ptr(x), Ptr(out), I32(batch as i32), I32(vocab as i32)]) }
}
