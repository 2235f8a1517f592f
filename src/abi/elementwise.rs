//! Elementwise ops.

use std::ffi::c_void;

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output};
use crate::cpu::{elementwise, par::Src};
use crate::dispatch::{self, Call};
use crate::gpu::ops;
use crate::error::Result;

/// SiLU: `output[i] = input[i] * sigmoid(input[i])` for `0 <= i < n`.
/// `output` may be `input` (in place). Returns -2 for a NULL pointer with
/// `n > 0`, `n < 0`, or a partial overlap of `output` and `input`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_silu(input: *const f32, output: *mut f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_silu", {
        let (x, y) = unary(input, output, n)?;
        let call = Call::new(stream, y.len, [x.region(), y.region()])?;
        dispatch::run(
            &call,
            || unsafe { elementwise::silu(Src::of(&x, &y, &[]), y.slice()) },
            |g, p| unsafe { ops::silu(g, stream.cast(), p[0], p[1], y.len) },
        )
    })
}

/// Validated operands of a unary elementwise op.
fn unary<'a>(input: *const f32, output: *mut f32, n: i64) -> Result<(Input<'a, f32>, Output<'a, f32>)> {
    let n = check::count("n", n)?;
    let x = Input::new("input", input, n)?;
    let y = Output::new("output", output, n)?;
    Ok((x, y))
}

/// Validated operands of a binary elementwise op.
fn binary<'a>(a: *const f32, b: *const f32, output: *mut f32, n: i64) -> Result<(Input<'a, f32>, Input<'a, f32>, Output<'a, f32>)> {
    let n = check::count("n", n)?;
    let a = Input::new("a", a, n)?;
    let b = Input::new("b", b, n)?;
    let y = Output::new("output", output, n)?;
    Ok((a, b, y))
}

/// Elementwise sum: `output[i] = a[i] + b[i]`. `output` may be `a` or `b`.
/// Returns -2 for a NULL pointer with `n > 0`, `n < 0`, or a partial overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_add(a: *const f32, b: *const f32, output: *mut f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_add", {
        let (a, b, y) = binary(a, b, output, n)?;
        let call = Call::new(stream, y.len, [a.region(), b.region(), y.region()])?;
        dispatch::run(
            &call,
            || unsafe { elementwise::add(Src::of(&a, &y, &[]), Src::of(&b, &y, &[]), y.slice()) },
            |g, p| unsafe { ops::add(g, stream.cast(), p[0], p[1], p[2], y.len) },
        )
    })
}

/// Elementwise product: `output[i] = a[i] * b[i]`. `output` may be `a` or `b`.
/// Returns -2 for a NULL pointer with `n > 0`, `n < 0`, or a partial overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_mul(a: *const f32, b: *const f32, output: *mut f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_mul", {
        let (a, b, y) = binary(a, b, output, n)?;
        let call = Call::new(stream, y.len, [a.region(), b.region(), y.region()])?;
        dispatch::run(
            &call,
            || unsafe { elementwise::mul(Src::of(&a, &y, &[]), Src::of(&b, &y, &[]), y.slice()) },
            |g, p| unsafe { ops::mul(g, stream.cast(), p[0], p[1], p[2], y.len) },
        )
    })
}

/// Scaling: `output[i] = input[i] * scale`. Note the argument order
/// `(input, output, scale, n, stream)`. `output` may be `input`.
/// Returns -2 for a NULL pointer with `n > 0`, `n < 0`, or a partial overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_scale(input: *const f32, output: *mut f32, scale: f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_scale", {
        let (x, y) = unary(input, output, n)?;
        let call = Call::new(stream, y.len, [x.region(), y.region()])?;
        dispatch::run(
            &call,
            || unsafe { elementwise::scale(Src::of(&x, &y, &[]), scale, y.slice()) },
            |g, p| unsafe { ops::scale(g, stream.cast(), p[0], p[1], scale, y.len) },
        )
    })
}
