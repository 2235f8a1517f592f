//! AdamW, zero_grad, gradient clipping, embedding scatter-add.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, require};
use crate::cpu::optim::{self, AdamW};
use crate::dispatch::{self, Call};
use crate::gpu::ops;

/// One AdamW step (decoupled weight decay, bias-corrected) over `size` elements:
/// `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
/// param -= lr (m̂ / (sqrt(v̂) + eps) + weight_decay param)` with
/// `m̂ = m / (1 - b1^step)`, `v̂ = v / (1 - b2^step)`. Returns -2 unless `step >= 1`,
/// `0 <= beta1, beta2 < 1`, `eps >= 0` and `lr`, `weight_decay` are finite, and for
/// NULL pointers, a negative size, or overlapping buffers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_adamw_step(
    param: *mut f32,
    grad: *const f32,
    m: *mut f32,
    v: *mut f32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: c_int,
    size: i64,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_adamw_step", {
        let n = check::count("size", size)?;
        require(step >= 1, || format!("step must be >= 1 (got {step})"))?;
        require((0.0..1.0).contains(&beta1), || format!("beta1 must be in [0, 1) (got {beta1})"))?;
        require((0.0..1.0).contains(&beta2), || format!("beta2 must be in [0, 1) (got {beta2})"))?;
        require(eps >= 0.0 && eps.is_finite(), || format!("eps must be finite and >= 0 (got {eps})"))?;
        require(lr.is_finite(), || format!("lr must be finite (got {lr})"))?;
        require(weight_decay.is_finite(), || format!("weight_decay must be finite (got {weight_decay})"))?;
        let p = Output::new("param", param, n)?;
        let g = Input::new("grad", grad, n)?;
        let mm = Output::new("m", m, n)?;
        let vv = Output::new("v", v, n)?;
        let h = AdamW { lr, beta1, beta2, eps, weight_decay, step };
        // In place (grad is one of the outputs' buffers) is safe on the GPU:
        // every element is read before it is written by the same thread.
        let call = Call::new(stream, n, [p.region(), g.region(), mm.region(), vv.region()])?;
        dispatch::run(
            &call,
            || unsafe { optim::adamw(p.slice(), &g.read(&[p.region(), mm.region(), vv.region()]), mm.slice(), vv.slice(), h) },
            |gpu, ptr| unsafe { ops::adamw(gpu, stream.cast(), ptr[0], ptr[1], ptr[2], ptr[3], h, n) },
        )
    })
}

/// Sets `grad[0..size]` to zero. Returns -2 for NULL with `size > 0` or `size < 0`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_zero_grad(grad: *mut f32, size: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_zero_grad", {
        let g = Output::new("grad", grad, check::count("size", size)?)?;
        dispatch::run(
            &Call::new(stream, g.len, [g.region()])?,
            || optim::zero(unsafe { g.slice() }),
            |_, p| unsafe { ops::zero(stream.cast(), p[0], g.len) },
        )
    })
}

/// Gradient clipping by global norm: `total_norm[0] = ||grad||₂` (before
/// clipping); if it exceeds `clip_norm`, every gradient is scaled by
/// `clip_norm / total_norm`. `partial_norms` is caller scratch of at least
/// `ceil(size / 256)` floats, contents unspecified afterwards. Returns -2 unless
/// `clip_norm` is finite and > 0, and for NULL pointers, `size < 0`, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_grad_clip(
    grad: *mut f32,
    partial_norms: *mut f32,
    total_norm: *mut f32,
    clip_norm: f32,
    size: i64,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_grad_clip", {
        let n = check::count("size", size)?;
        require(clip_norm > 0.0 && clip_norm.is_finite(), || format!("clip_norm must be finite and > 0 (got {clip_norm})"))?;
        let g = Output::new("grad", grad, n)?;
        let scratch = Output::new("partial_norms", partial_norms, n.div_ceil(256))?;
        let total = Output::new("total_norm", total_norm, if n == 0 { 0 } else { 1 })?;
        let call = Call::new(stream, n, [g.region(), scratch.region(), total.region()])?;
        dispatch::run(
            &call,
            || unsafe { total.slice()[0] = optim::clip(g.slice(), clip_norm) },
            |gpu, p| unsafe { ops::grad_clip(gpu, stream.cast(), p[0], p[1], p[2], clip_norm, n) },
        )
    })
}

/// Embedding backward: `grad_weight[indices[i], :] += grad_output[i, :]` for
/// `i < num_indices`, rows of `embedding_dim` floats. Negative indices are
/// skipped; duplicates accumulate (deterministically, in index order).
/// `grad_weight` must hold at least `max(indices) + 1` rows. Returns -2 for NULL
/// pointers, negative or overflowing sizes, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_scatter_add(
    grad_output: *const f32,
    indices: *const c_int,
    grad_weight: *mut f32,
    num_indices: c_int,
    embedding_dim: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_scatter_add", {
        let rows = check::dim("num_indices", num_indices)?;
        let dim = check::dim("embedding_dim", embedding_dim)?;
        let n = check::elements(&[("num_indices", rows), ("embedding_dim", dim)])?;
        let go = Input::new("grad_output", grad_output, n)?;
        let idx = Input::new("indices", indices, if n == 0 { 0 } else { rows })?;
        // The table's height is not passed: it is whatever the largest index
        // needs, known only where the host can read the indices.
        let height = if dispatch::host_readable(indices) {
            unsafe { idx.slice() }.iter().map(|&i| i as i64 + 1).max().unwrap_or(0).max(0) as usize
        } else {
            require(n == 0 || !dispatch::host_readable(grad_weight), || "grad_weight must be device memory when indices are".to_string())?;
            usize::from(n > 0) // at least one row exists; the kernel reads the indices on the device
        };
        let gw = Output::new("grad_weight", grad_weight, check::elements(&[("max index + 1", height), ("embedding_dim", dim)])?)?;
        let call = Call::new(stream, gw.len, [go.region(), idx.region(), gw.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe { optim::scatter_add(&go.read(&[gw.region()]), &idx.read(&[gw.region()]), gw.slice(), dim) },
            |gpu, p| unsafe { ops::scatter_add(gpu, stream.cast(), p[0], p[1], p[2], rows, dim) },
        )
    })
}
