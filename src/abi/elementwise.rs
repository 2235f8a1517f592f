//! Elementwise ops.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output};
use crate::cpu::convert::{self, Float, with_type};
use crate::cpu::{elementwise, par::Src};
use crate::dispatch::{self, Call};
use crate::gpu::driver::{DevPtr, Stream};
use crate::gpu::widen::Use;
use crate::gpu::{Gpu, ops};
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

/// Validated operands of a flat elementwise op: `inputs` and one output, each
/// of `n` elements.
fn flat<'a, const N: usize>(n: i64, inputs: [(&'static str, *const f32); N], output: (&'static str, *mut f32)) -> Result<([Input<'a, f32>; N], Output<'a, f32>)> {
    let n = check::count("n", n)?;
    let mut checked = Vec::with_capacity(N);
    for (name, ptr) in inputs {
        checked.push(Input::new(name, ptr, n)?);
    }
    let inputs = checked.try_into().unwrap_or_else(|_| unreachable!("N inputs were pushed"));
    Ok((inputs, Output::new(output.0, output.1, n)?))
}

/// Validated operands of a unary elementwise op.
fn unary<'a>(input: *const f32, output: *mut f32, n: i64) -> Result<(Input<'a, f32>, Output<'a, f32>)> {
    let ([x], y) = flat(n, [("input", input)], ("output", output))?;
    Ok((x, y))
}

/// Validated operands of a binary elementwise op.
fn binary<'a>(a: *const f32, b: *const f32, output: *mut f32, n: i64) -> Result<(Input<'a, f32>, Input<'a, f32>, Output<'a, f32>)> {
    let ([a, b], y) = flat(n, [("a", a), ("b", b)], ("output", output))?;
    Ok((a, b, y))
}

/// Elementwise sum: `output[i] = a[i] + b[i]`. `output` may be `a` or `b`.
/// Returns -2 for a NULL pointer with `n > 0`, `n < 0`, or a partial overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_add(a: *const f32, b: *const f32, output: *mut f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_add", { unsafe { add_f32(a, b, output, n, stream) } })
}

unsafe fn add_f32(a: *const f32, b: *const f32, output: *mut f32, n: i64, stream: *mut c_void) -> Result<()> {
    let (a, b, y) = binary(a, b, output, n)?;
    let call = Call::new(stream, y.len, [a.region(), b.region(), y.region()])?;
    dispatch::run(
        &call,
        || unsafe { elementwise::add(Src::of(&a, &y, &[]), Src::of(&b, &y, &[]), y.slice()) },
        |g, p| unsafe { ops::add(g, stream.cast(), p[0], p[1], p[2], y.len) },
    )
}

/// Elementwise product: `output[i] = a[i] * b[i]`. `output` may be `a` or `b`.
/// Returns -2 for a NULL pointer with `n > 0`, `n < 0`, or a partial overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_mul(a: *const f32, b: *const f32, output: *mut f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_mul", { unsafe { mul_f32(a, b, output, n, stream) } })
}

unsafe fn mul_f32(a: *const f32, b: *const f32, output: *mut f32, n: i64, stream: *mut c_void) -> Result<()> {
    let (a, b, y) = binary(a, b, output, n)?;
    let call = Call::new(stream, y.len, [a.region(), b.region(), y.region()])?;
    dispatch::run(
        &call,
        || unsafe { elementwise::mul(Src::of(&a, &y, &[]), Src::of(&b, &y, &[]), y.slice()) },
        |g, p| unsafe { ops::mul(g, stream.cast(), p[0], p[1], p[2], y.len) },
    )
}

/// Scaling: `output[i] = input[i] * scale`. Note the argument order
/// `(input, output, scale, n, stream)`. `output` may be `input`.
/// Returns -2 for a NULL pointer with `n > 0`, `n < 0`, or a partial overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_scale(input: *const f32, output: *mut f32, scale: f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_scale", { unsafe { scale_f32(input, output, scale, n, stream) } })
}

unsafe fn scale_f32(input: *const f32, output: *mut f32, scale: f32, n: i64, stream: *mut c_void) -> Result<()> {
    let (x, y) = unary(input, output, n)?;
    let call = Call::new(stream, y.len, [x.region(), y.region()])?;
    dispatch::run(
        &call,
        || unsafe { elementwise::scale(Src::of(&x, &y, &[]), scale, y.slice()) },
        |g, p| unsafe { ops::scale(g, stream.cast(), p[0], p[1], scale, y.len) },
    )
}

