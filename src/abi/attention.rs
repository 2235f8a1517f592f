//! Attention.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, require};
use crate::cpu::attention::{self, Attention, AttnShape};
use crate::cpu::convert::with_type;
use crate::dispatch::{self, Call};
use crate::gpu::ops;
use crate::gpu::widen::Use;
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
        let [q, k, v, m] = [&q, &k, &v, &m].map(|x| unsafe { x.read(&written) });
        let general = Attention { batch: s.batch, q_len: s.seq, kv_len: s.seq, kv_capacity: s.seq, heads: s.heads, kv_heads: s.kv_heads, head_dim: s.head_dim, pos0: 0, causal, scale };
        let mask = (!causal && !mask.is_null()).then_some(&m[..]);
        attention::attention_forward(&general, &q, &k, &v, mask, unsafe { out.slice() }, None);
    };
    if s.head_dim > ops::FLASH_MAX_HEAD_DIM {
        return dispatch::run_cpu_only(&call, cpu);
    }
    // An empty mask region's pointer is the caller's NULL: no additive mask.
    dispatch::run(&call, cpu, |g, p| unsafe { ops::flash_attention(g, stream.cast(), p[0], p[1], p[2], p[4], p[3], s, scale, causal) })
}

/// Checked shape of general attention (`cudann_attention_forward` and its
/// backward): returns it and the element counts of Q/output, K/V and lse.
fn general(batch: c_int, q_len: c_int, kv_len: c_int, kv_capacity: c_int, n_heads: c_int, n_kv_heads: c_int, head_dim: c_int, pos0: c_int, is_causal: c_int, scale: f32) -> Result<(Attention, usize, usize, usize)> {
    let batch = check::dim("batch", batch)?;
    let (q_len, kv_len, kv_capacity) = (check::dim("q_len", q_len)?, check::dim("kv_len", kv_len)?, check::dim("kv_capacity", kv_capacity)?);
    let (heads, kv_heads, head_dim) = (check::dim("n_heads", n_heads)?, check::dim("n_kv_heads", n_kv_heads)?, check::dim("head_dim", head_dim)?);
    let pos0 = check::dim("pos0", pos0)?;
    let causal = check::flag("is_causal", is_causal)?;
    require(kv_capacity >= kv_len, || format!("kv_capacity ({kv_capacity}) must be >= kv_len ({kv_len})"))?;
    require(heads == 0 || (kv_heads > 0 && heads % kv_heads == 0), || format!("n_kv_heads ({kv_heads}) must divide n_heads ({heads})"))?;
    require(scale.is_finite(), || format!("scale must be finite (got {scale})"))?;
    let q = check::elements(&[("batch", batch), ("q_len", q_len), ("n_heads", heads), ("head_dim", head_dim)])?;
    let kv = check::elements(&[("batch", batch), ("kv_capacity", kv_capacity), ("n_kv_heads", kv_heads), ("head_dim", head_dim)])?;
    let lse = check::elements(&[("batch", batch), ("q_len", q_len), ("n_heads", heads)])?;
    let shape = Attention { batch, q_len, kv_len, kv_capacity, heads, kv_heads, head_dim, pos0, causal, scale };
    Ok((shape, q, kv, lse))
}

/// The optional additive `[q_len, kv_len]` mask of general attention (read
/// only when the call has work).
fn general_mask<'a>(mask: *const f32, a: &Attention, used: bool) -> Result<Input<'a, f32>> {
    let len = if mask.is_null() || !used { 0 } else { check::elements(&[("q_len", a.q_len), ("kv_len", a.kv_len)])? };
    Input::new("mask", mask, len)
}

