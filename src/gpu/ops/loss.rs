//! Cross-entropy and MoE auxiliary-loss launches.

use super::{line, strided, per_row, single};
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::Gpu;
use crate::error::Result;

use Arg::{F32, I32, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

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
