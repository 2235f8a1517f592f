//! Rotary position embedding.

use std::ffi::{c_int, c_void};

use super::boundary::ffi_fn;
use crate::check::{self, Input, Output, Region, require};
use crate::cpu::convert::{self, Element, Float, with_type};
use crate::cpu::{par::Src, rope::{self, Angles, RopeShape}};
use crate::dispatch::{self, Call};
use crate::gpu::widen::Use;
use crate::gpu::ops;
use crate::error::Result;

/// `head_dim` must be positive and even.
fn head_dim(value: c_int) -> Result<usize> {
    let d = check::dim("head_dim", value)?;
    require(d > 0 && d % 2 == 0, || format!("head_dim must be even and > 0 (got {value})"))?;
    Ok(d)
}

/// NTK `alpha` must be finite and > 0; `alpha != 1` needs `head_dim >= 4`.
fn ntk_alpha(alpha: f32, head_dim: usize) -> Result<()> {
    require(alpha > 0.0 && alpha.is_finite(), || format!("alpha must be finite and > 0 (got {alpha})"))?;
    require(alpha == 1.0 || head_dim >= 4, || format!("alpha != 1 needs head_dim >= 4 (got head_dim {head_dim})"))
}

/// Checked `[batch, seq_len, heads, head_dim]` shape: (elements, shape).
fn tensor(batch: c_int, seq_len: c_int, heads: (&str, c_int), head_dim_value: c_int, offset: c_int) -> Result<(usize, RopeShape)> {
    let (batch, seq_len) = (check::dim("batch", batch)?, check::dim("seq_len", seq_len)?);
    let heads_n = check::dim(heads.0, heads.1)?;
    let d = head_dim(head_dim_value)?;
    let offset = check::dim("offset", offset)?;
    let n = check::elements(&[("batch", batch), ("seq_len", seq_len), (heads.0, heads_n), ("head_dim", d)])?;
    Ok((n, RopeShape { seq_len, heads: heads_n, head_dim: d, offset }))
}

/// Elements of the angle table rows that positions `offset..offset+seq_len` use.
fn table_len(shape: &RopeShape) -> Result<usize> {
    check::elements(&[("seq_len + offset", shape.seq_len + shape.offset), ("head_dim / 2", shape.head_dim / 2)])
}

/// Fills `freqs[max_seq_len, head_dim/2]` with rotation **angles**
/// `freqs[p, i] = p * B^(-2i/head_dim)`, where `B = base * alpha^(head_dim/(head_dim-2))`
/// (NTK-aware; `alpha = 1` is plain RoPE). Returns -2 for an odd or non-positive
/// `head_dim`, `base` or `alpha` not finite and > 0, `alpha != 1` with
/// `head_dim < 4`, a negative `max_seq_len`, or NULL `freqs` with a non-empty table.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_rope_freqs(freqs: *mut f32, max_seq_len: c_int, head_dim: c_int, base: f32, alpha: f32, stream: *mut c_void) -> i32 {
    ffi_fn!("cuda_rope_freqs", {
        let rows = check::dim("max_seq_len", max_seq_len)?;
        let d = self::head_dim(head_dim)?;
        require(base > 0.0 && base.is_finite(), || format!("base must be finite and > 0 (got {base})"))?;
        ntk_alpha(alpha, d)?;
        let table = Output::new("freqs", freqs, check::elements(&[("max_seq_len", rows), ("head_dim / 2", d / 2)])?)?;
        dispatch::run(
            &Call::new(stream, table.len, [table.region()])?,
            || unsafe { rope::freqs(table.slice(), d, base, alpha) },
            |g, p| unsafe { ops::rope_freqs(g, stream.cast(), p[0], rows, d, base, alpha) },
        )
    })
}

/// Rotates `input[batch, seq_len, n_heads, head_dim]` into `output` (same shape):
/// each interleaved pair `(x[2i], x[2i+1])` at position `p = s + offset` becomes
/// `(x0 cos - x1 sin, x0 sin + x1 cos)` with angle `freqs[p, i]`. `freqs` must hold
/// at least `seq_len + offset` rows. `output` may be `input`. Returns -2 for an
/// odd `head_dim`, negative sizes or `offset`, NULL pointers, or overlaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_rope_forward(
    input: *const f32,
    freqs: *const f32,
    output: *mut f32,
    batch: c_int,
    seq_len: c_int,
    n_heads: c_int,
    head_dim: c_int,
    offset: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_rope_forward", {
        let (n, shape) = tensor(batch, seq_len, ("n_heads", n_heads), head_dim, offset)?;
        let x = Input::new("input", input, n)?;
        let f = Input::new("freqs", freqs, if n == 0 { 0 } else { table_len(&shape)? })?;
        let y = Output::new("output", output, n)?;
        let call = Call::new(stream, n, [x.region(), f.region(), y.region()])?;
        dispatch::run(
            &call,
            || unsafe { rope::rotate(Src::of(&x, &y, &[]), y.slice(), &f.read(&[y.region()]), shape, Angles::AsStored, false, 0) },
            |g, p| unsafe { ops::rope_rotate(g, stream.cast(), p[0], p[1], p[2], shape, n / (shape.heads * shape.head_dim), 1.0) },
        )
    })
}

