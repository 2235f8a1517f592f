//! Mixture-of-experts routing: the router's backward, dispatch of token rows
//! to experts, and their weighted combination, each with its backward.
//!
//! A token-expert pair is `t * k + j`: token `t`'s `j`-th choice in
//! `indices[tokens, k]` (as `cuda_softmax_topk` writes them). The dispatched
//! layout holds one row per pair, grouped by expert (expert 0's pairs first), in
//! token order within an expert; `order[p]` is the pair at row `p` and expert
//! `e`'s rows are `offsets[e] .. offsets[e + 1]`.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, require};
use crate::cpu::{alloc, loss, moe};
use crate::dispatch::{self, Call};
use crate::error::Result;
use crate::gpu::ops;

/// Checked `tokens`, `dim`, `k`: (tokens, dim, k, pairs, token rows, pair rows).
fn routing(tokens: c_int, dim: c_int, k: c_int) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (tokens, dim) = (check::dim("tokens", tokens)?, check::dim("dim", dim)?);
    require(k >= 1, || format!("k must be >= 1 (got {k})"))?;
    let k = k as usize;
    let pairs = check::elements(&[("tokens", tokens), ("k", k)])?;
    let token_rows = check::elements(&[("tokens", tokens), ("dim", dim)])?;
    let pair_rows = check::elements(&[("tokens", tokens), ("k", k), ("dim", dim)])?;
    Ok((tokens, dim, k, pairs, token_rows, pair_rows))
}

/// `order` as a dispatch wrote it: where the host can read it, a permutation
/// of the pairs `0 .. pairs` (anything else would read or write out of bounds).
fn order<'a>(order: *const i32, pairs: usize) -> Result<Input<'a, i32>> {
    let order = Input::new("order", order, pairs)?;
    order.indices_below(pairs, "tokens * k", false)?;
    let mut seen = alloc::filled(pairs, false);
    // SAFETY: host memory of `pairs` elements (empty for device memory).
    for (p, &pair) in unsafe { order.host_view() }.iter().enumerate() {
        require(!std::mem::replace(&mut seen[pair as usize], true), || format!("order[{p}] = {pair} repeats a pair (order must be a permutation)"))?;
    }
    Ok(order)
}

/// Router backward: the gradient through `cuda_softmax_topk`'s renormalised
/// weights into the router logits. `weights`, `indices`, `d_weights` are
/// `[tokens, k]`; `d_logits[tokens, n_experts]` gets
/// `d_logits[t, e_j] = w_j * (dw_j - Σ_i w_i dw_i)` and 0 for the experts not
/// chosen (written, not accumulated). Add the aux-loss path's gradient
/// (`cudann_aux_loss_backward` then `cudann_softmax_backward`) to it.
/// Returns -2 unless `1 <= k <= n_experts`, for an index outside
/// `[0, n_experts)` in host memory, NULL pointers with a non-empty shape,
/// negative or overflowing sizes, or overlaps. On the all-device path an index
/// outside `[0, n_experts)` matches no expert.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_moe_router_backward(
    weights: *const f32,
    indices: *const i32,
    d_weights: *const f32,
    d_logits: *mut f32,
    tokens: c_int,
    n_experts: c_int,
    k: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_moe_router_backward", {
        let (tokens, experts) = (check::dim("tokens", tokens)?, check::dim("n_experts", n_experts)?);
        require(k >= 1 && k as usize <= experts, || format!("k must be in 1..=n_experts ({experts}) (got {k})"))?;
        let k = k as usize;
        let pairs = check::elements(&[("tokens", tokens), ("k", k)])?;
        let d_len = check::elements(&[("tokens", tokens), ("n_experts", experts)])?;
        let w = Input::new("weights", weights, pairs)?;
        let idx = Input::new("indices", indices, pairs)?;
        idx.indices_below(experts, "n_experts", false)?;
        let dw = Input::new("d_weights", d_weights, pairs)?;
        let d = Output::new("d_logits", d_logits, d_len)?;
        let call = Call::new(stream, d_len, [w.region(), idx.region(), dw.region(), d.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe {
                let written = [d.region()];
                moe::router_backward(&w.read(&written), &idx.read(&written), &dw.read(&written), d.slice(), experts, k)
            },
            |g, p| unsafe { ops::moe_router_backward(g, stream.cast(), p[0], p[1], p[2], p[3], tokens, experts, k) },
        )
    })
}