/// The half-precision path of the `_ex` elementwise ops: `inputs` and
/// `output` of `n` elements of type `t`, each result `f` of the widened
/// inputs, rounded once: on the CPU by `kernel` (the float32 op's loop) or
/// `half` (a kernel on the half type's bits, see [`fused`]) as [`convert::elementwise`]
/// chooses, on the GPU by `gpu` (the float32 launch; pointers: first input,
/// last input, output).
unsafe fn half_ex<const N: usize>(t: Float, inputs: [(&'static str, *const c_void); N], output: *mut c_void, n: i64, stream: *mut c_void, half: Option<impl Fn([&[u16]; N], &mut [u16]) + Sync>, kernel: impl Fn([&[f32]; N], &mut [f32]) + Sync, gpu: impl FnOnce(&Gpu, Stream, [DevPtr; 3], usize) -> Result<()>) -> Result<()> {
    let n = check::count("n", n)?;
    with_type!(t, T => {
        let mut regions = Vec::with_capacity(N + 1);
        let mut pointers = [std::ptr::null::<T>(); N];
        for (p, (name, ptr)) in pointers.iter_mut().zip(inputs) {
            let x = Input::new(name, ptr.cast::<T>(), n)?;
            regions.push(x.region());
            *p = x.ptr;
        }
        let y = Output::new("output", output.cast::<T>(), n)?;
        regions.push(y.region());
        // Every operand for the overlap and placement checks (N is 1 or 2).
        let call = Call::new(stream, n, [regions[0], regions[N - 1], y.region()])?;
        dispatch::run_typed(t, &call, [Use::In, Use::In, Use::Out], || unsafe { convert::elementwise(pointers, y.ptr, n, half, kernel) }, |g, p| gpu(g, stream.cast(), [p[0], p[1], p[2]], n))
    })
}

/// For a half type `t`, the kernel of an op whose float32 form is the
/// per-element expression `f`, a single operation: each element widened in
/// a register, `f`, rounded once (float16 only where F16C converts it).
fn fused<const N: usize>(t: Float, f: impl Fn([f32; N]) -> f32 + Sync) -> Option<impl Fn([&[u16]; N], &mut [u16]) + Sync> {
    let bf16 = t == Float::Bf16;
    (bf16 || convert::f16c()).then_some(move |x: [&[u16]; N], y: &mut [u16]| if bf16 { convert::map_bf16_block(x, y, &f) } else { convert::map_f16_block(x, y, &f) })
}

/// `cuda_add` on tensors of type `dtype` (`CUDANN_F32`, `CUDANN_F16` or
/// `CUDANN_BF16`): half precision is read, added in float32 and rounded once
/// into the same type. `output` may be `a` or `b`. Returns -2 as
/// `cuda_add`, and for an unknown `dtype`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_add_ex(a: *const c_void, b: *const c_void, output: *mut c_void, n: i64, dtype: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_add_ex", {
        match check::float_type("dtype", dtype)? {
            Float::F32 => unsafe { add_f32(a.cast(), b.cast(), output.cast(), n, stream) },
            t => unsafe {
                let gpu = |g: &_, s, [a, b, y]: [DevPtr; 3], n| ops::add(g, s, a, b, y, n);
                half_ex(t, [("a", a), ("b", b)], output, n, stream, fused(t, |[a, b]| a + b), |[a, b], y| elementwise::add_block(a, b, y), gpu)
            },
        }
    })
}

/// `cuda_mul` on tensors of type `dtype`, as `cudann_add_ex`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_mul_ex(a: *const c_void, b: *const c_void, output: *mut c_void, n: i64, dtype: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_mul_ex", {
        match check::float_type("dtype", dtype)? {
            Float::F32 => unsafe { mul_f32(a.cast(), b.cast(), output.cast(), n, stream) },
            t => unsafe {
                let gpu = |g: &_, s, [a, b, y]: [DevPtr; 3], n| ops::mul(g, s, a, b, y, n);
                half_ex(t, [("a", a), ("b", b)], output, n, stream, fused(t, |[a, b]| a * b), |[a, b], y| elementwise::mul_block(a, b, y), gpu)
            },
        }
    })
}