/// `cuda_rope_forward` for a query and a key tensor at once:
/// `q[batch, seq_len, n_q_heads, head_dim]` into `q_out`, `k[batch, seq_len,
/// n_kv_heads, head_dim]` into `k_out`. `q_out` may be `q` and `k_out` may be `k`.
/// Returns -2 as `cuda_rope_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_rope_qk(
    q: *const f32,
    k: *const f32,
    freqs: *const f32,
    q_out: *mut f32,
    k_out: *mut f32,
    batch: c_int,
    seq_len: c_int,
    n_q_heads: c_int,
    n_kv_heads: c_int,
    head_dim: c_int,
    offset: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_rope_qk", {
        let ops = unsafe { QkOperands::new(["q", "k", "q_out", "k_out"], q, k, freqs, q_out, k_out, batch, seq_len, n_q_heads, n_kv_heads, head_dim, offset)? };
        unsafe { rope_qk_f32(&ops, batch, stream) }
    })
}

/// `cuda_rope_qk` on checked float32 operands.
unsafe fn rope_qk_f32(ops: &QkOperands, batch: c_int, stream: *mut c_void) -> Result<()> {
    // The kernels handle q_out == q and k_out == k, not an input that is the
    // other output's buffer (rotating q would overwrite k first).
    let call = Call::new(stream, ops.qo.len + ops.ko.len, ops.regions())?.kernels_in_place(!ops.crossed());
    let tokens = ops.q_shape.seq_len * batch.max(0) as usize;
    let (q_shape, k_shape) = (ops.q_shape, ops.k_shape);
    dispatch::run(&call, || unsafe { ops.rotate(false) }, |g, p| unsafe {
        ops::rope_rotate(g, stream.cast(), p[0], p[2], p[3], q_shape, tokens, 1.0)?;
        ops::rope_rotate(g, stream.cast(), p[1], p[2], p[4], k_shape, tokens, 1.0)
    })
}

/// `cuda_rope_qk` on `q`, `k`, `q_out` and `k_out` of type `dtype`
/// (`CUDANN_F32`, `CUDANN_F16` or `CUDANN_BF16`; `freqs` is float): half
/// precision is rotated in float32 and rounded once. Returns -2 as `cuda_rope_qk`, and for
/// an unknown `dtype`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_rope_qk_ex(
    q: *const c_void,
    k: *const c_void,
    freqs: *const f32,
    q_out: *mut c_void,
    k_out: *mut c_void,
    batch: c_int,
    seq_len: c_int,
    n_q_heads: c_int,
    n_kv_heads: c_int,
    head_dim: c_int,
    offset: c_int,
    dtype: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_rope_qk_ex", {
        let names = ["q", "k", "q_out", "k_out"];
        match check::float_type("dtype", dtype)? {
            Float::F32 => unsafe {
                let ops = QkOperands::new(names, q.cast(), k.cast(), freqs, q_out.cast(), k_out.cast(), batch, seq_len, n_q_heads, n_kv_heads, head_dim, offset)?;
                rope_qk_f32(&ops, batch, stream)
            },
            t => with_type!(t, T => {
                let ops = unsafe { QkOperands::<T>::new(names, q.cast(), k.cast(), freqs, q_out.cast(), k_out.cast(), batch, seq_len, n_q_heads, n_kv_heads, head_dim, offset)? };
                let call = Call::new(stream, ops.qo.len + ops.ko.len, ops.regions())?.kernels_in_place(!ops.crossed());
                let tokens = ops.q_shape.seq_len * batch.max(0) as usize;
                let (q_shape, k_shape) = (ops.q_shape, ops.k_shape);
                let uses = [Use::In, Use::In, Use::Keep, Use::Out, Use::Out];
                dispatch::run_typed(t, &call, uses, || unsafe { ops.rotate_half() }, |g, p| unsafe {
                    ops::rope_rotate(g, stream.cast(), p[0], p[2], p[3], q_shape, tokens, 1.0)?;
                    ops::rope_rotate(g, stream.cast(), p[1], p[2], p[4], k_shape, tokens, 1.0)
                })
            }),
        }
    })
}

