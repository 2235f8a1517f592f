//! Attention.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output};
use crate::cpu::attention::{self, AttnShape, Mask};
use crate::dispatch::{self, Call};
use crate::gpu::ops;
use crate::error::Result;

/// Checked shape with `kv_heads` key/value heads; returns the element counts of
/// a `[batch, seq, heads, head_dim]` tensor and of a K/V tensor.
fn shape(batch: c_int, seq_len: c_int, n_heads: c_int, head_dim: c_int, shared_kv: bool) -> Result<(AttnShape, usize, usize)> {
    let batch = check::dim("batch", batch)?;
    let seq = check::dim("seq_len", seq_len)?;
    let heads = check::dim("n_heads", n_heads)?;
    let head_dim = check::dim("head_dim", head_dim)?;
    let kv_heads = if shared_kv { 1 } else { heads };
    let q = check::elements(&[("batch", batch), ("seq_len", seq), ("n_heads", heads), ("head_dim", head_dim)])?;
    let kv = check::elements(&[("batch", batch), ("seq_len", seq), ("kv heads", kv_heads), ("head_dim", head_dim)])?;
    Ok((AttnShape { batch, seq, heads, kv_heads, head_dim }, q, kv))
}

/// Elements of the `[batch, n_heads, seq, seq]` score matrix.
fn score_len(s: &AttnShape) -> Result<usize> {
    check::elements(&[("batch", s.batch), ("n_heads", s.heads), ("seq_len", s.seq), ("seq_len", s.seq)])
}

/// Causal attention scores with one shared KV head: `Q[batch, seq, n_heads, head_dim]`,
/// `K[batch, seq, head_dim]` -> `scores[batch, n_heads, seq, seq] = scale * Q Kᵀ`,
/// `-inf` above the diagonal. Returns -2 for NULL pointers with a non-empty shape,
/// negative or overflowing sizes, or overlaps.
#[unsafe(no_mangle)]
#[allow(non_snake_case)] // the ABI's names
pub unsafe extern "C" fn cuda_attention_scores(
    Q: *const f32,
    K: *const f32,
    scores: *mut f32,
    batch: c_int,
    n_heads: c_int,
    seq_len: c_int,
    head_dim: c_int,
    scale: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_attention_scores", {
        let (s, q_len, kv_len) = shape(batch, seq_len, n_heads, head_dim, true)?;
        let out_len = score_len(&s)?;
        let q = Input::new("Q", Q, if out_len == 0 { 0 } else { q_len })?;
        let k = Input::new("K", K, if out_len == 0 { 0 } else { kv_len })?;
        let out = Output::new("scores", scores, out_len)?;
        let flops = 2.0 * out_len as f64 * s.head_dim as f64;
        let call = Call::new(stream, out_len, [q.region(), k.region(), out.region()])?.flops(flops).kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe { attention::scores(&q.read(&[out.region()]), &k.read(&[out.region()]), out.slice(), s, scale) },
            |g, p| unsafe { ops::attention_scores(g, stream.cast(), p[0], p[1], p[2], s, scale) },
        )
    })
}

/// Causal attention output with one shared KV head:
/// `output[batch, seq, n_heads, head_dim] = weights[batch, n_heads, seq, seq] · V[batch, seq, head_dim]`,
/// summing only keys `<=` the query position. Returns -2 as `cuda_attention_scores`.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuda_attention_output(
    weights: *const f32,
    V: *const f32,
    output: *mut f32,
    batch: c_int,
    n_heads: c_int,
    seq_len: c_int,
    head_dim: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_attention_output", {
        let (s, out_len, kv_len) = shape(batch, seq_len, n_heads, head_dim, true)?;
        let w = Input::new("weights", weights, if out_len == 0 { 0 } else { score_len(&s)? })?;
        let v = Input::new("V", V, if out_len == 0 { 0 } else { kv_len })?;
        let out = Output::new("output", output, out_len)?;
        let flops = out_len as f64 * s.seq as f64;
        let call = Call::new(stream, out_len, [w.region(), v.region(), out.region()])?.flops(flops).kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe { attention::output(&w.read(&[out.region()]), &v.read(&[out.region()]), out.slice(), s) },
            |g, p| unsafe { ops::attention_output(g, stream.cast(), p[0], p[1], p[2], s) },
        )
    })
}

