//! Cross-entropy and the MoE auxiliary loss.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, require};
use crate::cpu::{loss, par::Src};
use crate::dispatch::{self, Call};
use crate::gpu::ops;
use crate::error::Result;

/// Checked `[batch_seq, vocab_size]` shape and targets, each `< vocab_size`
/// (negative = padding) where the host can read them (device targets >= vocab
/// make the loss NaN instead). Returns (targets, vocab, elements).
fn targets_checked<'a>(targets: *const c_int, batch_seq: c_int, vocab_size: c_int) -> Result<(Input<'a, c_int>, usize, usize)> {
    let rows = check::dim("batch_seq", batch_seq)?;
    let vocab = check::dim("vocab_size", vocab_size)?;
    let n = check::elements(&[("batch_seq", rows), ("vocab_size", vocab)])?;
    let t = Input::new("targets", targets, if n == 0 { 0 } else { rows })?;
    if let Some((row, &bad)) = unsafe { t.host_view() }.iter().enumerate().find(|&(_, &v)| v >= vocab_size) {
        return Err(crate::error::invalid(format!("targets[{row}] = {bad} is >= vocab_size ({vocab})")));
    }
    Ok((t, vocab, n))
}

/// Cross-entropy forward: `log_probs[batch_seq, vocab_size] = log_softmax(logits)`
/// row-wise, and `loss[0]` = mean negative log-likelihood of `targets[batch_seq]`.
/// A negative target (e.g. -100) marks a padding row, excluded from the mean;
/// with no counted row the loss is 0. `log_probs` may be `logits`. Returns -2 for
/// a target `>= vocab_size`, NULL pointers, negative or overflowing sizes, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_cross_entropy_forward(
    logits: *const f32,
    targets: *const c_int,
    loss: *mut f32,
    log_probs: *mut f32,
    batch_seq: c_int,
    vocab_size: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_cross_entropy_forward", {
        let (t, vocab, n) = targets_checked(targets, batch_seq, vocab_size)?;
        let x = Input::new("logits", logits, n)?;
        let l = Output::new("loss", loss, if n == 0 { 0 } else { 1 })?;
        let lp = Output::new("log_probs", log_probs, n)?;
        let call = Call::new(stream, n, [x.region(), t.region(), l.region(), lp.region()])?.kernels_in_place(false);
        dispatch::run(
            &call,
            || {
                let t = unsafe { t.read(&[l.region(), lp.region()]) };
                let mean = loss::cross_entropy_forward(unsafe { Src::of(&x, &lp, &[l.region()]) }, &t, unsafe { lp.slice() }, vocab);
                unsafe { l.slice()[0] = mean }
            },
            |g, p| unsafe { ops::cross_entropy_forward(g, stream.cast(), p[0], p[1], p[2], p[3], n / vocab, vocab) },
        )
    })
}

/// Cross-entropy backward: `d_logits = (exp(log_probs) - onehot(target)) * scale`,
/// zero rows for negative (padding) targets. `d_logits` may be `log_probs`.
/// Returns -2 as `cuda_cross_entropy_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_cross_entropy_backward(
    log_probs: *const f32,
    targets: *const c_int,
    d_logits: *mut f32,
    batch_seq: c_int,
    vocab_size: c_int,
    scale: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_cross_entropy_backward", {
        let (t, vocab, n) = targets_checked(targets, batch_seq, vocab_size)?;
        let lp = Input::new("log_probs", log_probs, n)?;
        let d = Output::new("d_logits", d_logits, n)?;
        let call = Call::new(stream, n, [lp.region(), t.region(), d.region()])?;
        dispatch::run(
            &call,
            || unsafe { loss::cross_entropy_backward(Src::of(&lp, &d, &[]), &t.read(&[d.region()]), d.slice(), vocab, scale) },
            |g, p| unsafe { ops::cross_entropy_backward(g, stream.cast(), p[0], p[1], p[2], n / vocab, vocab, scale) },
        )
    })
}

/// MoE load-balancing loss. `router_probs[batch_seq, n_experts]`,
/// `expert_indices[batch_seq, top_k]`: `f_counts[e]` = fraction of tokens whose
/// top-k choices include expert `e`; `p_means[e]` = mean router probability of `e`;
/// `aux_loss[0] = alpha * n_experts * Σ f_counts[e] * p_means[e]`. Returns -2 unless
/// `1 <= top_k <= n_experts` and every index is in `[0, n_experts)`, and for NULL
/// pointers, negative or overflowing sizes, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_aux_loss_forward(
    router_probs: *const f32,
    expert_indices: *const c_int,
    aux_loss: *mut f32,
    f_counts: *mut f32,
    p_means: *mut f32,
    batch_seq: c_int,
    n_experts: c_int,
    top_k: c_int,
    alpha: f32,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_aux_loss_forward", {
        let rows = check::dim("batch_seq", batch_seq)?;
        let experts = check::dim("n_experts", n_experts)?;
        require(top_k >= 1 && top_k <= n_experts, || format!("top_k must be in 1..=n_experts ({experts}) (got {top_k})"))?;
        let k = top_k as usize;
        let n = check::elements(&[("batch_seq", rows), ("n_experts", experts)])?;
        let used = |len: usize| if n == 0 { 0 } else { len };
        let p = Input::new("router_probs", router_probs, n)?;
        let idx = Input::new("expert_indices", expert_indices, used(rows * k))?;
        // (Device indices out of range count for no expert.)
        idx.indices_below(experts, "n_experts", false)?;
        let l = Output::new("aux_loss", aux_loss, used(1))?;
        let f = Output::new("f_counts", f_counts, used(experts))?;
        let pm = Output::new("p_means", p_means, used(experts))?;
        let written = [l.region(), f.region(), pm.region()];
        let call = Call::new(stream, n, [p.region(), idx.region(), l.region(), f.region(), pm.region()])?.kernels_in_place(false);
        let cpu = || {
            let out = unsafe { loss::aux_loss(&p.read(&written), &idx.read(&written), experts, k, alpha) };
            unsafe {
                l.slice()[0] = out.loss;
                f.slice().copy_from_slice(&out.f_counts);
                pm.slice().copy_from_slice(&out.p_means);
            }
        };
        dispatch::run(&call, cpu, |g, p| unsafe { ops::aux_loss(g, stream.cast(), p[0], p[1], p[2], p[3], p[4], rows, experts, k, alpha) })
    })
}