/// RoPE backward for `cuda_rope_qk`: the gradients of the rotated tensors,
/// `d_q[batch, seq_len, n_q_heads, head_dim]` and `d_k[batch, seq_len,
/// n_kv_heads, head_dim]`, rotated back (each pair by minus its position's
/// angle, positions from `offset`) into `d_q_out` and `d_k_out`. A head count of
/// 0 leaves that side empty (its pointers may be NULL). `d_q_out` may be `d_q`
/// and `d_k_out` may be `d_k`. Returns -2 as `cuda_rope_qk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudann_rope_backward(
    d_q: *const f32,
    d_k: *const f32,
    freqs: *const f32,
    d_q_out: *mut f32,
    d_k_out: *mut f32,
    batch: c_int,
    seq_len: c_int,
    n_q_heads: c_int,
    n_kv_heads: c_int,
    head_dim: c_int,
    offset: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cudann_rope_backward", {
        let ops = unsafe { QkOperands::new(["d_q", "d_k", "d_q_out", "d_k_out"], d_q, d_k, freqs, d_q_out, d_k_out, batch, seq_len, n_q_heads, n_kv_heads, head_dim, offset)? };
        // As cuda_rope_qk: in place per side is fine, an input that is the other
        // output's buffer is copied first.
        let call = Call::new(stream, ops.qo.len + ops.ko.len, ops.regions())?.kernels_in_place(!ops.crossed());
        let tokens = ops.q_shape.seq_len * batch.max(0) as usize;
        let (q_shape, k_shape) = (ops.q_shape, ops.k_shape);
        dispatch::run(&call, || unsafe { ops.rotate(true) }, |g, p| unsafe {
            ops::rope_rotate_back(g, stream.cast(), p[0], p[2], p[3], q_shape, tokens)?;
            ops::rope_rotate_back(g, stream.cast(), p[1], p[2], p[4], k_shape, tokens)
        })
    })
}

/// The checked operands of a query/key rotation (`cuda_rope_qk` and its
/// backward), named after the entry point's arguments: q, k, q_out, k_out.
struct QkOperands<'a, T = f32> {
    q: Input<'a, T>,
    k: Input<'a, T>,
    f: Input<'a, f32>,
    qo: Output<'a, T>,
    ko: Output<'a, T>,
    q_shape: RopeShape,
    k_shape: RopeShape,
}

impl<'a, T: Element> QkOperands<'a, T> {
    unsafe fn new(names: [&'static str; 4], q: *const T, k: *const T, freqs: *const f32, q_out: *mut T, k_out: *mut T, batch: c_int, seq_len: c_int, n_q_heads: c_int, n_kv_heads: c_int, head_dim: c_int, offset: c_int) -> Result<Self> {
        let (nq, q_shape) = tensor(batch, seq_len, ("n_q_heads", n_q_heads), head_dim, offset)?;
        let (nk, k_shape) = tensor(batch, seq_len, ("n_kv_heads", n_kv_heads), head_dim, offset)?;
        Ok(QkOperands {
            q: Input::new(names[0], q, nq)?,
            k: Input::new(names[1], k, nk)?,
            f: Input::new("freqs", freqs, if nq + nk == 0 { 0 } else { table_len(&q_shape)? })?,
            qo: Output::new(names[2], q_out, nq)?,
            ko: Output::new(names[3], k_out, nk)?,
            q_shape,
            k_shape,
        })
    }

    fn regions(&self) -> [Region; 5] {
        [self.q.region(), self.k.region(), self.f.region(), self.qo.region(), self.ko.region()]
    }

    /// Whether an input is the *other* output's buffer (rotating one side
    /// would overwrite the other's input first).
    fn crossed(&self) -> bool {
        self.qo.region().start == self.k.region().start || self.ko.region().start == self.q.region().start
    }

    /// Both rotations of half-precision tensors on the CPU, a block of tokens
    /// at a time through float32 (rounded once). Inputs that are the other
    /// output's buffer are copied first.
    unsafe fn rotate_half(&self) {
        unsafe {
            let f = self.f.read(&[self.qo.region(), self.ko.region()]);
            let q = self.q.read(&[self.ko.region()]);
            let k = self.k.read(&[self.qo.region()]);
            for (x, y, shape) in [(&q, &self.qo, self.q_shape), (&k, &self.ko, self.k_shape)] {
                let token = shape.heads * shape.head_dim;
                convert::blockwise([x.as_ptr()], y.ptr, y.len, token, |start, [x], y| {
                    rope::rotate(Src::Slice(x), y, &f, shape, Angles::AsStored, false, start / token.max(1));
                });
            }
        }
    }
}

impl QkOperands<'_> {
    /// Both rotations on the CPU. Inputs that are the *other* output's buffer
    /// are copied before either output is written.
    unsafe fn rotate(&self, inverse: bool) {
        unsafe {
            let f = self.f.read(&[self.qo.region(), self.ko.region()]);
            let q = Src::of(&self.q, &self.qo, &[self.ko.region()]);
            let k = Src::of(&self.k, &self.ko, &[self.qo.region()]);
            rope::rotate(q, self.qo.slice(), &f, self.q_shape, Angles::AsStored, inverse, 0);
            rope::rotate(k, self.ko.slice(), &f, self.k_shape, Angles::AsStored, inverse, 0);
        }
    }
}

