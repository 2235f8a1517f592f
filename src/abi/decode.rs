//! Argmax and seeded token sampling.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, require};
use crate::cpu::decode::{self, Sampler};
use crate::dispatch::{self, Call};
use crate::gpu::ops;
use crate::error::Result;

/// Checked `[batch, vocab_size]` logits and `[batch]` output; a non-empty batch
/// needs `vocab_size >= 1`.
fn rows<'a>(logits: *const f32, output: *mut i32, batch: c_int, vocab_size: c_int) -> Result<(Input<'a, f32>, Output<'a, i32>, usize)> {
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
    ffi_fn!("cuda_argmax", {
        let (x, y, vocab) = rows(logits, output, batch, vocab_size)?;
        let call = Call::new(stream, y.len, [x.region(), y.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe { decode::argmax(&x.read(&[y.region()]), y.slice(), vocab) },
            |g, p| unsafe { ops::argmax(g, stream.cast(), p[0], p[1], y.len, vocab) },
        )
    })
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
