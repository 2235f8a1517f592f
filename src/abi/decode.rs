//! Argmax and seeded token sampling.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, require};
use crate::cpu::convert::{self, Float, with_type};
use crate::cpu::decode::{self, Sampler};
use crate::dispatch::{self, Call};
use crate::gpu::widen::Use;
use crate::gpu::ops;
use crate::error::Result;

/// Checked `[batch, vocab_size]` logits and `[batch]` output; a non-empty batch
/// needs `vocab_size >= 1`.
fn rows<'a, T>(logits: *const T, output: *mut i32, batch: c_int, vocab_size: c_int) -> Result<(Input<'a, T>, Output<'a, i32>, usize)> {
    let batch = check::dim("batch", batch)?;
    let vocab = check::dim("vocab_size", vocab_size)?;
    require(batch == 0 || vocab >= 1, || "vocab_size must be >= 1 (got 0)".to_string())?;
    let x = Input::new("logits", logits, check::elements(&[("batch", batch), ("vocab_size", vocab)])?)?;
    let y = Output::new("output", output, batch)?;
    Ok((x, y, vocab))
}

/// Per row of `logits[batch, vocab_size]`, the first maximal index into
/// `output[batch]` (a NaN counts as maximal, as in numpy). Returns -2 for NULL
/// pointers with `batch > 0`, negative sizes, `vocab_size == 0`, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_argmax(logits: *const f32, output: *mut i32, batch: c_int, vocab_size: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_argmax", { unsafe { argmax_f32(logits, output, batch, vocab_size, stream) } })
}

unsafe fn argmax_f32(logits: *const f32, output: *mut i32, batch: c_int, vocab_size: c_int, stream: *mut c_void) -> Result<()> {
    let (x, y, vocab) = rows(logits, output, batch, vocab_size)?;
    let call = Call::new(stream, y.len, [x.region(), y.region()])?.kernels_in_place(false);
    dispatch::run(
        &call,
        || unsafe { decode::argmax(&x.read(&[y.region()]), y.slice(), vocab) },
        |g, p| unsafe { ops::argmax(g, stream.cast(), p[0], p[1], y.len, vocab) },
    )
}

/// Shared body of the samplers.
unsafe fn sample(logits: *const f32, output: *mut i32, seeds: *const u64, batch: c_int, vocab_size: c_int, temperature: f32, sampler: Sampler, stream: *mut c_void) -> Result<()> {
    require(temperature >= 0.0, || format!("temperature must be >= 0 (got {temperature})"))?;
    let (x, y, vocab) = rows(logits, output, batch, vocab_size)?;
    let s = Input::new("seeds", seeds, y.len)?;
    let call = Call::new(stream, y.len, [x.region(), s.region(), y.region()])?.kernels_in_place(false);
    dispatch::run(
        &call,
        || unsafe { decode::sample(&x.read(&[y.region()]), &s.read(&[y.region()]), y.slice(), vocab, temperature, sampler) },
        |g, p| unsafe { ops::sample(g, stream.cast(), p[0], p[1], p[2], y.len, vocab, temperature, sampler) },
    )
}

/// Per row, one token drawn from `softmax(logits / temperature)` into
/// `output[batch]`; `temperature == 0` is greedy (argmax). Randomness comes only
/// from `seeds[row]` (and the row index): the same seed and logits give the same
/// token on every run. Returns -2 for `temperature < 0` or NaN, NULL pointers,
/// negative sizes, `vocab_size == 0`, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_sample(logits: *const f32, output: *mut i32, seeds: *const u64, batch: c_int, vocab_size: c_int, temperature: f32, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_sample", {
        unsafe { sample(logits, output, seeds, batch, vocab_size, temperature, Sampler::All, stream) }
    })
}

/// `cuda_sample` restricted to the `k` largest logits (ties: lower index first);
/// `k >= vocab_size` is plain sampling. Returns -2 for `k <= 0` and as `cuda_sample`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_topk_sample(
    logits: *const f32,
    output: *mut i32,
    seeds: *const u64,
    batch: c_int,
    vocab_size: c_int,
    k: c_int,
    temperature: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_topk_sample", {
        require(k >= 1, || format!("k must be >= 1 (got {k})"))?;
        unsafe { sample(logits, output, seeds, batch, vocab_size, temperature, Sampler::TopK(k as usize), stream) }
    })
}

/// `cuda_sample` restricted to the nucleus: the smallest set of most probable
/// tokens (of `softmax(logits / temperature)`) whose probability sum reaches
/// `top_p`. Returns -2 unless `0 < top_p <= 1`, and as `cuda_sample`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_topp_sample(
    logits: *const f32,
    output: *mut i32,
    seeds: *const u64,
    batch: c_int,
    vocab_size: c_int,
    top_p: f32,
    temperature: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_topp_sample", {
        require(top_p > 0.0 && top_p <= 1.0, || format!("top_p must be in (0, 1] (got {top_p})"))?;
        unsafe { sample(logits, output, seeds, batch, vocab_size, temperature, Sampler::TopP(top_p), stream) }
    })
}

