//! Softmax and the MoE router top-k.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, require};
use crate::cpu::convert::{self, Float, with_type};
use crate::cpu::{par::Src, softmax};
use crate::error::Result;
use crate::dispatch::{self, Call};
use crate::gpu::widen::Use;
use crate::gpu::ops;

/// Row-wise softmax of `input[rows, cols]` into `output[rows, cols]`, stable for
/// large inputs (the row max is subtracted). `-inf` entries get probability 0;
/// a row that is entirely `-inf` yields zeros. `output` may be `input`.
/// Returns -2 for NULL pointers with a non-empty shape, negative or overflowing
/// dimensions, or a partial overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_softmax(input: *const f32, output: *mut f32, rows: c_int, cols: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_softmax", {
        unsafe { softmax_f32(input, output, rows, cols, stream) }
    })
}

/// The body of cuda_softmax (and of cudann_softmax_ex in float32).
unsafe fn softmax_f32(input: *const f32, output: *mut f32, rows: c_int, cols: c_int, stream: *mut c_void) -> Result<()> {
    let (rows, cols) = (check::dim("rows", rows)?, check::dim("cols", cols)?);
    let n = check::elements(&[("rows", rows), ("cols", cols)])?;
    let x = Input::new("input", input, n)?;
    let y = Output::new("output", output, n)?;
    let call = Call::new(stream, n, [x.region(), y.region()])?;
    dispatch::run(
        &call,
        || unsafe { softmax::softmax(Src::of(&x, &y, &[]), y.slice(), cols) },
        |g, p| unsafe { ops::softmax(g, stream.cast(), p[0], p[1], rows, cols) },
    )
}

/// `cuda_softmax` on tensors of type `dtype` (`CUDANN_F32`, `CUDANN_F16` or
/// `CUDANN_BF16`): half precision is read, computed in float32 and written in
/// the same type (each row the float32 op's result, rounded once).
/// Returns -2 as `cuda_softmax`, and for an unknown `dtype`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_softmax_ex(input: *const c_void, output: *mut c_void, rows: c_int, cols: c_int, dtype: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_softmax_ex", {
        let t = check::float_type("dtype", dtype)?;
        if t == Float::F32 {
            return unsafe { softmax_f32(input.cast(), output.cast(), rows, cols, stream) };
        }
        let (rows, cols) = (check::dim("rows", rows)?, check::dim("cols", cols)?);
        let n = check::elements(&[("rows", rows), ("cols", cols)])?;
        with_type!(t, T => {
            let x = Input::new("input", input.cast::<T>(), n)?;
            let y = Output::new("output", output.cast::<T>(), n)?;
            let call = Call::new(stream, n, [x.region(), y.region()])?;
            let cpu = || unsafe {
                if t == Float::Bf16 && !y.is(&x) {
                    let bits = |p: *const T| std::slice::from_raw_parts(p.cast::<u16>(), n);
                    return softmax::softmax_bf16(bits(x.ptr), std::slice::from_raw_parts_mut(y.ptr.cast::<u16>(), n), cols);
                }
                if t == Float::F16 && !y.is(&x) {
                    let x = std::slice::from_raw_parts(x.ptr.cast::<half::f16>(), n);
                    return softmax::softmax_f16(x, std::slice::from_raw_parts_mut(y.ptr.cast::<half::f16>(), n), cols);
                }
                convert::blockwise([x.ptr], y.ptr, n, cols, |_, [xb], yb| softmax::softmax(Src::Slice(xb), yb, cols))
            };
            dispatch::run_typed(t, &call, [Use::In, Use::Out], cpu, |g, p| unsafe { ops::softmax(g, stream.cast(), p[0], p[1], rows, cols) })
        })
    })
}

/// MoE router: per row of `input[rows, cols]`, the `k` most probable columns in
/// descending probability (ties: lower index first) into `indices[rows, k]`, and
/// their softmax probabilities renormalised to sum to 1 into `weights[rows, k]`.
/// Returns -2 unless `1 <= k <= cols`, and for NULL pointers, negative or
/// overflowing dimensions, or overlapping buffers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_softmax_topk(
    input: *const f32,
    weights: *mut f32,
    indices: *mut i32,
    rows: c_int,
    cols: c_int,
    k: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_softmax_topk", {
        let (rows, cols) = (check::dim("rows", rows)?, check::dim("cols", cols)?);
        require(k >= 1 && k as usize <= cols, || format!("k must be in 1..=cols ({cols}) (got {k})"))?;
        let k = k as usize;
        let x = Input::new("input", input, check::elements(&[("rows", rows), ("cols", cols)])?)?;
        let w = Output::new("weights", weights, rows * k)?;
        let idx = Output::new("indices", indices, rows * k)?;
        let call = Call::new(stream, rows * k, [x.region(), w.region(), idx.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe { softmax::softmax_topk(&x.read(&[w.region(), idx.region()]), w.slice(), idx.slice(), cols, k) },
            |g, p| unsafe { ops::softmax_topk(g, stream.cast(), p[0], p[1], p[2], rows, cols, k) },
        )
    })
}

/// Softmax backward from the forward's output `y = output[rows, cols]`:
/// `d_input = y * (d_output - sum over the row of d_output * y)`. `d_input` may
/// be `d_output` or `output`. Returns -2 as `cuda_softmax`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_softmax_backward(d_output: *const f32, output: *const f32, d_input: *mut f32, rows: c_int, cols: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_softmax_backward", {
        let (rows, cols) = (check::dim("rows", rows)?, check::dim("cols", cols)?);
        let n = check::elements(&[("rows", rows), ("cols", cols)])?;
        let dy = Input::new("d_output", d_output, n)?;
        let y = Input::new("output", output, n)?;
        let dx = Output::new("d_input", d_input, n)?;
        let call = Call::new(stream, n, [dy.region(), y.region(), dx.region()])?;
        dispatch::run(
            &call,
            || unsafe { softmax::softmax_backward(Src::of(&dy, &dx, &[]), Src::of(&y, &dx, &[]), dx.slice(), cols) },
            |g, p| unsafe { ops::softmax_backward(g, stream.cast(), p[0], p[1], p[2], rows, cols) },
        )
    })
}