/// Aux-loss backward: the gradient of `cuda_aux_loss_forward`'s loss, times
/// `scale` (the loss's own upstream gradient, 1 for the loss as is), into the
/// router probabilities: `d_probs[t, e] = scale * alpha * n_experts *
/// f_counts[e] / tokens` for every token (`f_counts` as the forward wrote
/// it, a constant). Returns -2 for non-finite `alpha` or `scale`, NULL
/// pointers with a non-empty shape, negative or overflowing sizes, or
/// overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_aux_loss_backward(f_counts: *const f32, d_probs: *mut f32, tokens: c_int, n_experts: c_int, alpha: f32, scale: f32, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_aux_loss_backward", {
        let (tokens, experts) = (check::dim("tokens", tokens)?, check::dim("n_experts", n_experts)?);
        require(alpha.is_finite(), || format!("alpha must be finite (got {alpha})"))?;
        require(scale.is_finite(), || format!("scale must be finite (got {scale})"))?;
        let n = check::elements(&[("tokens", tokens), ("n_experts", experts)])?;
        let f = Input::new("f_counts", f_counts, if n == 0 { 0 } else { experts })?;
        let d = Output::new("d_probs", d_probs, n)?;
        let call = Call::new(stream, n, [f.region(), d.region()])?;
        dispatch::run(
            &call,
            || unsafe { loss::aux_loss_backward(&f.read(&[d.region()]), d.slice(), alpha, scale) },
            |g, p| unsafe { ops::aux_loss_backward(g, stream.cast(), p[0], p[1], tokens, experts, loss::aux_loss_backward_factor(alpha, scale, tokens, experts)) },
        )
    })
}

/// Dispatch: groups the `tokens * k` token-expert pairs of `indices[tokens, k]`
/// by expert (stable: token order within an expert), writing `order[tokens*k]`
/// (the pair `t * k + j` at each row), `offsets[n_experts + 1]` (expert `e`'s
/// rows are `offsets[e] .. offsets[e+1]`; an expert no token chose has none),
/// and `output[tokens*k, dim]`, row `p` being `input[order[p] / k]`. Returns -2
/// for an index outside `[0, n_experts)` in host memory, `k < 1`, NULL
/// pointers with a non-empty shape, negative or overflowing sizes, or
/// overlaps. On the all-device path (indices not checked by the host) a pair
/// whose index is outside `[0, n_experts)` belongs to no expert:
/// `offsets[n_experts]` counts the others, and the rows past it get order -1
/// and NaN.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_moe_dispatch(
    input: *const f32,
    indices: *const i32,
    output: *mut f32,
    order: *mut i32,
    offsets: *mut i32,
    tokens: c_int,
    dim: c_int,
    n_experts: c_int,
    k: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_moe_dispatch", {
        let (_, dim, k, pairs, token_rows, pair_rows) = routing(tokens, dim, k)?;
        let experts = check::dim("n_experts", n_experts)?;
        require(pairs <= i32::MAX as usize, || format!("tokens * k ({pairs}) must fit an int32 order entry"))?;
        let x = Input::new("input", input, token_rows)?;
        let idx = Input::new("indices", indices, pairs)?;
        idx.indices_below(experts, "n_experts", false)?;
        let y = Output::new("output", output, pair_rows)?;
        let ord = Output::new("order", order, pairs)?;
        let off = Output::new("offsets", offsets, if pairs == 0 { 0 } else { experts + 1 })?;
        let call = Call::new(stream, pairs, [x.region(), idx.region(), y.region(), ord.region(), off.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe {
                let written = [y.region(), ord.region(), off.region()];
                let (grouped, starts) = moe::group_by_expert(&idx.read(&written), experts);
                moe::dispatch(&x.read(&written), &grouped, y.slice(), dim, k);
                ord.slice().copy_from_slice(&grouped);
                off.slice().copy_from_slice(&starts);
            },
            |g, p| unsafe { ops::moe_dispatch(g, stream.cast(), p[0], p[1], p[2], p[3], p[4], pairs, dim, experts, k) },
        )
    })
}