/// Rotates `q` and `k`, both `[batch, seq_len, n_heads, head_dim]`, in place
/// (positions from 0) with the given angles.
unsafe fn rotate_q_and_k(q: *mut f32, k: *mut f32, freqs: *const f32, batch: c_int, seq_len: c_int, n_heads: c_int, head_dim: c_int, stream: *mut c_void, angles: impl FnOnce(&RopeShape) -> Angles) -> Result<()> {
    let (n, shape) = tensor(batch, seq_len, ("n_heads", n_heads), head_dim, 0)?;
    let q = Output::new("q", q, n)?;
    let k = Output::new("k", k, n)?;
    let f = Input::new("freqs", freqs, if n == 0 { 0 } else { table_len(&shape)? })?;
    let call = Call::new(stream, n, [q.region(), k.region(), f.region()])?;
    let angles = angles(&shape);
    let cpu = || {
        unsafe {
            let f = f.read(&[q.region(), k.region()]);
            rope::rotate(Src::Output, q.slice(), &f, shape, angles, false, 0);
            rope::rotate(Src::Output, k.slice(), &f, shape, angles, false, 0);
        }
    };
    let tokens = n / (shape.heads * shape.head_dim).max(1);
    dispatch::run(&call, cpu, |g, p| unsafe {
        ops::rope_rotate(g, stream.cast(), p[0], p[2], p[0], shape, tokens, angles.ntk_alpha())?;
        ops::rope_rotate(g, stream.cast(), p[1], p[2], p[1], shape, tokens, angles.ntk_alpha())
    })
}

/// In-place RoPE of `q` and `k`, both `[batch, seq_len, n_heads, head_dim]`,
/// positions from 0. Returns -2 as `cuda_rope_forward`, and when `q` and `k` overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_rope(
    q: *mut f32,
    k: *mut f32,
    freqs: *const f32,
    batch: c_int,
    seq_len: c_int,
    n_heads: c_int,
    head_dim: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_rope", {
        unsafe { rotate_q_and_k(q, k, freqs, batch, seq_len, n_heads, head_dim, stream, |_| Angles::AsStored) }
    })
}

/// `cuda_rope` with dynamic NTK scaling: when `seq_len > orig_len`, each angle of
/// the unscaled table is used as `freqs[p, i] * alpha^(-2i/(head_dim-2))`;
/// otherwise the angles are used unchanged. Returns -2 as `cuda_rope`, and for
/// `alpha` not finite and > 0, `alpha != 1` with `head_dim < 4`, or `orig_len < 0`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuda_rope_ntk(
    q: *mut f32,
    k: *mut f32,
    freqs: *const f32,
    batch: c_int,
    seq_len: c_int,
    n_heads: c_int,
    head_dim: c_int,
    alpha: f32,
    orig_len: c_int,
    stream: *mut c_void,
) -> i32 {
    ffi_fn!("cuda_rope_ntk", {
        ntk_alpha(alpha, check::dim("head_dim", head_dim)?)?;
        let orig_len = check::dim("orig_len", orig_len)?;
        unsafe {
            rotate_q_and_k(q, k, freqs, batch, seq_len, n_heads, head_dim, stream, |shape| {
                if shape.seq_len > orig_len && alpha != 1.0 { Angles::NtkScaled { alpha } } else { Angles::AsStored }
            })
        }
    })
}