/// `cuda_scale` on tensors of type `dtype`, as `cudann_add_ex` (`scale` is a
/// float32 either way).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_scale_ex(input: *const c_void, output: *mut c_void, scale: f32, n: i64, dtype: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_scale_ex", {
        match check::float_type("dtype", dtype)? {
            Float::F32 => unsafe { scale_f32(input.cast(), output.cast(), scale, n, stream) },
            t => unsafe {
                let gpu = |g: &_, s, [x, _, y]: [DevPtr; 3], n| ops::scale(g, s, x, y, scale, n);
                half_ex(t, [("input", input)], output, n, stream, fused(t, move |[x]| x * scale), |[x], y| elementwise::scale_block(x, scale, y), gpu)
            },
        }
    })
}

/// The backward of an activation `f`: `d_input[i] = d_output[i] * f'(input[i])`,
/// by `cpu` or the GPU kernel `gpu_kernel`. `d_input` may be `d_output` or
/// `input` (in place; the kernels read each element before writing it).
fn activation_backward(d_output: *const f32, input: *const f32, d_input: *mut f32, n: i64, stream: *mut c_void, cpu: fn(Src, Src, &mut [f32]), gpu_kernel: &'static str) -> Result<()> {
    let ([dy, x], dx) = flat(n, [("d_output", d_output), ("input", input)], ("d_input", d_input))?;
    let call = Call::new(stream, dx.len, [dy.region(), x.region(), dx.region()])?;
    dispatch::run(
        &call,
        || unsafe { cpu(Src::of(&dy, &dx, &[]), Src::of(&x, &dx, &[]), dx.slice()) },
        |g, p| unsafe { ops::activation_backward(g, stream.cast(), gpu_kernel, p[0], p[1], p[2], dx.len) },
    )
}

/// SiLU backward: `d_input[i] = d_output[i] * s (1 + x (1 - s))` with
/// `x = input[i]`, `s = sigmoid(x)`, for `0 <= i < n`. `d_input` may be
/// `d_output` or `input`. Returns -2 for a NULL pointer with `n > 0`, `n < 0`, or
/// a partial overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_silu_backward(d_output: *const f32, input: *const f32, d_input: *mut f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_silu_backward", { activation_backward(d_output, input, d_input, n, stream, elementwise::silu_backward, "silu_backward_f32") })
}

/// GELU, tanh form (GPT-2): `output[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))`
/// with `x = input[i]`. `output` may be `input`. Returns -2 as `cuda_silu`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_gelu(input: *const f32, output: *mut f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_gelu", {
        let (x, y) = unary(input, output, n)?;
        let call = Call::new(stream, y.len, [x.region(), y.region()])?;
        dispatch::run(
            &call,
            || unsafe { elementwise::gelu(Src::of(&x, &y, &[]), y.slice()) },
            |g, p| unsafe { ops::gelu(g, stream.cast(), p[0], p[1], y.len) },
        )
    })
}

/// GELU backward: `d_input[i] = d_output[i] * gelu'(input[i])` (the derivative
/// of `cudann_gelu`'s tanh form). `d_input` may be `d_output` or `input`.
/// Returns -2 as `cudann_silu_backward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_gelu_backward(d_output: *const f32, input: *const f32, d_input: *mut f32, n: i64, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_gelu_backward", { activation_backward(d_output, input, d_input, n, stream, elementwise::gelu_backward, "gelu_backward_f32") })
}

/// SwiGLU: `output[i] = silu(gate[i]) * up[i]` for `0 <= i < n`, tensors of data
/// type `dtype` (`CUDANN_F32`, `CUDANN_F16` or `CUDANN_BF16`; half precision is
/// computed in float32 and rounded once). `output` may be `gate` or `up`. Returns -2 for a NULL
/// pointer with `n > 0`, `n < 0`, a bad `dtype` or a partial overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_swiglu(gate: *const c_void, up: *const c_void, output: *mut c_void, n: i64, dtype: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_swiglu", {
        match check::float_type("dtype", dtype)? {
            Float::F32 => unsafe { swiglu_f32(gate.cast(), up.cast(), output.cast(), n, stream) },
            t => unsafe {
                let gpu = |g: &_, s, [gate, up, y]: [DevPtr; 3], n| ops::swiglu(g, s, gate, up, y, n);
                let half = Some(move |[g, u]: [&[u16]; 2], y: &mut [u16]| elementwise::swiglu_half(t, g, u, y));
                half_ex(t, [("gate", gate), ("up", up)], output, n, stream, half, |[g, u], y| elementwise::swiglu_block(g, u, y), gpu)
            },
        }
    })
}

