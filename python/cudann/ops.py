"""The operators over arrays: shapes come from the arrays, outputs are
allocated when not given (like the first input: numpy for numpy, torch/CuPy
for their tensors, :class:`cudann.DeviceArray` for other device memory), and
every function takes ``stream=`` (default: the stream of the inputs, see
:func:`cudann._core.infer_stream`)."""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from ._core import (DTYPE_CODES, Arr, adapt, call, dim, host_to_like, infer_stream, output, require,
                    same_shape, stream_handle)

Array = Any  # numpy.ndarray, DeviceArray, torch/CuPy tensor, any __cuda_array_interface__/DLPack object
F32, I32, U64 = "float32", "int32", "uint64"
FLOATS = ("float32", "float16", "bfloat16")  # the `void *` tensors (CUDANN_F32, CUDANN_F16, CUDANN_BF16)

__all__ = [
    "silu", "silu_backward", "add", "mul", "scale", "gelu", "gelu_backward", "swiglu", "swiglu_backward",
    "bias_add", "bias_backward", "softmax", "softmax_backward", "softmax_topk", "rmsnorm", "rmsnorm_residual",
    "rmsnorm_backward", "layernorm", "layernorm_backward", "gemm", "gemm_batched", "gemm_ex", "gemm_grouped",
    "rope_freqs", "rope_forward", "rope_qk", "rope_backward", "rope_inplace", "rope_ntk_inplace",
    "attention_scores", "attention_output", "flash_attention", "mqa_attention", "attention_forward",
    "attention_backward", "kv_cache_write", "cross_entropy", "cross_entropy_backward", "aux_loss",
    "aux_loss_backward", "adamw_step", "zero_grad", "grad_clip", "scatter_add", "argmax", "sample",
    "topk_sample", "topp_sample", "embedding", "embedding_backward", "moe_router_backward", "moe_dispatch",
    "moe_dispatch_backward", "moe_combine", "moe_combine_backward", "convert",
]


def _adapt(stream, **named):
    s = stream_handle(stream)
    return [adapt(obj, name, s) for name, obj in named.items()]


def _rows_cols(a: Arr, name: str) -> Tuple[int, int]:
    """`[..., cols]` as (rows, cols)."""
    if not a.shape:
        raise ValueError(f"{name} must have at least 1 dimension")
    return math.prod(a.shape[:-1]), a.shape[-1]