/// General attention forward, for training and for decoding against a KV
/// cache: `Q`, `output` `[batch, q_len, n_heads, head_dim]`; `K`, `V`
/// `[batch, kv_capacity, n_kv_heads, head_dim]` of which keys `0..kv_len` are
/// used (`kv_capacity` is the cache's length; equal to `kv_len` for plain
/// tensors). `n_kv_heads` divides `n_heads`: query head `n` reads KV head
/// `n / (n_heads / n_kv_heads)` (MHA, GQA, MQA). Query `i` sits at position
/// `pos0 + i`; with `is_causal = 1` it sees keys `j <= pos0 + i` (training:
/// `pos0 = 0`, `q_len = kv_len`; one decoding step: `q_len = 1`,
/// `pos0 = kv_len - 1`). `mask` is NULL or an additive `[q_len, kv_len]` float
/// mask (0 / -inf) shared by every batch entry and head.
/// `output = softmax(scale * Q Kᵀ + mask) V`; `lse` (NULL: not written), of
/// shape `[batch, q_len, n_heads]`, receives each row's `ln Σ_j exp(score_j)`,
/// `score = scale * q·k_j + mask` (-inf for keys causality hides), for
/// `cudann_attention_backward`. A row whose keys are all masked gets zeros
/// and lse = -inf. Memory O(kv_len) per row: the scores are never held whole.
/// Tensors are of data type `dtype` (`CUDANN_F32`, `CUDANN_F16` or
/// `CUDANN_BF16`: half precision is widened, computed in float32 and the
/// output rounded once); `mask` and `lse` are float. Returns -2 for NULL
/// pointers with a non-empty shape, negative or overflowing sizes,
/// `kv_capacity < kv_len`, `n_kv_heads` not dividing `n_heads`, `is_causal`
/// not 0 or 1, a non-finite `scale`, a bad `dtype`, or overlaps. On the GPU
/// (`head_dim <= 256`; larger: device pointers -1) a flash kernel in base-2
/// exponentials agrees with the CPU within float32 rounding; decoding (at
/// most 8 query rows per KV head, `head_dim % 4 == 0`) splits the cache's
/// keys across blocks and combines their partial sums in a fixed order (the
/// same bits run to run); half tensors go through float32 copies there.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cudann_attention_forward(
    Q: *const c_void,
    K: *const c_void,
    V: *const c_void,
    mask: *const f32,
    output: *mut c_void,
    lse: *mut f32,
    batch: c_int,
    q_len: c_int,
    kv_len: c_int,
    kv_capacity: c_int,
    n_heads: c_int,
    n_kv_heads: c_int,
    head_dim: c_int,
    pos0: c_int,
    is_causal: c_int,
    scale: f32,
    dtype: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_attention_forward", {
        let dtype = check::float_type("dtype", dtype)?;
        let (a, q_n, kv_n, lse_n) = general(batch, q_len, kv_len, kv_capacity, n_heads, n_kv_heads, head_dim, pos0, is_causal, scale)?;
        let work = q_n + if lse.is_null() { 0 } else { lse_n };
        let reads = |len: usize| if work == 0 { 0 } else { len };
        with_type!(dtype, T => {
            let q = Input::new("Q", Q.cast::<T>(), reads(q_n))?;
            let k = Input::new("K", K.cast::<T>(), reads(kv_n))?;
            let v = Input::new("V", V.cast::<T>(), reads(kv_n))?;
            let m = general_mask(mask, &a, work > 0)?;
            let out = Output::new("output", output.cast::<T>(), q_n)?;
            let l = Output::new("lse", lse, if lse.is_null() { 0 } else { lse_n })?;
            let flops = 4.0 * q_n as f64 * a.kv_len as f64;
            let call = Call::new(stream, work, [q.region(), k.region(), v.region(), m.region(), out.region(), l.region()])?.flops(flops);
            let cpu = || unsafe {
                let written = [out.region(), l.region()];
                let (q, k, v, m) = (q.read(&written), k.read(&written), v.read(&written), m.read(&written));
                let lse = (!lse.is_null()).then(|| l.slice());
                attention::attention_forward_ex(&a, &q, &k, &v, (!mask.is_null()).then_some(&m[..]), out.slice(), lse);
            };
            if a.head_dim > ops::FLASH_MAX_HEAD_DIM {
                return dispatch::run_cpu_only(&call, cpu);
            }
            let uses = [Use::In, Use::In, Use::In, Use::Keep, Use::Out, Use::Keep];
            dispatch::run_typed(dtype, &call, uses, cpu, |g, p| unsafe { ops::attention_forward(g, stream.cast(), [p[0], p[1], p[2], p[4], p[3], p[5]], &a) })
        })
    })
}

/// General attention backward (float32): the gradients of
/// `cudann_attention_forward`'s output with respect to `Q`, `K` and `V`, from
/// `d_output`, the forward's inputs, its `output` and its `lse` (same shapes;
/// here `K`, `V`, `d_k`, `d_v` are `[batch, kv_len, n_kv_heads, head_dim]`).
/// With `P = exp(S - lse)`, `dS = P * (d_output Vᵀ - rowsum(d_output * output))`:
/// `d_v = Pᵀ d_output`, `d_k = scale dSᵀ Q` (each summed over the query heads
/// sharing that KV head), `d_q = scale dS K`. Written, not accumulated;
/// deterministic. There is no KV capacity here: `K` and `V` hold exactly
/// `kv_len` positions. Returns -2 for NULL pointers (`lse` included) with a
/// non-empty shape, negative or overflowing sizes, `n_kv_heads` not dividing
/// `n_heads`, `is_causal` not 0 or 1, a non-finite `scale`, or overlaps. On the
/// GPU (`head_dim <= 256`; larger: device pointers -1) deterministic kernels
/// (no atomics) agree with the CPU within float32 rounding; with
/// `CUDANN_ALLOW_TF32=1`, on sm_80 and newer, `head_dim <= 64` (a multiple of
/// 4, 16-byte aligned tensors) runs on TF32 tensor cores, within ~1e-3.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn cudann_attention_backward(
    d_output: *const f32,
    Q: *const f32,
    K: *const f32,
    V: *const f32,
    mask: *const f32,
    output: *const f32,
    lse: *const f32,
    d_q: *mut f32,
    d_k: *mut f32,
    d_v: *mut f32,
    batch: c_int,
    q_len: c_int,
    kv_len: c_int,
    n_heads: c_int,
    n_kv_heads: c_int,
    head_dim: c_int,
    pos0: c_int,
    is_causal: c_int,
    scale: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_attention_backward", {
        let (a, q_n, kv_n, lse_n) = general(batch, q_len, kv_len, kv_len, n_heads, n_kv_heads, head_dim, pos0, is_causal, scale)?;
        let work = q_n + kv_n;
        let dy = Input::new("d_output", d_output, q_n)?;
        let q = Input::new("Q", Q, q_n)?;
        let k = Input::new("K", K, kv_n)?;
        let v = Input::new("V", V, kv_n)?;
        let m = general_mask(mask, &a, work > 0)?;
        let o = Input::new("output", output, q_n)?;
        let l = Input::new("lse", lse, if q_n == 0 { 0 } else { lse_n })?;
        let dq = Output::new("d_q", d_q, q_n)?;
        let dk = Output::new("d_k", d_k, kv_n)?;
        let dv = Output::new("d_v", d_v, kv_n)?;
        let regions = [dy.region(), q.region(), k.region(), v.region(), m.region(), o.region(), l.region(), dq.region(), dk.region(), dv.region()];
        let call = Call::new(stream, work, regions)?.flops(10.0 * q_n as f64 * a.kv_len as f64);
        let cpu = || unsafe {
            let written = [dq.region(), dk.region(), dv.region()];
            let [dy, q, k, v, m, o, l] = [&dy, &q, &k, &v, &m, &o, &l].map(|x| x.read(&written));
            let mask = (!mask.is_null()).then_some(&m[..]);
            attention::attention_backward(&a, &dy, &q, &k, &v, mask, &o, &l, dq.slice(), dk.slice(), dv.slice());
        };
        if a.head_dim > ops::FLASH_MAX_HEAD_DIM {
            return dispatch::run_cpu_only(&call, cpu);
        }
        dispatch::run(&call, cpu, |g, p| unsafe { ops::attention_backward(g, stream.cast(), [p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9]], &a) })
    })
}