unsafe fn swiglu_f32(gate: *const f32, up: *const f32, output: *mut f32, n: i64, stream: *mut c_void) -> Result<()> {
    let ([g, u], y) = flat(n, [("gate", gate), ("up", up)], ("output", output))?;
    let call = Call::new(stream, y.len, [g.region(), u.region(), y.region()])?;
    dispatch::run(
        &call,
        || unsafe { elementwise::swiglu(Src::of(&g, &y, &[]), Src::of(&u, &y, &[]), y.slice()) },
        |gpu, p| unsafe { ops::swiglu(gpu, stream.cast(), p[0], p[1], p[2], y.len) },
    )
}

/// SwiGLU backward: `d_gate[i] = d_output[i] * up[i] * silu'(gate[i])` and
/// `d_up[i] = d_output[i] * silu(gate[i])`. `d_gate` may be `gate` (or
/// `d_output`) and `d_up` may be `up` (or `d_output`), as long as the two outputs
/// are distinct. Returns -2 for a NULL pointer with `n > 0`, `n < 0`, or an
/// overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_swiglu_backward(
    d_output: *const f32,
    gate: *const f32,
    up: *const f32,
    d_gate: *mut f32,
    d_up: *mut f32,
    n: i64,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_swiglu_backward", {
        let ([dy, g, u], dg) = flat(n, [("d_output", d_output), ("gate", gate), ("up", up)], ("d_gate", d_gate))?;
        let du = Output::new("d_up", d_up, dg.len)?;
        let call = Call::new(stream, dg.len, [dy.region(), g.region(), u.region(), dg.region(), du.region()])?;
        // The kernel reads an element's three inputs before writing its two outputs.
        dispatch::run(
            &call,
            || unsafe {
                let outputs = [dg.region(), du.region()];
                elementwise::swiglu_backward(&dy.read(&outputs), &g.read(&outputs), &u.read(&outputs), dg.slice(), du.slice())
            },
            |gpu, p| unsafe { ops::swiglu_backward(gpu, stream.cast(), p[0], p[1], p[2], p[3], p[4], dg.len) },
        )
    })
}

/// Checked `[rows, cols]` of a row-broadcast op: (rows * cols, cols).
fn rows_cols(rows: c_int, cols: c_int) -> Result<(usize, usize)> {
    let (rows, cols) = (check::dim("rows", rows)?, check::dim("cols", cols)?);
    Ok((check::elements(&[("rows", rows), ("cols", cols)])?, cols))
}

/// Bias add: `output[r, c] = input[r, c] + bias[c]` over `input[rows, cols]`.
/// `output` may be `input`. Returns -2 for NULL pointers with a non-empty shape,
/// negative or overflowing dimensions, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_bias_add(input: *const f32, bias: *const f32, output: *mut f32, rows: c_int, cols: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_bias_add", {
        let (n, cols) = rows_cols(rows, cols)?;
        let x = Input::new("input", input, n)?;
        let b = Input::new("bias", bias, if n == 0 { 0 } else { cols })?;
        let y = Output::new("output", output, n)?;
        let call = Call::new(stream, n, [x.region(), b.region(), y.region()])?;
        dispatch::run(
            &call,
            || unsafe { elementwise::bias_add(Src::of(&x, &y, &[]), &b.read(&[y.region()]), y.slice()) },
            |g, p| unsafe { ops::bias_add(g, stream.cast(), p[0], p[1], p[2], n / cols, cols) },
        )
    })
}

/// Bias backward: `d_bias[c] = sum over r of d_output[r, c]` (column sums of
/// `d_output[rows, cols]`, deterministic; written, not accumulated). With
/// `rows == 0`, `d_bias` is set to zeros. Returns -2 for NULL pointers with a
/// non-empty shape, negative or overflowing dimensions, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_bias_backward(d_output: *const f32, d_bias: *mut f32, rows: c_int, cols: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_bias_backward", {
        let (n, cols) = rows_cols(rows, cols)?;
        let dy = Input::new("d_output", d_output, n)?;
        let db = Output::new("d_bias", d_bias, cols)?;
        let call = Call::new(stream, cols, [dy.region(), db.region()])?;
        // One block owns a column (reads it, then writes its sum): d_bias may be
        // d_output's buffer (rows == 1).
        dispatch::run(
            &call,
            || unsafe { elementwise::bias_backward(&dy.read(&[db.region()]), db.slice()) },
            |g, p| unsafe { ops::column_sums(g, stream.cast(), p[0], 0, p[1], n / cols.max(1), cols) },
        )
    })
}
