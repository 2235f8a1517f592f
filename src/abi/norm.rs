//! RMSNorm.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, require};
use crate::cpu::convert::{self, Float, with_type};
use crate::cpu::{elementwise, norm, par::Src};
use crate::dispatch::{self, Call};
use crate::gpu::driver::DevPtr;
use crate::gpu::widen::Use;
use crate::gpu::ops;
use crate::error::Result;

/// Checks the shape and `eps`; returns (rows * hidden_dim, hidden_dim).
fn shape(rows: c_int, hidden_dim: c_int, eps: f32) -> Result<(usize, usize)> {
    let (rows, hidden) = (check::dim("rows", rows)?, check::dim("hidden_dim", hidden_dim)?);
    require(eps >= 0.0 && eps.is_finite(), || format!("eps must be finite and >= 0 (got {eps})"))?;
    Ok((check::elements(&[("rows", rows), ("hidden_dim", hidden)])?, hidden))
}

/// RMSNorm of each row of `input[rows, hidden_dim]`:
/// `output = input / sqrt(mean(input²) + eps) * weight[hidden_dim]`.
/// `output` may be `input`. Returns -2 for NULL pointers with a non-empty shape,
/// negative or overflowing dimensions, `eps < 0` or non-finite, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_rmsnorm(
    input: *const f32,
    weight: *const f32,
    output: *mut f32,
    rows: c_int,
    hidden_dim: c_int,
    eps: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_rmsnorm", {
        unsafe { rmsnorm_f32(input, weight, output, rows, hidden_dim, eps, stream) }
    })
}

/// The body of cuda_rmsnorm (and of cudann_rmsnorm_ex in float32).
unsafe fn rmsnorm_f32(input: *const f32, weight: *const f32, output: *mut f32, rows: c_int, hidden_dim: c_int, eps: f32, stream: *mut c_void) -> Result<()> {
    let (n, hidden) = shape(rows, hidden_dim, eps)?;
    let x = Input::new("input", input, n)?;
    let w = Input::new("weight", weight, if n == 0 { 0 } else { hidden })?;
    let y = Output::new("output", output, n)?;
    let call = Call::new(stream, n, [x.region(), w.region(), y.region()])?;
    dispatch::run(
        &call,
        || unsafe { norm::rmsnorm(Src::of(&x, &y, &[]), &w.read(&[y.region()]), y.slice(), hidden, eps) },
        |g, p| unsafe { ops::rmsnorm(g, stream.cast(), p[0], p[1], p[2], n / hidden, hidden, eps) },
    )
}

/// `cuda_rmsnorm` with `input`, `weight` and `output` of type `dtype`
/// (`CUDANN_F32`, `CUDANN_F16` or `CUDANN_BF16`): half-precision tensors are
/// read, normalised in float32 and written in the same type (each row exactly
/// the float32 op's result on the widened inputs, rounded once; but a NaN
/// result of bf16 rows, out of place, may differ in sign and payload).
/// Returns -2 as `cuda_rmsnorm`, and for an unknown `dtype`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_rmsnorm_ex(
    input: *const c_void,
    weight: *const c_void,
    output: *mut c_void,
    rows: c_int,
    hidden_dim: c_int,
    eps: f32,
    dtype: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_rmsnorm_ex", {
        let t = check::float_type("dtype", dtype)?;
        if t == Float::F32 {
            return unsafe { rmsnorm_f32(input.cast(), weight.cast(), output.cast(), rows, hidden_dim, eps, stream) };
        }
        let (n, hidden) = shape(rows, hidden_dim, eps)?;
        with_type!(t, T => {
            let x = Input::new("input", input.cast::<T>(), n)?;
            let w = Input::new("weight", weight.cast::<T>(), if n == 0 { 0 } else { hidden })?;
            let y = Output::new("output", output.cast::<T>(), n)?;
            let call = Call::new(stream, n, [x.region(), w.region(), y.region()])?;
            let gpu = |g: &_, p: &[DevPtr]| unsafe { ops::rmsnorm(g, stream.cast(), p[0], p[1], p[2], n / hidden, hidden, eps) };
            dispatch::run_typed(t, &call, [Use::In, Use::In, Use::Out], || unsafe {
                let w32 = convert::widened(w.ptr, w.len);
                if t == Float::Bf16 && !y.is(&x) {
                    let bits = |p: *const T| std::slice::from_raw_parts(p.cast::<u16>(), n);
                    return norm::rmsnorm_bf16(bits(x.ptr), &w32, std::slice::from_raw_parts_mut(y.ptr.cast::<u16>(), n), hidden, eps);
                }
                convert::blockwise([x.ptr], y.ptr, n, hidden, |_, [xb], yb| norm::rmsnorm(Src::Slice(xb), &w32, yb, hidden, eps));
            }, gpu)
        })
    })
}