/// Fused multi-head attention without materialising the seq x seq scores:
/// `output = softmax(scale · Q Kᵀ [+ causal mask if is_causal != 0]) · V`, all of
/// `Q`, `K`, `V`, `output` `[batch, seq_len, n_heads, head_dim]`. A query whose keys
/// are all masked yields zeros. Returns -2 for NULL pointers with a non-empty
/// shape, negative or overflowing sizes, or overlaps. `output` may be `Q`.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuda_flash_attention(
    Q: *const f32,
    K: *const f32,
    V: *const f32,
    output: *mut f32,
    batch: c_int,
    seq_len: c_int,
    n_heads: c_int,
    head_dim: c_int,
    scale: f32,
    is_causal: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_flash_attention", {
        let (s, n, _) = shape(batch, seq_len, n_heads, head_dim, false)?;
        unsafe { fused(Q, K, V, output, s, n, n, scale, is_causal != 0, std::ptr::null(), stream) }
    })
}

/// Fused attention with one shared KV head: `Q`, `output` `[batch, seq_len,
/// n_heads, head_dim]`, `K`, `V` `[batch, seq_len, head_dim]`. `mask` NULL means
/// causal; otherwise it is an additive `[seq_len, seq_len]` mask (0 / -inf). A
/// query whose keys are all masked yields zeros. Returns -2 as `cuda_flash_attention`.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cuda_mqa_attention(
    Q: *const f32,
    K: *const f32,
    V: *const f32,
    output: *mut f32,
    mask: *const f32,
    batch: c_int,
    seq_len: c_int,
    n_heads: c_int,
    head_dim: c_int,
    scale: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_mqa_attention", {
        let (s, n, kv) = shape(batch, seq_len, n_heads, head_dim, true)?;
        unsafe { fused(Q, K, V, output, s, n, kv, scale, mask.is_null(), mask, stream) }
    })
}

/// Shared body of the fused attention calls: causal, or with an additive
/// `[seq, seq]` mask when `mask` is not NULL, or unmasked.
#[allow(non_snake_case)]
unsafe fn fused(
    Q: *const f32,
    K: *const f32,
    V: *const f32,
    output: *mut f32,
    s: AttnShape,
    n: usize,
    kv_len: usize,
    scale: f32,
    causal: bool,
    mask: *const f32,
    stream: *mut c_void,
) -> Result<()> {
    let used = |len: usize| if n == 0 { 0 } else { len };
    let q = Input::new("Q", Q, n)?;
    let k = Input::new("K", K, used(kv_len))?;
    let v = Input::new("V", V, used(kv_len))?;
    let mask_len = if mask.is_null() { 0 } else { used(check::elements(&[("seq_len", s.seq), ("seq_len", s.seq)])?) };
    let m = Input::new("mask", mask, mask_len)?;
    let out = Output::new("output", output, n)?;
    let flops = 4.0 * n as f64 * s.seq as f64;
    let call = Call::new(stream, n, [q.region(), k.region(), v.region(), m.region(), out.region()])?.flops(flops).kernels_in_place(false);
    let cpu = || {
        let written = [out.region()];
        let (q, k, v, m) = unsafe { (q.read(&written), k.read(&written), v.read(&written), m.read(&written)) };
        let mask = match (causal, mask.is_null()) {
            (true, _) => Mask::Causal,
            (false, false) => Mask::Additive(&m),
            (false, true) => Mask::None,
        };
        attention::attention(&q, &k, &v, unsafe { out.slice() }, s, scale, mask);
    };
    if s.head_dim > ops::FLASH_MAX_HEAD_DIM {
        return dispatch::run_cpu_only(&call, cpu);
    }
    // An empty mask region's pointer is the caller's NULL: no additive mask.
    dispatch::run(&call, cpu, |g, p| unsafe { ops::flash_attention(g, stream.cast(), p[0], p[1], p[2], p[4], p[3], s, scale, causal) })
}