/// Dispatch backward: `d_input[t] = Σ_j d_output[row of pair t*k + j]` (the
/// rows a dispatch copied token `t` into, summed in `j` order; written, not
/// accumulated). `order` is the dispatch's. Returns -2 when `order` (in host
/// memory) is not a permutation of `0 .. tokens*k`, and as
/// `cudann_moe_dispatch`. On the all-device path `order` is not checked: it must
/// be a dispatch's (entries outside `[0, tokens*k)` are skipped).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_moe_dispatch_backward(d_output: *const f32, order: *const i32, d_input: *mut f32, tokens: c_int, dim: c_int, k: c_int, stream: *mut c_void) -> i32 {
    ffi_fn!("cudann_moe_dispatch_backward", {
        let (_, dim, k, pairs, token_rows, pair_rows) = routing(tokens, dim, k)?;
        let dy = Input::new("d_output", d_output, pair_rows)?;
        let ord = self::order(order, if token_rows == 0 { 0 } else { pairs })?;
        let dx = Output::new("d_input", d_input, token_rows)?;
        let call = Call::new(stream, token_rows, [dy.region(), ord.region(), dx.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe {
                let written = [dx.region()];
                moe::dispatch_backward(&dy.read(&written), &ord.read(&written), dx.slice(), dim, k)
            },
            |g, p| unsafe { ops::moe_dispatch_backward(g, stream.cast(), p[0], p[1], p[2], token_rows / dim, dim, k) },
        )
    })
}

/// Combine: `output[t] = Σ_j weights[t, j] * expert_output[row of pair t*k + j]`
/// (summed in `j` order), `expert_output[tokens*k, dim]` in the dispatched
/// layout of `order`, `weights[tokens, k]` as `cuda_softmax_topk` wrote them.
/// Returns -2 as `cudann_moe_dispatch_backward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_moe_combine(
    expert_output: *const f32,
    weights: *const f32,
    order: *const i32,
    output: *mut f32,
    tokens: c_int,
    dim: c_int,
    k: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_moe_combine", {
        let (_, dim, k, pairs, token_rows, pair_rows) = routing(tokens, dim, k)?;
        let used = |len: usize| if token_rows == 0 { 0 } else { len };
        let e = Input::new("expert_output", expert_output, used(pair_rows))?;
        let w = Input::new("weights", weights, used(pairs))?;
        let ord = self::order(order, used(pairs))?;
        let y = Output::new("output", output, token_rows)?;
        let call = Call::new(stream, token_rows, [e.region(), w.region(), ord.region(), y.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe {
                let written = [y.region()];
                moe::combine(&e.read(&written), &w.read(&written), &ord.read(&written), y.slice(), dim, k)
            },
            |g, p| unsafe { ops::moe_combine(g, stream.cast(), p[0], p[1], p[2], p[3], token_rows / dim, dim, k) },
        )
    })
}

/// Combine backward: `d_expert_output[row of pair t*k + j] = weights[t, j] *
/// d_output[t]` and `d_weights[t, j] = d_output[t] · expert_output[row of pair
/// t*k + j]` (written, not accumulated). Returns -2 as `cudann_moe_combine`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_moe_combine_backward(
    d_output: *const f32,
    expert_output: *const f32,
    weights: *const f32,
    order: *const i32,
    d_expert_output: *mut f32,
    d_weights: *mut f32,
    tokens: c_int,
    dim: c_int,
    k: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_moe_combine_backward", {
        let (_, dim, k, pairs, token_rows, pair_rows) = routing(tokens, dim, k)?;
        let dy = Input::new("d_output", d_output, token_rows)?;
        let e = Input::new("expert_output", expert_output, pair_rows)?;
        let w = Input::new("weights", weights, pairs)?;
        let ord = self::order(order, pairs)?;
        let de = Output::new("d_expert_output", d_expert_output, pair_rows)?;
        let dw = Output::new("d_weights", d_weights, pairs)?;
        let call = Call::new(stream, pairs, [dy.region(), e.region(), w.region(), ord.region(), de.region(), dw.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || unsafe {
                let written = [de.region(), dw.region()];
                let [dy, e, w] = [&dy, &e, &w].map(|x| x.read(&written));
                moe::combine_backward(&dy, &e, &w, &ord.read(&written), de.slice(), dw.slice(), dim, k)
            },
            |g, p| unsafe { ops::moe_combine_backward(g, stream.cast(), p[0], p[1], p[2], p[3], p[4], p[5], pairs, dim, k) },
        )
    })
}