/// Residual RMSNorm: `s = input + residual` is written to `residual_out`, and
/// RMSNorm of `s` (as `cuda_rmsnorm`) to `output`. Each output may be `input` or
/// `residual`, but the two outputs must be distinct. Returns -2 as `cuda_rmsnorm`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_rmsnorm_residual(
    input: *const f32,
    residual: *const f32,
    weight: *const f32,
    output: *mut f32,
    residual_out: *mut f32,
    rows: c_int,
    hidden_dim: c_int,
    eps: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_rmsnorm_residual", {
        let (n, hidden) = shape(rows, hidden_dim, eps)?;
        let x = Input::new("input", input, n)?;
        let r = Input::new("residual", residual, n)?;
        let w = Input::new("weight", weight, if n == 0 { 0 } else { hidden })?;
        let y = Output::new("output", output, n)?;
        let s = Output::new("residual_out", residual_out, n)?;
        let call = Call::new(stream, n, [x.region(), r.region(), w.region(), y.region(), s.region()])?;
        let gpu = |g: &_, p: &[_]| unsafe { ops::rmsnorm_residual(g, stream.cast(), p[0], p[1], p[2], p[3], p[4], n / hidden, hidden, eps) };
        let cpu = || {
            // The sum lands in residual_out first; inputs that are `output`'s
            // buffer are no longer needed when the norm overwrites them.
            unsafe {
                let w = w.read(&[y.region(), s.region()]);
                elementwise::add(Src::of(&x, &s, &[]), Src::of(&r, &s, &[]), s.slice());
                norm::rmsnorm(Src::Slice(s.slice()), &w, y.slice(), hidden, eps);
            }
        };
        dispatch::run(&call, cpu, gpu)
    })
}

/// RMSNorm backward, for `output = input * r * weight` with
/// `r = 1 / sqrt(mean(input²) + eps)` per row of `input[rows, hidden_dim]`:
/// `d_input = r * (g - input * r² * mean(g * input))` with `g = d_output * weight`,
/// and `d_weight[j] = sum over rows of d_output * input * r` (written, not
/// accumulated; deterministic). `d_input` may be `d_output` or `input`. Returns
/// -2 as `cuda_rmsnorm`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_rmsnorm_backward(
    d_output: *const f32,
    input: *const f32,
    weight: *const f32,
    d_input: *mut f32,
    d_weight: *mut f32,
    rows: c_int,
    hidden_dim: c_int,
    eps: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_rmsnorm_backward", {
        let (n, hidden) = shape(rows, hidden_dim, eps)?;
        let dy = Input::new("d_output", d_output, n)?;
        let x = Input::new("input", input, n)?;
        let w = Input::new("weight", weight, if n == 0 { 0 } else { hidden })?;
        let dx = Output::new("d_input", d_input, n)?;
        let dw = Output::new("d_weight", d_weight, if n == 0 { 0 } else { hidden })?;
        // The GPU path uses d_input as scratch before its last kernel: aliased
        // inputs are copied first.
        let call = Call::new(stream, n, [dy.region(), x.region(), w.region(), dx.region(), dw.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe {
                let others = [dw.region()];
                let w = w.read(&[dx.region(), dw.region()]);
                norm::rmsnorm_backward(Src::of(&dy, &dx, &others), Src::of(&x, &dx, &others), &w, dx.slice(), dw.slice(), eps)
            },
            |g, p| unsafe { ops::rmsnorm_backward(g, stream.cast(), p[0], p[1], p[2], p[3], p[4], n / hidden, hidden, eps) },
        )
    })
}