/// Writes new keys and values into a preallocated KV cache: `k_cache[b, pos + t]
/// = k_new[b, t]` and the same for `v`, for `t < new_len`, with `k_new`, `v_new`
/// `[batch, new_len, n_kv_heads, head_dim]` and the caches `[batch, max_seq,
/// n_kv_heads, head_dim]` of data type `dtype` (`CUDANN_F32`, `CUDANN_F16` or
/// `CUDANN_BF16`, copied as they are). Other cache rows are untouched. Returns -2
/// unless `pos + new_len <= max_seq`, and for NULL pointers with a non-empty
/// shape, negative or overflowing sizes, a bad `dtype`, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_kv_cache_write(
    k_new: *const c_void,
    v_new: *const c_void,
    k_cache: *mut c_void,
    v_cache: *mut c_void,
    batch: c_int,
    new_len: c_int,
    max_seq: c_int,
    n_kv_heads: c_int,
    head_dim: c_int,
    pos: c_int,
    dtype: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_kv_cache_write", {
        let dtype = check::float_type("dtype", dtype)?;
        let (batch, new_len, max_seq) = (check::dim("batch", batch)?, check::dim("new_len", new_len)?, check::dim("max_seq", max_seq)?);
        let (kv_heads, head_dim, pos) = (check::dim("n_kv_heads", n_kv_heads)?, check::dim("head_dim", head_dim)?, check::dim("pos", pos)?);
        require(pos + new_len <= max_seq, || format!("pos + new_len ({pos} + {new_len}) must be <= max_seq ({max_seq})"))?;
        let new_n = check::elements(&[("batch", batch), ("new_len", new_len), ("n_kv_heads", kv_heads), ("head_dim", head_dim)])?;
        let cache_n = if new_n == 0 { 0 } else { check::elements(&[("batch", batch), ("max_seq", max_seq), ("n_kv_heads", kv_heads), ("head_dim", head_dim)])? };
        with_type!(dtype, T => {
            let kn = Input::new("k_new", k_new.cast::<T>(), new_n)?;
            let vn = Input::new("v_new", v_new.cast::<T>(), new_n)?;
            let kc = Output::new("k_cache", k_cache.cast::<T>(), cache_n)?;
            let vc = Output::new("v_cache", v_cache.cast::<T>(), cache_n)?;
            // One kernel writes both caches, each thread reading its k and v
            // elements before writing: an input may be either cache's buffer.
            let call = Call::new(stream, new_n, [kn.region(), vn.region(), kc.region(), vc.region()])?;
            let row = kv_heads * head_dim;
            dispatch::run(
                &call,
                || unsafe {
                    // Both inputs before either cache is written: k_new may be
                    // v_cache's buffer and v_new k_cache's.
                    let written = [kc.region(), vc.region()];
                    let (k, v) = (kn.read(&written), vn.read(&written));
                    attention::kv_cache_write(&k, kc.slice(), new_len, max_seq, row, pos);
                    attention::kv_cache_write(&v, vc.slice(), new_len, max_seq, row, pos);
                },
                |g, p| unsafe { ops::kv_cache_write(g, stream.cast(), dtype, p[0], p[1], p[2], p[3], batch, new_len, max_seq, row, pos) },
            )
        })
    })
}
