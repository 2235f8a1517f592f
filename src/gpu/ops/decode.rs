//! Decoding launches: argmax and the samplers.

use super::per_row;
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::Gpu;
use crate::error::Result;
use crate::cpu::decode::Sampler;
use crate::cpu::rng::TILE;

use Arg::{F32, I32, Ptr};

/// Threads per row of the sampling kernels (kernels/README.md).
const SAMPLE_BLOCK: u32 = 1024;
/// Blocks per row of the cluster kernels (SAMPLE_CLUSTER in sample_cluster.cu).
const SAMPLE_CLUSTER: usize = 4;

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

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

pub unsafe fn argmax(g: &Gpu, s: Stream, x: DevPtr, out: DevPtr, batch: usize, vocab: usize) -> Result<()> {
    unsafe { g.launch("argmax_f32", per_row(batch, 1024), s, &mut [Ptr(x), Ptr(out), I32(batch as i32), I32(vocab as i32)]) }
}
