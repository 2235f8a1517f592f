//! Optimizer launches: AdamW, zeroing, gradient clipping, scatter-add.

use super::{line, strided, single};
use crate::gpu::driver::{Arg, DevPtr, Launch, Stream};
use crate::gpu::Gpu;
use crate::error::Result;

use Arg::{F32, I32, I64, Ptr};

// SAFETY (every function below): the pointers are device memory of the sizes
// the arguments imply; the ABI layer checked the sizes.

/// One AdamW step; bias corrections are folded into two factors on the host.
pub unsafe fn adamw(g: &Gpu, s: Stream, p: DevPtr, grad: DevPtr, m: DevPtr, v: DevPtr, h: crate::cpu::optim::AdamW, n: usize) -> Result<()> {
    let (inv_bc1, inv_bc2) = h.inverse_bias_corrections();
    let args = &mut [
        Ptr(p), Ptr(grad), Ptr(m), Ptr(v),
        F32(h.lr), F32(h.beta1), F32(h.beta2), F32(h.eps), F32(h.weight_decay), F32(inv_bc1), F32(inv_bc2), I64(n as i64),
    ];
    unsafe { g.launch("adamw_f32", strided(n), s, args) }
}

/// `n` floats of zeros (the bits of 0.0).
pub unsafe fn zero(s: Stream, x: DevPtr, n: usize) -> Result<()> {
    unsafe { crate::gpu::driver::fill32(s, x, n, 0) }
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
    let at = Launch { grid: (dim.div_ceil(256) as u32, 32, 1), block: (256, 1, 1), shared: 0 };
    unsafe { g.launch("scatter_add_f32", at, s, &mut [Ptr(go), Ptr(idx), Ptr(gw), I32(num as i32), I32(dim as i32)]) }
}