/// LayerNorm of each row of `input[rows, hidden_dim]`:
/// `output = (input - mean) / sqrt(var + eps) * weight + bias` (biased variance,
/// as PyTorch and GPT-2). `output` may be `input`. Returns -2 as `cuda_rmsnorm`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_layernorm(
    input: *const f32,
    weight: *const f32,
    bias: *const f32,
    output: *mut f32,
    rows: c_int,
    hidden_dim: c_int,
    eps: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_layernorm", {
        let (n, hidden) = shape(rows, hidden_dim, eps)?;
        let x = Input::new("input", input, n)?;
        let w = Input::new("weight", weight, if n == 0 { 0 } else { hidden })?;
        let b = Input::new("bias", bias, if n == 0 { 0 } else { hidden })?;
        let y = Output::new("output", output, n)?;
        let call = Call::new(stream, n, [x.region(), w.region(), b.region(), y.region()])?;
        dispatch::run(
            &call,
            || unsafe { norm::layernorm(Src::of(&x, &y, &[]), &w.read(&[y.region()]), &b.read(&[y.region()]), y.slice(), eps) },
            |g, p| unsafe { ops::layernorm(g, stream.cast(), p[0], p[1], p[2], p[3], n / hidden, hidden, eps) },
        )
    })
}

/// LayerNorm backward (`cudann_layernorm`'s gradients): with `x̂` the normalised
/// row and `g = d_output * weight`,
/// `d_input = rstd * (g - mean(g) - x̂ * mean(g * x̂))`,
/// `d_weight = sum over rows of d_output * x̂`, `d_bias = sum over rows of
/// d_output` (written, not accumulated; deterministic). `d_input` may be
/// `d_output` or `input`. Returns -2 as `cuda_rmsnorm`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_layernorm_backward(
    d_output: *const f32,
    input: *const f32,
    weight: *const f32,
    d_input: *mut f32,
    d_weight: *mut f32,
    d_bias: *mut f32,
    rows: c_int,
    hidden_dim: c_int,
    eps: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_layernorm_backward", {
        let (n, hidden) = shape(rows, hidden_dim, eps)?;
        let per_row = if n == 0 { 0 } else { hidden };
        let dy = Input::new("d_output", d_output, n)?;
        let x = Input::new("input", input, n)?;
        let w = Input::new("weight", weight, per_row)?;
        let dx = Output::new("d_input", d_input, n)?;
        let dw = Output::new("d_weight", d_weight, per_row)?;
        let db = Output::new("d_bias", d_bias, per_row)?;
        // As for RMSNorm: d_input is the GPU path's scratch, aliased inputs are copied.
        let call = Call::new(stream, n, [dy.region(), x.region(), w.region(), dx.region(), dw.region(), db.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe {
                let others = [dw.region(), db.region()];
                let w = w.read(&[dx.region(), dw.region(), db.region()]);
                let (dy, x) = (Src::of(&dy, &dx, &others), Src::of(&x, &dx, &others));
                norm::layernorm_backward(dy, x, &w, dx.slice(), dw.slice(), db.slice(), eps)
            },
            |g, p| unsafe { ops::layernorm_backward(g, stream.cast(), p[0], p[1], p[2], p[3], p[4], p[5], n / hidden, hidden, eps) },
        )
    })
}