def _scale(scale: Optional[float], head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def _dtype_code(a: Arr, name: str) -> int:
    """The ``CUDANN_*`` data-type code of a ``void *`` tensor (float32, float16 or bfloat16)."""
    if a.dtype not in FLOATS:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {a.dtype}")
    return DTYPE_CODES[a.dtype]


def _typed(a: Arr, name: str, f32_name: str, ex_name: str, ndim_min: int = 0):
    """``(C function, extra args)`` for a dtype-driven op: float32 calls the
    float32 entry point, float16/bfloat16 the ``_ex`` one with its dtype code."""
    code = _dtype_code(a, name)
    require(a, name, min_ndim=ndim_min)
    return (f32_name, ()) if a.dtype == F32 else (ex_name, (code,))


def _dtype_arg(dtype) -> str:
    """A target dtype given as a name, a numpy dtype (``ml_dtypes.bfloat16`` too)
    or a torch dtype -> ``"float32"``, ``"float16"`` or ``"bfloat16"``."""
    if isinstance(dtype, str):
        name = dtype
    elif type(dtype).__module__.split(".")[0] == "torch":
        name = str(dtype).rsplit(".", 1)[-1]
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            raise TypeError(f"dtype: expected float32, float16 or bfloat16, got {dtype!r}") from None
    name = {"half": "float16", "float": "float32"}.get(name, name)
    if name not in FLOATS:
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    return name


def _shape(a: Arr, name: str, shape) -> None:
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")


# ------------------------------------------------------------------- elementwise

def _unary(cname: str, x, out, stream):
    xa, = _adapt(stream, x=x)
    require(xa, "x", (F32,))
    o, oa = output(out, xa, "out", xa.shape, F32, stream_handle(stream))
    call(cname, xa, oa, xa.size, infer_stream(stream, [xa, oa]))
    return o


def _binary(cname: str, a, b, out, stream, names=("a", "b")):
    aa, ba = _adapt(stream, **{names[0]: a, names[1]: b})
    require(aa, names[0], (F32,)), require(ba, names[1], (F32,))
    same_shape(aa, ba, *names)
    o, oa = output(out, aa, "out", aa.shape, F32, stream_handle(stream))
    call(cname, aa, ba, oa, aa.size, infer_stream(stream, [aa, ba, oa]))
    return o


def silu(x: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``out = x * sigmoid(x)`` elementwise (float32, any shape; ``out`` may be ``x``)."""
    return _unary("cuda_silu", x, out, stream)


def silu_backward(d_output: Array, x: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``d_input = d_output * s (1 + x (1 - s))``, ``s = sigmoid(x)``."""
    return _binary("cudann_silu_backward", d_output, x, out, stream, ("d_output", "x"))


def _binary_typed(f32_name: str, ex_name: str, a, b, out, stream):
    aa, ba = _adapt(stream, a=a, b=b)
    cname, code = _typed(aa, "a", f32_name, ex_name)
    require(ba, "b", (aa.dtype,))
    same_shape(aa, ba, "a", "b")
    o, oa = output(out, aa, "out", aa.shape, aa.dtype, stream_handle(stream))
    call(cname, aa, ba, oa, aa.size, *code, infer_stream(stream, [aa, ba, oa]))
    return o


def add(a: Array, b: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``out = a + b`` elementwise (same shapes and dtype: float32, or float16/bfloat16
    through ``cudann_add_ex``: computed in float32, rounded once; ``out`` may be ``a`` or ``b``)."""
    return _binary_typed("cuda_add", "cudann_add_ex", a, b, out, stream)


def mul(a: Array, b: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``out = a * b`` elementwise (same shapes and dtype: float32, float16 or bfloat16, as :func:`add`)."""
    return _binary_typed("cuda_mul", "cudann_mul_ex", a, b, out, stream)


def scale(x: Array, factor: float, out: Optional[Array] = None, *, stream=None) -> Array:
    """``out = x * factor`` elementwise (``x`` float32, float16 or bfloat16; ``factor`` a float32)."""
    xa, = _adapt(stream, x=x)
    cname, code = _typed(xa, "x", "cuda_scale", "cudann_scale_ex")
    o, oa = output(out, xa, "out", xa.shape, xa.dtype, stream_handle(stream))
    call(cname, xa, oa, factor, xa.size, *code, infer_stream(stream, [xa, oa]))
    return o


def convert(x: Array, dtype, out: Optional[Array] = None, *, stream=None) -> Array:
    """``x`` (float32, float16 or bfloat16) converted to ``dtype`` (``"float32"``,
    ``"float16"``, ``"bfloat16"``, numpy/``ml_dtypes``/torch dtypes): to a half type
    rounded to nearest even (overflow to infinity, NaN a quiet NaN of the same sign),
    half to float32 exactly. Same shape; ``out`` may be ``x`` when the dtype is the same."""
    xa, = _adapt(stream, x=x)
    src = _dtype_code(xa, "x")
    require(xa, "x")
    target = _dtype_arg(dtype)
    o, oa = output(out, xa, "out", xa.shape, target, stream_handle(stream))
    call("cudann_convert", xa, src, oa, DTYPE_CODES[target], xa.size, infer_stream(stream, [xa, oa]))
    return o


def gelu(x: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """GELU, tanh form (GPT-2), elementwise."""
    return _unary("cudann_gelu", x, out, stream)


def gelu_backward(d_output: Array, x: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``d_input = d_output * gelu'(x)``."""
    return _binary("cudann_gelu_backward", d_output, x, out, stream, ("d_output", "x"))


def swiglu(gate: Array, up: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``out = silu(gate) * up`` elementwise (same shapes and dtype: float32, float16 or bfloat16,
    computed in float32 and rounded once; ``out`` may be ``gate`` or ``up``)."""
    ga, ua = _adapt(stream, gate=gate, up=up)
    code = _dtype_code(ga, "gate")
    require(ga, "gate"), require(ua, "up", (ga.dtype,))
    same_shape(ga, ua, "gate", "up")
    o, oa = output(out, ga, "out", ga.shape, ga.dtype, stream_handle(stream))
    call("cudann_swiglu", ga, ua, oa, ga.size, code, infer_stream(stream, [ga, ua, oa]))
    return o


def swiglu_backward(d_output: Array, gate: Array, up: Array, d_gate: Optional[Array] = None,
                    d_up: Optional[Array] = None, *, stream=None) -> Tuple[Array, Array]:
    """Returns ``(d_gate, d_up)`` of :func:`swiglu`."""
    da, ga, ua = _adapt(stream, d_output=d_output, gate=gate, up=up)
    for a, n in ((da, "d_output"), (ga, "gate"), (ua, "up")):
        require(a, n, (F32,))
    same_shape(ga, ua, "gate", "up"), same_shape(ga, da, "gate", "d_output")
    s = stream_handle(stream)
    g, gaa = output(d_gate, ga, "d_gate", ga.shape, F32, s)
    u, uaa = output(d_up, ga, "d_up", ga.shape, F32, s)
    call("cudann_swiglu_backward", da, ga, ua, gaa, uaa, ga.size, infer_stream(stream, [da, ga, ua]))
    return g, u


def bias_add(x: Array, bias: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``out[..., c] = x[..., c] + bias[c]``."""
    xa, ba = _adapt(stream, x=x, bias=bias)
    require(xa, "x", (F32,), min_ndim=1), require(ba, "bias", (F32,))
    rows, cols = _rows_cols(xa, "x")
    _shape(ba, "bias", (cols,))
    o, oa = output(out, xa, "out", xa.shape, F32, stream_handle(stream))
    call("cudann_bias_add", xa, ba, oa, dim(rows, "rows"), dim(cols, "cols"), infer_stream(stream, [xa, ba, oa]))
    return o


def bias_backward(d_output: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``d_bias[c]`` = the sum of ``d_output[..., c]`` over every other index."""
    da, = _adapt(stream, d_output=d_output)
    require(da, "d_output", (F32,), min_ndim=1)
    rows, cols = _rows_cols(da, "d_output")
    o, oa = output(out, da, "out", (cols,), F32, stream_handle(stream))
    call("cudann_bias_backward", da, oa, dim(rows, "rows"), dim(cols, "cols"), infer_stream(stream, [da, oa]))
    return o


# ---------------------------------------------------------------- softmax, norms

def softmax(x: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """Softmax over the last axis of ``x`` (stable; ``-inf`` gets 0; ``out`` may be ``x``).
    float16/bfloat16 ``x``: computed in float32 and rounded once (``cudann_softmax_ex``)."""
    xa, = _adapt(stream, x=x)
    cname, code = _typed(xa, "x", "cuda_softmax", "cudann_softmax_ex", ndim_min=1)
    rows, cols = _rows_cols(xa, "x")
    o, oa = output(out, xa, "out", xa.shape, xa.dtype, stream_handle(stream))
    call(cname, xa, oa, dim(rows, "rows"), dim(cols, "cols"), *code, infer_stream(stream, [xa, oa]))
    return o


def softmax_backward(d_output: Array, y: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``d_input = y * (d_output - sum(d_output * y))`` over the last axis, ``y`` the forward's output."""
    da, ya = _adapt(stream, d_output=d_output, y=y)
    require(da, "d_output", (F32,), min_ndim=1), require(ya, "y", (F32,))
    same_shape(da, ya, "d_output", "y")
    rows, cols = _rows_cols(ya, "y")
    o, oa = output(out, ya, "out", ya.shape, F32, stream_handle(stream))
    call("cudann_softmax_backward", da, ya, oa, dim(rows, "rows"), dim(cols, "cols"), infer_stream(stream, [da, ya, oa]))
    return o


def softmax_topk(x: Array, k: int, weights: Optional[Array] = None, indices: Optional[Array] = None, *,
                 stream=None) -> Tuple[Array, Array]:
    """MoE router: per row of ``x[..., cols]`` the ``k`` most probable columns.
    Returns ``(weights[..., k] float32, indices[..., k] int32)``, the weights renormalised."""
    xa, = _adapt(stream, x=x)
    require(xa, "x", (F32,), min_ndim=1)
    rows, cols = _rows_cols(xa, "x")
    shape = xa.shape[:-1] + (int(k),)
    s = stream_handle(stream)
    w, wa = output(weights, xa, "weights", shape, F32, s)
    i, ia = output(indices, xa, "indices", shape, I32, s)
    call("cuda_softmax_topk", xa, wa, ia, dim(rows, "rows"), dim(cols, "cols"), dim(k, "k"),
         infer_stream(stream, [xa, wa, ia]))
    return w, i


def _norm_in(stream, x, weight, xname="x"):
    xa, wa = _adapt(stream, **{xname: x, "weight": weight})
    require(xa, xname, (F32,), min_ndim=1), require(wa, "weight", (F32,))
    rows, hidden = _rows_cols(xa, xname)
    _shape(wa, "weight", (hidden,))
    return xa, wa, dim(rows, "rows"), dim(hidden, "hidden_dim")


def rmsnorm(x: Array, weight: Array, eps: float = 1e-5, out: Optional[Array] = None, *, stream=None) -> Array:
    """RMSNorm of each row of ``x[..., hidden]``: ``x / sqrt(mean(x²) + eps) * weight[hidden]``.
    ``x``, ``weight`` and ``out`` share a dtype: float32, or float16/bfloat16 (``cudann_rmsnorm_ex``:
    normalised in float32, rounded once)."""
    xa, wa = _adapt(stream, x=x, weight=weight)
    cname, code = _typed(xa, "x", "cuda_rmsnorm", "cudann_rmsnorm_ex", ndim_min=1)
    require(wa, "weight", (xa.dtype,))
    rows, hidden = _rows_cols(xa, "x")
    _shape(wa, "weight", (hidden,))
    o, oa = output(out, xa, "out", xa.shape, xa.dtype, stream_handle(stream))
    call(cname, xa, wa, oa, dim(rows, "rows"), dim(hidden, "hidden_dim"), eps, *code,
         infer_stream(stream, [xa, wa, oa]))
    return o


def rmsnorm_residual(x: Array, residual: Array, weight: Array, eps: float = 1e-5, out: Optional[Array] = None,
                     residual_out: Optional[Array] = None, *, stream=None) -> Tuple[Array, Array]:
    """``s = x + residual``; returns ``(rmsnorm(s), s)``. Pass ``out=x, residual_out=residual`` for in place."""
    xa, wa, rows, hidden = _norm_in(stream, x, weight)
    ra, = _adapt(stream, residual=residual)
    require(ra, "residual", (F32,))
    same_shape(xa, ra, "x", "residual")
    s = stream_handle(stream)
    o, oa = output(out, xa, "out", xa.shape, F32, s)
    r, roa = output(residual_out, xa, "residual_out", xa.shape, F32, s)
    call("cuda_rmsnorm_residual", xa, ra, wa, oa, roa, rows, hidden, eps, infer_stream(stream, [xa, ra, wa]))
    return o, r


def rmsnorm_backward(d_output: Array, x: Array, weight: Array, eps: float = 1e-5, d_input: Optional[Array] = None,
                     d_weight: Optional[Array] = None, *, stream=None) -> Tuple[Array, Array]:
    """Returns ``(d_input, d_weight)`` of :func:`rmsnorm`."""
    xa, wa, rows, hidden = _norm_in(stream, x, weight)
    da, = _adapt(stream, d_output=d_output)
    require(da, "d_output", (F32,))
    same_shape(xa, da, "x", "d_output")
    s = stream_handle(stream)
    di, dia = output(d_input, xa, "d_input", xa.shape, F32, s)
    dw, dwa = output(d_weight, xa, "d_weight", wa.shape, F32, s)
    call("cudann_rmsnorm_backward", da, xa, wa, dia, dwa, rows, hidden, eps, infer_stream(stream, [da, xa, wa]))
    return di, dw


def layernorm(x: Array, weight: Array, bias: Array, eps: float = 1e-5, out: Optional[Array] = None, *,
              stream=None) -> Array:
    """LayerNorm of each row of ``x[..., hidden]`` (biased variance, as PyTorch)."""
    xa, wa, rows, hidden = _norm_in(stream, x, weight)
    ba, = _adapt(stream, bias=bias)
    require(ba, "bias", (F32,))
    _shape(ba, "bias", (hidden,))
    o, oa = output(out, xa, "out", xa.shape, F32, stream_handle(stream))
    call("cudann_layernorm", xa, wa, ba, oa, rows, hidden, eps, infer_stream(stream, [xa, wa, ba, oa]))
    return o


def layernorm_backward(d_output: Array, x: Array, weight: Array, eps: float = 1e-5,
                       d_input: Optional[Array] = None, d_weight: Optional[Array] = None,
                       d_bias: Optional[Array] = None, *, stream=None) -> Tuple[Array, Array, Array]:
    """Returns ``(d_input, d_weight, d_bias)`` of :func:`layernorm`."""
    xa, wa, rows, hidden = _norm_in(stream, x, weight)
    da, = _adapt(stream, d_output=d_output)
    require(da, "d_output", (F32,))
    same_shape(xa, da, "x", "d_output")
    s = stream_handle(stream)
    di, dia = output(d_input, xa, "d_input", xa.shape, F32, s)
    dw, dwa = output(d_weight, xa, "d_weight", wa.shape, F32, s)
    db, dba = output(d_bias, xa, "d_bias", wa.shape, F32, s)
    call("cudann_layernorm_backward", da, xa, wa, dia, dwa, dba, rows, hidden, eps, infer_stream(stream, [da, xa, wa]))
    return di, dw, db


# --------------------------------------------------------------------------- GEMM

def _gemm_c(out, aa, shape, alpha, beta, stream):
    if out is None and beta != 0:
        raise ValueError("beta != 0 reads out: pass out=")
    return output(out, aa, "out", shape, F32, stream_handle(stream))


def gemm(a: Array, b: Array, out: Optional[Array] = None, *, alpha: float = 1.0, beta: float = 0.0,
         stream=None) -> Array:
    """Row-major ``out[M,N] = alpha * a[M,K] @ b[K,N] + beta * out`` (``out`` is not read when beta is 0)."""
    aa, ba = _adapt(stream, a=a, b=b)
    require(aa, "a", (F32,), ndim=2), require(ba, "b", (F32,), ndim=2)
    (m, k), (k2, n) = aa.shape, ba.shape
    if k != k2:
        raise ValueError(f"a is {aa.shape} but b is {ba.shape}: inner dimensions differ")
    o, oa = _gemm_c(out, aa, (m, n), alpha, beta, stream)
    call("cuda_gemm", aa, ba, oa, dim(m, "M"), dim(n, "N"), dim(k, "K"), alpha, beta, infer_stream(stream, [aa, ba, oa]))
    return o


def gemm_batched(a: Array, b: Array, out: Optional[Array] = None, *, alpha: float = 1.0, beta: float = 0.0,
                 stream=None) -> Array:
    """``out[i] = alpha * a[i] @ b[i] + beta * out[i]`` for ``a[B,M,K]``, ``b[B,K,N]``."""
    aa, ba = _adapt(stream, a=a, b=b)
    require(aa, "a", (F32,), ndim=3), require(ba, "b", (F32,), ndim=3)
    (batch, m, k), (batch2, k2, n) = aa.shape, ba.shape
    if k != k2 or batch != batch2:
        raise ValueError(f"a is {aa.shape} but b is {ba.shape}: batch or inner dimensions differ")
    o, oa = _gemm_c(out, aa, (batch, m, n), alpha, beta, stream)
    call("cuda_gemm_batched", aa, ba, oa, dim(batch, "batch"), dim(m, "M"), dim(n, "N"), dim(k, "K"), alpha, beta,
         infer_stream(stream, [aa, ba, oa]))
    return o


def _matrix(x: Arr, name: str):
    """(batch or None, rows, cols, ld, stride) of a row-major matrix or stack whose rows may be padded."""
    if x.dtype not in FLOATS:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if len(x.shape) not in (2, 3):
        raise ValueError(f"{name} must have 2 or 3 dimensions, got shape {x.shape}")
    st = x.elem_strides()
    if x.shape[-1] > 1 and st[-1] != 1:
        raise ValueError(f"{name}: the elements of a row must be contiguous (last stride 1)")
    rows, cols = x.shape[-2:]
    ld = st[-2] if rows > 1 else cols
    if ld < cols:
        raise ValueError(f"{name}: rows overlap (row stride {ld} < {cols} columns)")
    if len(x.shape) == 2:
        return None, rows, cols, ld, 0
    stride = st[0] if x.shape[0] > 1 else rows * ld
    return x.shape[0], rows, cols, ld, stride


def gemm_ex(a: Array, b: Array, out: Optional[Array] = None, *, trans_a: bool = False, trans_b: bool = False,
            alpha: float = 1.0, beta: float = 0.0, stream=None) -> Array:
    """Batched strided GEMM: ``out[i] = alpha * op(a[i]) @ op(b[i]) + beta * out[i]``,
    ``op`` transposing when ``trans_a``/``trans_b``. Operands are 2-D (one matrix,
    shared by every batch entry) or 3-D ``[batch, rows, cols]``; their rows may be
    padded (a view such as ``x[:, :cols]`` of a wider array is fine: the leading
    dimension and batch stride come from the array's strides). The data types come
    from the arrays, each float32, float16 or bfloat16 (accumulated in float32; an
    allocated ``out`` takes ``a``'s dtype). ``out`` is 3-D when any operand is, else 2-D."""
    aa, ba = _adapt(stream, a=a, b=b)
    a_batch, ar, ac, lda, sa = _matrix(aa, "a")
    b_batch, br, bc, ldb, sb = _matrix(ba, "b")
    m, k = (ac, ar) if trans_a else (ar, ac)
    k2, n = (bc, br) if trans_b else (br, bc)
    if k != k2:
        raise ValueError(f"op(a) is {m}x{k} but op(b) is {k2}x{n}: inner dimensions differ")
    batches = {x for x in (a_batch, b_batch) if x is not None}
    if len(batches) > 1:
        raise ValueError(f"a and b have different batch sizes {sorted(batches)}")
    batch = batches.pop() if batches else None
    shape = (m, n) if batch is None else (batch, m, n)
    if out is None:
        if beta != 0:
            raise ValueError("beta != 0 reads out: pass out=")
        o = None
        oa = None
        o, oa = output(None, aa, "out", shape, aa.dtype, stream_handle(stream))
    else:
        o, oa = out, require(adapt(out, "out", stream_handle(stream)), "out", contiguous=False, writable=True)
    c_batch, cr, cc, ldc, sc = _matrix(oa, "out")
    if (cr, cc) != (m, n) or (c_batch or 1) != (batch or 1) or (batch is not None and c_batch is None):
        raise ValueError(f"out must be {shape}, got {oa.shape}")
    nb = batch or 1
    call("cudann_gemm_ex", int(bool(trans_a)), int(bool(trans_b)), dim(m, "m"), dim(n, "n"), dim(k, "k"), alpha,
         aa, DTYPE_CODES[aa.dtype], lda, sa if a_batch else 0, ba, DTYPE_CODES[ba.dtype], ldb, sb if b_batch else 0,
         beta, oa, DTYPE_CODES[oa.dtype], ldc, sc if c_batch else m * ldc, dim(nb, "batch"),
         infer_stream(stream, [aa, ba, oa]))
    return o


def gemm_grouped(a: Array, b: Array, offsets: Array, out: Optional[Array] = None, *, group_inner: bool = False,
                 trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0,
                 stream=None) -> Array:
    """Grouped products over a partition given by ``offsets`` (int32, ``groups + 1``
    entries, not decreasing), as a mixture of experts runs them. Rows grouped (the
    default): ``a`` is 2-D, ``b`` 3-D ``[groups, ...]`` and rows ``offsets[g]`` to
    ``offsets[g+1]`` of ``out`` (2-D) get ``alpha * op(a)[rows] @ op(b[g]) + beta * out[rows]``
    (other rows are not written). ``group_inner``: ``a`` and ``b`` are 2-D, the
    grouped dimension is k, and ``out[g] = alpha * op(a)[:, ks] @ op(b)[ks, :] + beta * out[g]``
    (3-D ``[groups, m, n]``). Float32 operands, or one of ``a`` and ``b`` float16 or
    bfloat16 (accumulated in float32). ``offsets`` is read where the call runs: on
    the GPU it may stay in device memory."""
    aa, ba, fa = _adapt(stream, a=a, b=b, offsets=offsets)
    require(fa, "offsets", (I32,), ndim=1)
    groups = fa.shape[0] - 1
    if groups < 0:
        raise ValueError("offsets must hold groups + 1 entries")
    require(aa, "a", ndim=2, contiguous=False), require(ba, "b", ndim=2 if group_inner else 3, contiguous=False)
    _, ar, ac, lda, _ = _matrix(aa, "a")
    b_batch, br, bc, ldb, sb = _matrix(ba, "b")
    if not group_inner and b_batch != groups:
        raise ValueError(f"b holds {b_batch} matrices, but offsets gives {groups} groups")
    m, k = (ac, ar) if trans_a else (ar, ac)
    k2, n = (bc, br) if trans_b else (br, bc)
    if k != k2:
        raise ValueError(f"op(a) is {m}x{k} but op(b) is {k2}x{n}: inner dimensions differ")
    shape = (groups, m, n) if group_inner else (m, n)
    if out is None:
        if beta != 0:
            raise ValueError("beta != 0 reads out: pass out=")
        o, oa = output(None, aa, "out", shape, F32, stream_handle(stream))
    else:
        o, oa = out, require(adapt(out, "out", stream_handle(stream)), "out", contiguous=False, writable=True)
    if oa.shape != shape:
        raise ValueError(f"out must be {shape}, got {oa.shape}")
    c_batch, _, _, ldc, sc = _matrix(oa, "out")
    call("cudann_gemm_grouped", int(bool(trans_a)), int(bool(trans_b)), int(bool(group_inner)), dim(m, "m"), dim(n, "n"),
         dim(k, "k"), alpha, aa, DTYPE_CODES[aa.dtype], lda, 0, ba, DTYPE_CODES[ba.dtype], ldb, sb if b_batch else 0,
         beta, oa, DTYPE_CODES[oa.dtype], ldc, sc if c_batch else 0, fa, dim(groups, "groups"),
         infer_stream(stream, [aa, ba, oa, fa]))
    return o


# --------------------------------------------------------------------------- RoPE

def rope_freqs(max_seq_len: int, head_dim: int, base: float = 10000.0, alpha: float = 1.0,
               out: Optional[Array] = None, *, stream=None) -> Array:
    """The rotation angles ``freqs[max_seq_len, head_dim/2]`` (``alpha != 1``: NTK-aware base).
    Allocated with numpy unless ``out`` is given."""
    s = stream_handle(stream)
    o, oa = output(out, None, "out", (max_seq_len, head_dim // 2), F32, s)
    call("cuda_rope_freqs", oa, dim(max_seq_len, "max_seq_len"), dim(head_dim, "head_dim"), base, alpha,
         infer_stream(stream, [oa]))
    return o


def _bshd(a: Arr, name: str, dtype: str = F32):
    require(a, name, (dtype,), ndim=4)
    return a.shape


def rope_forward(x: Array, freqs: Array, offset: int = 0, out: Optional[Array] = None, *, stream=None) -> Array:
    """Rotates ``x[batch, seq, heads, head_dim]`` by the angles of positions ``offset ..``."""
    xa, fa = _adapt(stream, x=x, freqs=freqs)
    b, s, h, d = _bshd(xa, "x")
    require(fa, "freqs", (F32,))
    o, oa = output(out, xa, "out", xa.shape, F32, stream_handle(stream))
    call("cuda_rope_forward", xa, fa, oa, dim(b, "batch"), dim(s, "seq_len"), dim(h, "n_heads"), dim(d, "head_dim"),
         dim(offset, "offset"), infer_stream(stream, [xa, fa, oa]))
    return o


def _qk(qa: Optional[Arr], ka: Optional[Arr], qn: str, kn: str, dtype: str = F32):
    shapes = [_bshd(a, n, dtype) for a, n in ((qa, qn), (ka, kn)) if a is not None]
    if not shapes:
        raise ValueError(f"{qn} and {kn} cannot both be None")
    b, s, _, d = shapes[0]
    for a, n in ((qa, qn), (ka, kn)):
        if a is not None and (a.shape[:2] + a.shape[3:]) != (b, s, d):
            raise ValueError(f"{qn} and {kn} must agree in batch, seq and head_dim: {shapes}")
    return b, s, (qa.shape[2] if qa else 0), (ka.shape[2] if ka else 0), d


def rope_qk(q: Array, k: Array, freqs: Array, offset: int = 0, q_out: Optional[Array] = None,
            k_out: Optional[Array] = None, *, stream=None) -> Tuple[Array, Array]:
    """:func:`rope_forward` of ``q[b, s, n_q_heads, d]`` and ``k[b, s, n_kv_heads, d]`` at once.
    ``q`` and ``k`` of one dtype: float32, or float16/bfloat16 through ``cudann_rope_qk_ex``
    (rotated in float32, rounded once); ``freqs`` is float32 either way."""
    qa, ka, fa = _adapt(stream, q=q, k=k, freqs=freqs)
    cname, code = _typed(qa, "q", "cuda_rope_qk", "cudann_rope_qk_ex")
    require(fa, "freqs", (F32,))
    b, s, hq, hk, d = _qk(qa, ka, "q", "k", qa.dtype)
    st = stream_handle(stream)
    qo, qoa = output(q_out, qa, "q_out", qa.shape, qa.dtype, st)
    ko, koa = output(k_out, qa, "k_out", ka.shape, qa.dtype, st)
    call(cname, qa, ka, fa, qoa, koa, dim(b, "batch"), dim(s, "seq_len"), dim(hq, "n_q_heads"),
         dim(hk, "n_kv_heads"), dim(d, "head_dim"), dim(offset, "offset"), *code, infer_stream(stream, [qa, ka, fa]))
    return qo, ko


def rope_backward(d_q: Optional[Array], d_k: Optional[Array], freqs: Array, offset: int = 0,
                  d_q_out: Optional[Array] = None, d_k_out: Optional[Array] = None, *,
                  stream=None) -> Tuple[Optional[Array], Optional[Array]]:
    """The gradients of :func:`rope_qk` rotated back; either side may be None (no heads)."""
    qa, ka, fa = _adapt(stream, d_q=d_q, d_k=d_k, freqs=freqs)
    require(fa, "freqs", (F32,))
    b, s, hq, hk, d = _qk(qa, ka, "d_q", "d_k")
    st = stream_handle(stream)
    t = qa or ka
    qo, qoa = output(d_q_out, t, "d_q_out", qa.shape, F32, st) if qa else (None, None)
    ko, koa = output(d_k_out, t, "d_k_out", ka.shape, F32, st) if ka else (None, None)
    call("cudann_rope_backward", qa, ka, fa, qoa, koa, dim(b, "batch"), dim(s, "seq_len"), dim(hq, "n_q_heads"),
         dim(hk, "n_kv_heads"), dim(d, "head_dim"), dim(offset, "offset"), infer_stream(stream, [qa, ka, fa]))
    return qo, ko


def rope_inplace(q: Array, k: Array, freqs: Array, *, stream=None) -> None:
    """In-place RoPE of ``q`` and ``k`` (both ``[b, s, heads, d]``), positions from 0."""
    qa, ka, fa = _adapt(stream, q=q, k=k, freqs=freqs)
    b, s, h, d = _bshd(qa, "q")
    _bshd(ka, "k"), same_shape(qa, ka, "q", "k"), require(fa, "freqs", (F32,))
    require(qa, "q", writable=True), require(ka, "k", writable=True)
    call("cuda_rope", qa, ka, fa, dim(b, "batch"), dim(s, "seq_len"), dim(h, "n_heads"), dim(d, "head_dim"),
         infer_stream(stream, [qa, ka, fa]))


def rope_ntk_inplace(q: Array, k: Array, freqs: Array, alpha: float, orig_len: int, *, stream=None) -> None:
    """:func:`rope_inplace` with dynamic NTK scaling when ``seq > orig_len``."""
    qa, ka, fa = _adapt(stream, q=q, k=k, freqs=freqs)
    b, s, h, d = _bshd(qa, "q")
    _bshd(ka, "k"), same_shape(qa, ka, "q", "k"), require(fa, "freqs", (F32,))
    require(qa, "q", writable=True), require(ka, "k", writable=True)
    call("cuda_rope_ntk", qa, ka, fa, dim(b, "batch"), dim(s, "seq_len"), dim(h, "n_heads"), dim(d, "head_dim"),
         alpha, dim(orig_len, "orig_len"), infer_stream(stream, [qa, ka, fa]))


# ---------------------------------------------------------------------- attention

def _kv1(ka: Arr, name: str, b: int, s: int, d: int):
    require(ka, name, (F32,), ndim=3)
    _shape(ka, name, (b, s, d))


def attention_scores(q: Array, k: Array, scale: Optional[float] = None, out: Optional[Array] = None, *,
                     stream=None) -> Array:
    """Causal scores ``out[b, h, s, s] = scale q kᵀ`` (``-inf`` above the diagonal) for
    ``q[b, s, h, d]`` and one shared KV head ``k[b, s, d]``; scale defaults to ``1/sqrt(d)``."""
    qa, ka = _adapt(stream, q=q, k=k)
    b, s, h, d = _bshd(qa, "q")
    _kv1(ka, "k", b, s, d)
    o, oa = output(out, qa, "out", (b, h, s, s), F32, stream_handle(stream))
    call("cuda_attention_scores", qa, ka, oa, dim(b, "batch"), dim(h, "n_heads"), dim(s, "seq_len"),
         dim(d, "head_dim"), _scale(scale, d), infer_stream(stream, [qa, ka, oa]))
    return o


def attention_output(weights: Array, v: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``out[b, s, h, d] = weights[b, h, s, s] · v[b, s, d]`` over keys ``<=`` the query."""
    wa, va = _adapt(stream, weights=weights, v=v)
    require(wa, "weights", (F32,), ndim=4), require(va, "v", (F32,), ndim=3)
    b, h, s, s2 = wa.shape
    d = va.shape[2]
    if s != s2:
        raise ValueError(f"weights must be [batch, heads, seq, seq], got {wa.shape}")
    _kv1(va, "v", b, s, d)
    o, oa = output(out, wa, "out", (b, s, h, d), F32, stream_handle(stream))
    call("cuda_attention_output", wa, va, oa, dim(b, "batch"), dim(h, "n_heads"), dim(s, "seq_len"),
         dim(d, "head_dim"), infer_stream(stream, [wa, va, oa]))
    return o


def flash_attention(q: Array, k: Array, v: Array, scale: Optional[float] = None, causal: bool = True,
                    out: Optional[Array] = None, *, stream=None) -> Array:
    """Fused ``softmax(scale q kᵀ [+ causal mask]) v``, all ``[b, s, h, d]`` (``out`` may be ``q``)."""
    qa, ka, va = _adapt(stream, q=q, k=k, v=v)
    b, s, h, d = _bshd(qa, "q")
    _bshd(ka, "k"), _bshd(va, "v"), same_shape(qa, ka, "q", "k"), same_shape(qa, va, "q", "v")
    o, oa = output(out, qa, "out", qa.shape, F32, stream_handle(stream))
    call("cuda_flash_attention", qa, ka, va, oa, dim(b, "batch"), dim(s, "seq_len"), dim(h, "n_heads"),
         dim(d, "head_dim"), _scale(scale, d), int(bool(causal)), infer_stream(stream, [qa, ka, va, oa]))
    return o


def mqa_attention(q: Array, k: Array, v: Array, mask: Optional[Array] = None, scale: Optional[float] = None,
                  out: Optional[Array] = None, *, stream=None) -> Array:
    """Fused attention with one shared KV head: ``q[b, s, h, d]``, ``k``, ``v`` ``[b, s, d]``;
    ``mask`` None is causal, else an additive ``[s, s]`` float32 mask."""
    qa, ka, va, ma = _adapt(stream, q=q, k=k, v=v, mask=mask)
    b, s, h, d = _bshd(qa, "q")
    _kv1(ka, "k", b, s, d), _kv1(va, "v", b, s, d)
    if ma is not None:
        require(ma, "mask", (F32,)), _shape(ma, "mask", (s, s))
    o, oa = output(out, qa, "out", qa.shape, F32, stream_handle(stream))
    call("cuda_mqa_attention", qa, ka, va, oa, ma, dim(b, "batch"), dim(s, "seq_len"), dim(h, "n_heads"),
         dim(d, "head_dim"), _scale(scale, d), infer_stream(stream, [qa, ka, va, oa]))
    return o


def attention_forward(q: Array, k: Array, v: Array, *, kv_len: Optional[int] = None, mask: Optional[Array] = None,
                      pos0: int = 0, causal: bool = True, scale: Optional[float] = None,
                      out: Optional[Array] = None, lse: Optional[Array] = None, need_lse: bool = True,
                      stream=None) -> Tuple[Array, Optional[Array]]:
    """General attention (MHA/GQA/MQA, training or KV-cache decoding).

    ``q[b, q_len, h, d]``; ``k``, ``v`` ``[b, kv_capacity, n_kv_heads, d]`` of which the first
    ``kv_len`` positions are used (default: all). Query ``i`` sits at position ``pos0 + i``.
    ``q``, ``k``, ``v`` and ``out`` share one dtype: float32, float16 or bfloat16 (computed in
    float32, the output rounded once).
    ``mask`` is None or an additive ``[q_len, kv_len]`` float32 mask. Returns
    ``(out, lse)``, ``lse[b, q_len, h]`` float32 for :func:`attention_backward`
    (``None`` with ``need_lse=False``)."""
    qa, ka, va, ma = _adapt(stream, q=q, k=k, v=v, mask=mask)
    code = _dtype_code(qa, "q")
    for a, n in ((qa, "q"), (ka, "k"), (va, "v")):
        require(a, n, (qa.dtype,), ndim=4)
    same_shape(ka, va, "k", "v")
    b, ql, h, d = qa.shape
    if ka.shape[0] != b or ka.shape[3] != d:
        raise ValueError(f"k must be [batch={b}, kv_capacity, n_kv_heads, head_dim={d}], got {ka.shape}")
    cap, g = ka.shape[1], ka.shape[2]
    kv = cap if kv_len is None else int(kv_len)
    if ma is not None:
        require(ma, "mask", (F32,)), _shape(ma, "mask", (ql, kv))
    st = stream_handle(stream)
    o, oa = output(out, qa, "out", qa.shape, qa.dtype, st)
    if need_lse or lse is not None:
        l, la = output(lse, qa, "lse", (b, ql, h), F32, st)
    else:
        l, la = None, None
    call("cudann_attention_forward", qa, ka, va, ma, oa, la, dim(b, "batch"), dim(ql, "q_len"), dim(kv, "kv_len"),
         dim(cap, "kv_capacity"), dim(h, "n_heads"), dim(g, "n_kv_heads"), dim(d, "head_dim"), dim(pos0, "pos0"),
         int(bool(causal)), _scale(scale, d), code, infer_stream(stream, [qa, ka, va, oa]))
    return o, l


def attention_backward(d_output: Array, q: Array, k: Array, v: Array, out: Array, lse: Array, *,
                       mask: Optional[Array] = None, pos0: int = 0, causal: bool = True,
                       scale: Optional[float] = None, d_q: Optional[Array] = None, d_k: Optional[Array] = None,
                       d_v: Optional[Array] = None, stream=None) -> Tuple[Array, Array, Array]:
    """Gradients ``(d_q, d_k, d_v)`` of :func:`attention_forward` (``k``, ``v`` hold exactly
    ``kv_len`` positions: ``[b, kv_len, n_kv_heads, d]``)."""
    da, qa, ka, va, oa, la, ma = _adapt(stream, d_output=d_output, q=q, k=k, v=v, out=out, lse=lse, mask=mask)
    for a, n in ((da, "d_output"), (qa, "q"), (ka, "k"), (va, "v"), (oa, "out")):
        require(a, n, (F32,), ndim=4)
    b, ql, h, d = qa.shape
    same_shape(qa, da, "q", "d_output"), same_shape(qa, oa, "q", "out"), same_shape(ka, va, "k", "v")
    if ka.shape[0] != b or ka.shape[3] != d:
        raise ValueError(f"k must be [batch={b}, kv_len, n_kv_heads, head_dim={d}], got {ka.shape}")
    kv, g = ka.shape[1], ka.shape[2]
    require(la, "lse", (F32,)), _shape(la, "lse", (b, ql, h))
    if ma is not None:
        require(ma, "mask", (F32,)), _shape(ma, "mask", (ql, kv))
    st = stream_handle(stream)
    gq, gqa = output(d_q, qa, "d_q", qa.shape, F32, st)
    gk, gka = output(d_k, qa, "d_k", ka.shape, F32, st)
    gv, gva = output(d_v, qa, "d_v", va.shape, F32, st)
    call("cudann_attention_backward", da, qa, ka, va, ma, oa, la, gqa, gka, gva, dim(b, "batch"), dim(ql, "q_len"),
         dim(kv, "kv_len"), dim(h, "n_heads"), dim(g, "n_kv_heads"), dim(d, "head_dim"), dim(pos0, "pos0"),
         int(bool(causal)), _scale(scale, d), infer_stream(stream, [da, qa, ka, va]))
    return gq, gk, gv


def kv_cache_write(k_new: Array, v_new: Array, k_cache: Array, v_cache: Array, pos: int, *, stream=None) -> None:
    """Writes ``k_new``, ``v_new`` ``[b, new_len, n_kv_heads, d]`` into the caches
    ``[b, max_seq, n_kv_heads, d]`` at positions ``pos .. pos + new_len`` (one dtype for all four:
    float32, float16 or bfloat16, copied as they are)."""
    ka, va, kc, vc = _adapt(stream, k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache)
    code = _dtype_code(ka, "k_new")
    for a, n in ((ka, "k_new"), (va, "v_new"), (kc, "k_cache"), (vc, "v_cache")):
        require(a, n, (ka.dtype,), ndim=4, writable=n.endswith("cache"))
    same_shape(ka, va, "k_new", "v_new"), same_shape(kc, vc, "k_cache", "v_cache")
    b, new_len, g, d = ka.shape
    if (kc.shape[0], kc.shape[2], kc.shape[3]) != (b, g, d):
        raise ValueError(f"k_cache must be [{b}, max_seq, {g}, {d}], got {kc.shape}")
    call("cudann_kv_cache_write", ka, va, kc, vc, dim(b, "batch"), dim(new_len, "new_len"),
         dim(kc.shape[1], "max_seq"), dim(g, "n_kv_heads"), dim(d, "head_dim"), dim(pos, "pos"), code,
         infer_stream(stream, [ka, va, kc, vc]))


# ------------------------------------------------------------------------- losses

def cross_entropy(logits: Array, targets: Array, log_probs: Optional[Array] = None, loss: Optional[Array] = None,
                  *, stream=None) -> Tuple[Array, Array]:
    """``log_probs = log_softmax(logits[..., vocab])`` and the mean NLL of ``targets[...]``
    (int32; negative: padding). Returns ``(loss, log_probs)``, ``loss`` a 0-d float32 array."""
    la, ta = _adapt(stream, logits=logits, targets=targets)
    require(la, "logits", (F32,), min_ndim=1), require(ta, "targets", (I32,))
    rows, vocab = _rows_cols(la, "logits")
    _shape(ta, "targets", la.shape[:-1])
    st = stream_handle(stream)
    lo, loa = output(loss, la, "loss", (), F32, st)
    lp, lpa = output(log_probs, la, "log_probs", la.shape, F32, st)
    call("cuda_cross_entropy_forward", la, ta, loa, lpa, dim(rows, "batch_seq"), dim(vocab, "vocab_size"),
         infer_stream(stream, [la, ta, loa, lpa]))
    return lo, lp


def cross_entropy_backward(log_probs: Array, targets: Array, scale: float = 1.0, out: Optional[Array] = None, *,
                           stream=None) -> Array:
    """``d_logits = (exp(log_probs) - onehot(targets)) * scale``; zero rows for padding targets."""
    la, ta = _adapt(stream, log_probs=log_probs, targets=targets)
    require(la, "log_probs", (F32,), min_ndim=1), require(ta, "targets", (I32,))
    rows, vocab = _rows_cols(la, "log_probs")
    _shape(ta, "targets", la.shape[:-1])
    o, oa = output(out, la, "out", la.shape, F32, stream_handle(stream))
    call("cuda_cross_entropy_backward", la, ta, oa, dim(rows, "batch_seq"), dim(vocab, "vocab_size"), scale,
         infer_stream(stream, [la, ta, oa]))
    return o


def aux_loss(router_probs: Array, expert_indices: Array, alpha: float = 0.01, *, stream=None,
             out: Optional[Tuple[Array, Array, Array]] = None) -> Tuple[Array, Array, Array]:
    """MoE load-balancing loss of ``router_probs[tokens, E]`` and ``expert_indices[tokens, k]`` (int32).
    Returns ``(aux_loss 0-d, f_counts[E], p_means[E])``."""
    pa, ia = _adapt(stream, router_probs=router_probs, expert_indices=expert_indices)
    require(pa, "router_probs", (F32,), ndim=2), require(ia, "expert_indices", (I32,), ndim=2)
    t, e = pa.shape
    if ia.shape[0] != t:
        raise ValueError(f"expert_indices must have {t} rows, got {ia.shape}")
    st = stream_handle(stream)
    outs = out or (None, None, None)
    lo, loa = output(outs[0], pa, "aux_loss", (), F32, st)
    fo, foa = output(outs[1], pa, "f_counts", (e,), F32, st)
    po, poa = output(outs[2], pa, "p_means", (e,), F32, st)
    call("cuda_aux_loss_forward", pa, ia, loa, foa, poa, dim(t, "batch_seq"), dim(e, "n_experts"),
         dim(ia.shape[1], "top_k"), alpha, infer_stream(stream, [pa, ia]))
    return lo, fo, po


def aux_loss_backward(f_counts: Array, tokens: int, alpha: float = 0.01, scale: float = 1.0,
                      out: Optional[Array] = None, *, stream=None) -> Array:
    """The aux loss's gradient into the router probabilities: ``d_probs[tokens, E]``."""
    fa, = _adapt(stream, f_counts=f_counts)
    require(fa, "f_counts", (F32,), ndim=1)
    o, oa = output(out, fa, "out", (tokens, fa.shape[0]), F32, stream_handle(stream))
    call("cudann_aux_loss_backward", fa, oa, dim(tokens, "tokens"), dim(fa.shape[0], "n_experts"), alpha, scale,
         infer_stream(stream, [fa, oa]))
    return o


# ---------------------------------------------------------------------- optimizer

def adamw_step(param: Array, grad: Array, m: Array, v: Array, *, lr: float, step: int, beta1: float = 0.9,
               beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, stream=None) -> None:
    """One AdamW step, in place on ``param``, ``m`` and ``v`` (all the shape of ``grad``)."""
    pa, ga, ma, va = _adapt(stream, param=param, grad=grad, m=m, v=v)
    for a, n in ((pa, "param"), (ga, "grad"), (ma, "m"), (va, "v")):
        require(a, n, (F32,), writable=n != "grad")
        same_shape(pa, a, "param", n)
    call("cuda_adamw_step", pa, ga, ma, va, lr, beta1, beta2, eps, weight_decay, dim(step, "step"), pa.size,
         infer_stream(stream, [pa, ga, ma, va]))


def zero_grad(grad: Array, *, stream=None) -> None:
    """Sets ``grad`` to zero, in place."""
    ga, = _adapt(stream, grad=grad)
    require(ga, "grad", (F32,), writable=True)
    call("cuda_zero_grad", ga, ga.size, infer_stream(stream, [ga]))


def grad_clip(grad: Array, clip_norm: float, *, total_norm: Optional[Array] = None,
              partial_norms: Optional[Array] = None, stream=None) -> Array:
    """Clips ``grad`` in place to global L2 norm ``clip_norm``; returns the norm before
    clipping as a 0-d float32 array (``partial_norms``: optional scratch of ``ceil(n/256)``)."""
    ga, = _adapt(stream, grad=grad)
    require(ga, "grad", (F32,), writable=True)
    st = stream_handle(stream)
    n = ga.size
    to, toa = output(total_norm, ga, "total_norm", (), F32, st)
    if partial_norms is None:
        _, pa = output(None, ga, "partial_norms", (-(-n // 256),), F32, st)
    else:
        pa = require(adapt(partial_norms, "partial_norms", st), "partial_norms", (F32,), writable=True)
        if pa.size < -(-n // 256):
            raise ValueError(f"partial_norms must hold at least {-(-n // 256)} floats, got {pa.size}")
    call("cuda_grad_clip", ga, pa, toa, clip_norm, n, infer_stream(stream, [ga, pa, toa]))
    return to


def scatter_add(grad_output: Array, indices: Array, grad_weight: Array, *, stream=None) -> None:
    """``grad_weight[indices[i]] += grad_output[i]`` in place (negative indices skipped)."""
    go, ia, gw = _adapt(stream, grad_output=grad_output, indices=indices, grad_weight=grad_weight)
    require(go, "grad_output", (F32,), min_ndim=1), require(ia, "indices", (I32,))
    require(gw, "grad_weight", (F32,), min_ndim=1, writable=True)
    n, d = _rows_cols(go, "grad_output")
    _shape(ia, "indices", go.shape[:-1])
    if gw.shape[-1] != d:
        raise ValueError(f"grad_weight rows must have {d} columns, got {gw.shape}")
    call("cuda_scatter_add", go, ia, gw, dim(n, "num_indices"), dim(d, "embedding_dim"), infer_stream(stream, [go, ia, gw]))


# ----------------------------------------------------------------------- decoding

def argmax(logits: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """The first maximal index of each row of ``logits[..., vocab]`` (int32; NaN counts as maximal;
    logits float32, float16 or bfloat16)."""
    la, = _adapt(stream, logits=logits)
    cname, code = _typed(la, "logits", "cuda_argmax", "cudann_argmax_ex", ndim_min=1)
    rows, vocab = _rows_cols(la, "logits")
    o, oa = output(out, la, "out", la.shape[:-1], I32, stream_handle(stream))
    call(cname, la, oa, dim(rows, "batch"), dim(vocab, "vocab_size"), *code, infer_stream(stream, [la, oa]))
    return o


def _seeds(seeds, la: Arr, rows: int, st):
    if isinstance(seeds, (int, np.integer)):
        base = np.uint64(int(seeds) % 2**64)
        host = (np.arange(rows, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ base
        seeds = host_to_like(la, host)
    sa = require(adapt(seeds, "seeds", st), "seeds", (U64,))
    _shape(sa, "seeds", la.shape[:-1])
    return sa


def _sampler(f32_name: str, logits, seeds, extra, temperature, out, stream):
    st = stream_handle(stream)
    la, = _adapt(stream, logits=logits)
    cname, code = _typed(la, "logits", f32_name, f32_name.replace("cuda_", "cudann_", 1) + "_ex", ndim_min=1)
    rows, vocab = _rows_cols(la, "logits")
    sa = _seeds(seeds, la, rows, st)
    o, oa = output(out, la, "out", la.shape[:-1], I32, st)
    call(cname, la, oa, sa, dim(rows, "batch"), dim(vocab, "vocab_size"), *extra, temperature, *code,
         infer_stream(stream, [la, oa, sa]))
    return o


def sample(logits: Array, seeds, temperature: float = 1.0, out: Optional[Array] = None, *, stream=None) -> Array:
    """One token per row of ``logits[..., vocab]`` from ``softmax(logits / temperature)``
    (0: argmax). ``seeds``: uint64 per row, or an int from which per-row seeds are derived.
    float16/bfloat16 logits give the tokens float32 sampling gives on the widened logits."""
    return _sampler("cuda_sample", logits, seeds, (), temperature, out, stream)


def topk_sample(logits: Array, seeds, k: int, temperature: float = 1.0, out: Optional[Array] = None, *,
                stream=None) -> Array:
    """:func:`sample` restricted to the ``k`` largest logits."""
    return _sampler("cuda_topk_sample", logits, seeds, (dim(k, "k"),), temperature, out, stream)


def topp_sample(logits: Array, seeds, top_p: float, temperature: float = 1.0, out: Optional[Array] = None, *,
                stream=None) -> Array:
    """:func:`sample` restricted to the nucleus of probability ``top_p``."""
    return _sampler("cuda_topp_sample", logits, seeds, (float(top_p),), temperature, out, stream)


# ---------------------------------------------------------------------- embedding

def embedding(ids: Array, table: Array, out: Optional[Array] = None, *, stream=None) -> Array:
    """``out[..., :] = table[ids[...], :]`` (int32 ids; negative: a zero row). Shape ``ids.shape + (dim,)``;
    ``table`` float32, float16 or bfloat16 (rows copied as they are), ``out`` of its dtype."""
    ia, ta = _adapt(stream, ids=ids, table=table)
    code = _dtype_code(ta, "table")
    require(ia, "ids", (I32,)), require(ta, "table", ndim=2)
    vocab, d = ta.shape
    o, oa = output(out, ta, "out", ia.shape + (d,), ta.dtype, stream_handle(stream))
    call("cudann_embedding", ia, ta, oa, dim(ia.size, "n_ids"), dim(vocab, "vocab_size"), dim(d, "dim"), code,
         infer_stream(stream, [ia, ta, oa]))
    return o


def embedding_backward(ids: Array, d_output: Array, vocab_size: Optional[int] = None, out: Optional[Array] = None,
                       *, stream=None) -> Array:
    """``d_table[vocab_size, dim]``: the rows of ``d_output[..., dim]`` summed per id."""
    ia, da = _adapt(stream, ids=ids, d_output=d_output)
    require(ia, "ids", (I32,)), require(da, "d_output", (F32,), min_ndim=1)
    n, d = _rows_cols(da, "d_output")
    _shape(ia, "ids", da.shape[:-1])
    st = stream_handle(stream)
    if vocab_size is None:
        if out is None:
            raise ValueError("pass vocab_size or out")
        vocab_size = adapt(out, "out", st).shape[0]
    o, oa = output(out, da, "out", (vocab_size, d), F32, st)
    call("cudann_embedding_backward", ia, da, oa, dim(n, "n_ids"), dim(vocab_size, "vocab_size"), dim(d, "dim"),
         infer_stream(stream, [ia, da, oa]))
    return o


# ---------------------------------------------------------------------------- MoE

def _tk(a: Arr, name: str, dtype: str):
    require(a, name, (dtype,), ndim=2)
    return a.shape


def moe_router_backward(weights: Array, indices: Array, d_weights: Array, n_experts: int,
                        out: Optional[Array] = None, *, stream=None) -> Array:
    """Gradient through :func:`softmax_topk`'s weights into the router logits ``[tokens, n_experts]``."""
    wa, ia, da = _adapt(stream, weights=weights, indices=indices, d_weights=d_weights)
    t, k = _tk(wa, "weights", F32)
    _tk(ia, "indices", I32), _tk(da, "d_weights", F32)
    same_shape(wa, ia, "weights", "indices"), same_shape(wa, da, "weights", "d_weights")
    o, oa = output(out, wa, "out", (t, n_experts), F32, stream_handle(stream))
    call("cudann_moe_router_backward", wa, ia, da, oa, dim(t, "tokens"), dim(n_experts, "n_experts"), dim(k, "k"),
         infer_stream(stream, [wa, ia, da, oa]))
    return o


def moe_dispatch(x: Array, indices: Array, n_experts: int, out: Optional[Array] = None,
                 order: Optional[Array] = None, offsets: Optional[Array] = None, *,
                 stream=None) -> Tuple[Array, Array, Array]:
    """Groups the token-expert pairs of ``indices[tokens, k]`` by expert. Returns
    ``(rows[tokens*k, dim], order[tokens*k] int32, offsets[n_experts + 1] int32)``."""
    xa, ia = _adapt(stream, x=x, indices=indices)
    require(xa, "x", (F32,), ndim=2)
    t, k = _tk(ia, "indices", I32)
    if xa.shape[0] != t:
        raise ValueError(f"x must have {t} rows (one per token), got {xa.shape}")
    d = xa.shape[1]
    st = stream_handle(stream)
    o, oa = output(out, xa, "out", (t * k, d), F32, st)
    r, ra = output(order, xa, "order", (t * k,), I32, st)
    f, fa = output(offsets, xa, "offsets", (n_experts + 1,), I32, st)
    call("cudann_moe_dispatch", xa, ia, oa, ra, fa, dim(t, "tokens"), dim(d, "dim"), dim(n_experts, "n_experts"),
         dim(k, "k"), infer_stream(stream, [xa, ia, oa]))
    return o, r, f


def _order(ra: Arr, k: int):
    require(ra, "order", (I32,), ndim=1)
    if k < 1 or ra.shape[0] % k:
        raise ValueError(f"order has {ra.shape[0]} entries, not a multiple of k = {k}")
    return ra.shape[0] // k


def moe_dispatch_backward(d_output: Array, order: Array, k: int, out: Optional[Array] = None, *,
                          stream=None) -> Array:
    """``d_input[tokens, dim]``: each token's dispatched rows of ``d_output[tokens*k, dim]`` summed."""
    da, ra = _adapt(stream, d_output=d_output, order=order)
    require(da, "d_output", (F32,), ndim=2)
    t = _order(ra, k)
    _shape(da, "d_output", (t * k, da.shape[1]))
    o, oa = output(out, da, "out", (t, da.shape[1]), F32, stream_handle(stream))
    call("cudann_moe_dispatch_backward", da, ra, oa, dim(t, "tokens"), dim(da.shape[1], "dim"), dim(k, "k"),
         infer_stream(stream, [da, ra, oa]))
    return o


def moe_combine(expert_output: Array, weights: Array, order: Array, out: Optional[Array] = None, *,
                stream=None) -> Array:
    """``out[t] = Σ_j weights[t, j] * expert_output[row of pair t*k + j]``."""
    ea, wa, ra = _adapt(stream, expert_output=expert_output, weights=weights, order=order)
    t, k = _tk(wa, "weights", F32)
    require(ea, "expert_output", (F32,), ndim=2)
    _order(ra, k)
    _shape(ra, "order", (t * k,)), _shape(ea, "expert_output", (t * k, ea.shape[1]))
    d = ea.shape[1]
    o, oa = output(out, ea, "out", (t, d), F32, stream_handle(stream))
    call("cudann_moe_combine", ea, wa, ra, oa, dim(t, "tokens"), dim(d, "dim"), dim(k, "k"),
         infer_stream(stream, [ea, wa, ra, oa]))
    return o


def moe_combine_backward(d_output: Array, expert_output: Array, weights: Array, order: Array,
                         d_expert_output: Optional[Array] = None, d_weights: Optional[Array] = None, *,
                         stream=None) -> Tuple[Array, Array]:
    """Returns ``(d_expert_output[tokens*k, dim], d_weights[tokens, k])`` of :func:`moe_combine`."""
    da, ea, wa, ra = _adapt(stream, d_output=d_output, expert_output=expert_output, weights=weights, order=order)
    t, k = _tk(wa, "weights", F32)
    require(ea, "expert_output", (F32,), ndim=2), require(da, "d_output", (F32,), ndim=2)
    _order(ra, k)
    d = ea.shape[1]
    _shape(ra, "order", (t * k,)), _shape(ea, "expert_output", (t * k, d)), _shape(da, "d_output", (t, d))
    st = stream_handle(stream)
    de, dea = output(d_expert_output, ea, "d_expert_output", ea.shape, F32, st)
    dw, dwa = output(d_weights, ea, "d_weights", wa.shape, F32, st)
    call("cudann_moe_combine_backward", da, ea, wa, ra, dea, dwa, dim(t, "tokens"), dim(d, "dim"), dim(k, "k"),
         infer_stream(stream, [da, ea, wa, ra]))
    return de, dw