/// The half-precision `_ex` samplers: logits of type `t` widened to float32
/// (exactly: the same logits as the float32 call would see), then the float32
/// sampler (`None`: argmax), on the CPU or the GPU.
unsafe fn half_logits(t: Float, logits: *const c_void, output: *mut i32, seeds: *const u64, batch: c_int, vocab_size: c_int, temperature: f32, sampler: Option<Sampler>, stream: *mut c_void) -> Result<()> {
    require(temperature >= 0.0, || format!("temperature must be >= 0 (got {temperature})"))?;
    with_type!(t, T => {
        let (x, y, vocab) = rows(logits.cast::<T>(), output, batch, vocab_size)?;
        let s = Input::new("seeds", seeds, if sampler.is_some() { y.len } else { 0 })?;
        let call = Call::new(stream, y.len, [x.region(), s.region(), y.region()])?.kernels_in_place(false);
        let cpu = || unsafe {
            let wide = convert::widened(x.ptr, x.len);
            match sampler {
                None => decode::argmax(&wide, y.slice(), vocab),
                Some(sampler) => decode::sample(&wide, s.slice(), y.slice(), vocab, temperature, sampler),
            }
        };
        dispatch::run_typed(t, &call, [Use::In, Use::Keep, Use::Keep], cpu, |g, p| unsafe {
            match sampler {
                None => ops::argmax(g, stream.cast(), p[0], p[2], y.len, vocab),
                Some(sampler) => ops::sample(g, stream.cast(), p[0], p[1], p[2], y.len, vocab, temperature, sampler),
            }
        })
    })
}

/// `cuda_argmax` on logits of type `dtype` (`CUDANN_F32`, `CUDANN_F16` or
/// `CUDANN_BF16`). Returns -2 as `cuda_argmax`, and for an unknown `dtype`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_argmax_ex(logits: *const c_void, output: *mut i32, batch: c_int, vocab_size: c_int, dtype: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_argmax_ex", {
        match check::float_type("dtype", dtype)? {
            Float::F32 => unsafe { argmax_f32(logits.cast(), output, batch, vocab_size, stream) },
            t => unsafe { half_logits(t, logits, output, std::ptr::null(), batch, vocab_size, 0.0, None, stream) },
        }
    })
}

/// The samplers of the `_ex` family: `cuda_sample` (`top_k` 0, `top_p` 1),
/// `cuda_topk_sample` or `cuda_topp_sample`, by the arguments.
unsafe fn sample_ex(logits: *const c_void, output: *mut i32, seeds: *const u64, batch: c_int, vocab_size: c_int, temperature: f32, sampler: Sampler, dtype: c_int, stream: *mut c_void) -> Result<()> {
    match check::float_type("dtype", dtype)? {
        Float::F32 => unsafe { sample(logits.cast(), output, seeds, batch, vocab_size, temperature, sampler, stream) },
        t => unsafe { half_logits(t, logits, output, seeds, batch, vocab_size, temperature, Some(sampler), stream) },
    }
}

/// `cuda_sample` on logits of type `dtype`: the same token as `cuda_sample`
/// on the logits widened to float32. Returns -2 as `cuda_sample`, and for an
/// unknown `dtype`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_sample_ex(logits: *const c_void, output: *mut i32, seeds: *const u64, batch: c_int, vocab_size: c_int, temperature: f32, dtype: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_sample_ex", {
        unsafe { sample_ex(logits, output, seeds, batch, vocab_size, temperature, Sampler::All, dtype, stream) }
    })
}

/// `cuda_topk_sample` on logits of type `dtype`, as `cudann_sample_ex`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_topk_sample_ex(
    logits: *const c_void,
    output: *mut i32,
    seeds: *const u64,
    batch: c_int,
    vocab_size: c_int,
    k: c_int,
    temperature: f32,
    dtype: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_topk_sample_ex", {
        require(k >= 1, || format!("k must be >= 1 (got {k})"))?;
        unsafe { sample_ex(logits, output, seeds, batch, vocab_size, temperature, Sampler::TopK(k as usize), dtype, stream) }
    })
}

/// `cuda_topp_sample` on logits of type `dtype`, as `cudann_sample_ex`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_topp_sample_ex(
    logits: *const c_void,
    output: *mut i32,
    seeds: *const u64,
    batch: c_int,
    vocab_size: c_int,
    top_p: f32,
    temperature: f32,
    dtype: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_topp_sample_ex", {
        require(top_p > 0.0 && top_p <= 1.0, || format!("top_p must be in (0, 1] (got {top_p})"))?;
        unsafe { sample_ex(logits, output, seeds, batch, vocab_size, temperature, Sampler::TopP(top_p), dtype, stream) }
    })
}
