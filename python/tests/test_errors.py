"""Every entry point's error path through the raw C ABI: -2, a message naming the
function and argument, and no buffer touched (every array argument is compared
bitwise before/after); then the array API's exceptions: CudannError for what the
library refuses, TypeError/ValueError for what Python refuses before any call."""
import math
import re

import numpy as np
import pytest

import cudann
from checks import poisoned

BIG = 2**31 - 1  # dimensions whose product overflows even 64 bits


def f(*shape):
    return np.ones(shape, np.float32)


def out(*shape):
    return poisoned(shape)


def i32(*vals):
    return np.array(vals, np.int32)


def seeds(n):
    return np.arange(n, dtype=np.uint64)


def overlapping():
    """Two 4-float views of one buffer that overlap by half."""
    buf = out(8)
    return buf[0:4], buf[2:6]


def _partial(fn):
    a, b = overlapping()
    return fn(a, b)


# name, builder of the argument list, a word the message must contain (the argument)
CASES = [
    ("cuda_silu", lambda: [f(4), out(4), -1, None], "n"),
    ("cuda_add", lambda: [None, f(4), out(4), 4, None], "a"),
    ("cuda_mul", lambda: _partial(lambda a, o: [a, f(4), o, 4, None]), "output"),
    ("cuda_scale", lambda: [f(4), out(4), np.float32(2), -3, None], "n"),
    ("cuda_softmax", lambda: [f(4), out(4), -1, 4, None], "rows"),
    ("cuda_softmax_topk", lambda: [f(2, 4), out(2, 5), poisoned(10, np.int32), 2, 4, 5, None], "k"),
    ("cuda_rmsnorm", lambda: [f(2, 4), f(4), out(2, 4), 2, 4, np.float32(-1), None], "eps"),
    ("cuda_rmsnorm_residual",
     lambda: (lambda o: [f(2, 4), f(2, 4), f(4), o, o, 2, 4, np.float32(1e-5), None])(out(2, 4)), "residual_out"),
    ("cuda_gemm", lambda: _partial(lambda a, c: [a, f(4), c, 2, 2, 2, np.float32(1), np.float32(0), None]), "C"),
    ("cuda_gemm_batched", lambda: [f(4), f(4), out(4), -1, 2, 2, 1, np.float32(1), np.float32(0), None], "batch"),
    ("cuda_rope_freqs", lambda: [out(4, 1), 4, 3, np.float32(1e4), np.float32(1), None], "head_dim"),
    ("cuda_rope_forward", lambda: [f(1, 2, 1, 4), f(4, 2), out(1, 2, 1, 4), 1, 2, 1, 4, -1, None], "offset"),
    ("cuda_rope_qk", lambda: [f(12), f(12), f(8), out(12), out(12), 1, 2, 2, 2, 3, 0, None], "head_dim"),
    ("cuda_rope", lambda: (lambda q: [q, q, f(2, 2), 1, 2, 1, 4, None])(out(1, 2, 1, 4)), "k"),
    ("cuda_rope_ntk", lambda: [out(8), out(8), f(2, 2), 1, 2, 1, 4, np.float32(2), -1, None], "orig_len"),
    ("cuda_attention_scores", lambda: [None, f(8), out(4), 1, 1, 2, 4, np.float32(1), None], "Q"),
    ("cuda_attention_output", lambda: [f(4), f(8), out(8), 1, 1, 2, -4, None], "head_dim"),
    ("cuda_flash_attention", lambda: [f(8), None, f(8), out(8), 1, 2, 1, 4, np.float32(1), 1, None], "K"),
    ("cuda_flash_attention",
     lambda: [f(8), f(8), f(8), out(8), BIG, BIG, BIG, BIG, np.float32(1), 1, None], "overflows"),
    ("cuda_mqa_attention", lambda: [f(8), f(8), f(8), out(8), None, 1, -2, 1, 4, np.float32(1), None], "seq_len"),
    ("cuda_cross_entropy_forward", lambda: [f(2, 4), i32(1, 4), out(1), out(2, 4), 2, 4, None], "targets"),
    ("cuda_cross_entropy_backward", lambda: [f(2, 4), i32(0, 9), out(2, 4), 2, 4, np.float32(1), None], "targets"),
    ("cuda_aux_loss_forward",
     lambda: [f(2, 4), i32(0, 4), out(1), out(4), out(4), 2, 4, 1, np.float32(0.01), None], "expert_indices"),
    ("cuda_adamw_step", lambda: [out(4), f(4), out(4), out(4), *map(np.float32, (1e-3, 0.9, 0.999, 1e-8, 0.0)),
                                 0, 4, None], "step"),
    ("cuda_zero_grad", lambda: [out(4), -1, None], "size"),
    ("cuda_grad_clip", lambda: [out(4), out(1), out(1), np.float32(0), 4, None], "clip_norm"),
    ("cuda_scatter_add", lambda: [f(2, 4), i32(0, 1), out(2, 4), 2, -4, None], "embedding_dim"),
    ("cuda_argmax", lambda: [f(2, 1), poisoned(2, np.int32), 2, 0, None], "vocab_size"),
    ("cuda_sample", lambda: [f(2, 4), poisoned(2, np.int32), seeds(2), 2, 4, np.float32(-1), None], "temperature"),
    ("cuda_sample", lambda: [f(2, 4), poisoned(2, np.int32), seeds(2), 2, 4, np.float32(math.nan), None],
     "temperature"),
    ("cuda_topk_sample", lambda: [f(2, 4), poisoned(2, np.int32), seeds(2), 2, 4, 0, np.float32(1), None], "k"),
    ("cuda_topp_sample", lambda: [f(2, 4), poisoned(2, np.int32), seeds(2), 2, 4, np.float32(0), np.float32(1), None],
     "top_p"),
    ("cuda_topp_sample",
     lambda: [f(2, 4), poisoned(2, np.int32), seeds(2), 2, 4, np.float32(1.5), np.float32(1), None], "top_p"),
]


def test_every_entry_point_has_an_error_case():
    from cudann import PROTOTYPES
    ops = {n for n in PROTOTYPES if n.startswith("cuda_")}
    assert ops == {name for name, _, _ in CASES}


@pytest.mark.parametrize("name,build,word", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_invalid_argument(raw, name, build, word):
    args = build()
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    before = [a.tobytes() for a in arrays]
    assert getattr(raw, name)(*args) == -2
    msg = raw.last_error()
    assert msg.startswith(name + ": "), msg
    assert re.search(rf"\b{re.escape(word)}\b", msg[len(name) + 2:]), msg
    assert [a.tobytes() for a in arrays] == before  # nothing was written


def test_topk_message_text(raw):
    o = poisoned(2, np.int32)
    assert raw.cuda_topk_sample(f(2, 4), o, seeds(2), 2, 4, 0, np.float32(1), None) == -2
    assert raw.last_error() == "cuda_topk_sample: k must be >= 1 (got 0)"


def test_success_clears_last_error(raw):
    assert raw.cuda_silu(f(4), out(4), -1, None) == -2
    assert raw.last_error() != ""
    assert raw.cuda_silu(f(4), out(4), 4, None) == 0
    assert raw.last_error() == ""


# ------------------------------------------------------------- the array API

# function, builder of (args, kwargs), the C function, a word the message must contain
API_CASES = [
    ("rmsnorm", lambda: ((f(2, 4), f(4)), {"eps": -1.0, "out": out(2, 4)}), "cuda_rmsnorm", "eps"),
    ("softmax_topk", lambda: ((f(2, 4), 5), {"weights": out(2, 5), "indices": poisoned((2, 5), np.int32)}),
     "cuda_softmax_topk", "k"),
    ("rope_freqs", lambda: ((4, 3), {"out": out(4, 1)}), "cuda_rope_freqs", "head_dim"),
    ("rope_forward", lambda: ((f(1, 2, 1, 4), f(4, 2), -1), {"out": out(1, 2, 1, 4)}), "cuda_rope_forward", "offset"),
    ("rope_ntk_inplace", lambda: ((out(1, 2, 1, 4), out(1, 2, 1, 4), f(2, 2), 2.0, -1), {}), "cuda_rope_ntk",
     "orig_len"),
    ("rope_inplace", lambda: (lambda q: ((q, q, f(2, 2)), {}))(out(1, 2, 1, 4)), "cuda_rope", "k"),
    ("mul", lambda: (lambda a, o: ((a, f(4)), {"out": o}))(*overlapping()), "cuda_mul", "output"),
    ("gemm", lambda: (lambda a, c: ((a.reshape(2, 2), f(2, 2)), {"out": c.reshape(2, 2)}))(*overlapping()),
     "cuda_gemm", "C"),
    ("rmsnorm_residual", lambda: (lambda o: ((f(2, 4), f(2, 4), f(4)), {"out": o, "residual_out": o}))(out(2, 4)),
     "cuda_rmsnorm_residual", "residual_out"),
    ("cross_entropy", lambda: ((f(2, 4), i32(1, 4)), {"loss": out(), "log_probs": out(2, 4)}),
     "cuda_cross_entropy_forward", "targets"),
    ("cross_entropy_backward", lambda: ((f(2, 4), i32(0, 9)), {"out": out(2, 4)}), "cuda_cross_entropy_backward",
     "targets"),
    ("aux_loss", lambda: ((f(2, 4), i32(0, 4).reshape(2, 1)), {"out": (out(), out(4), out(4))}),
     "cuda_aux_loss_forward", "expert_indices"),
    ("adamw_step", lambda: ((out(4), f(4), out(4), out(4)), {"lr": 1e-3, "step": 0}), "cuda_adamw_step", "step"),
    ("grad_clip", lambda: ((out(4), 0.0), {"total_norm": out(), "partial_norms": out(1)}), "cuda_grad_clip",
     "clip_norm"),
    ("argmax", lambda: ((f(2, 0),), {"out": poisoned(2, np.int32)}), "cuda_argmax", "vocab_size"),
    ("sample", lambda: ((f(2, 4), seeds(2), -1.0), {"out": poisoned(2, np.int32)}), "cuda_sample", "temperature"),
    ("sample", lambda: ((f(2, 4), seeds(2), math.nan), {"out": poisoned(2, np.int32)}), "cuda_sample", "temperature"),
    ("topk_sample", lambda: ((f(2, 4), seeds(2), 0), {"out": poisoned(2, np.int32)}), "cuda_topk_sample", "k"),
    ("topp_sample", lambda: ((f(2, 4), seeds(2), 0.0), {"out": poisoned(2, np.int32)}), "cuda_topp_sample", "top_p"),
    ("topp_sample", lambda: ((f(2, 4), seeds(2), 1.5), {"out": poisoned(2, np.int32)}), "cuda_topp_sample", "top_p"),
    ("embedding", lambda: ((i32(0, 6), f(6, 4)), {"out": out(2, 4)}), "cudann_embedding", "ids"),
    ("moe_dispatch", lambda: ((f(2, 3), i32(0, 4).reshape(2, 1), 4),
                              {"out": out(2, 3), "order": poisoned(2, np.int32), "offsets": poisoned(5, np.int32)}),
     "cudann_moe_dispatch", "indices"),
    ("kv_cache_write", lambda: ((f(1, 2, 1, 4), f(1, 2, 1, 4), out(1, 3, 1, 4), out(1, 3, 1, 4), 2), {}),
     "cudann_kv_cache_write", "pos"),
    ("attention_forward", lambda: ((f(1, 2, 3, 4), f(1, 2, 2, 4), f(1, 2, 2, 4)),
                                   {"out": out(1, 2, 3, 4), "lse": out(1, 2, 3)}),
     "cudann_attention_forward", "n_kv_heads"),
]


@pytest.mark.parametrize("fn,build,c_name,word", API_CASES, ids=[f"{c[0]}-{c[3]}" for c in API_CASES])
def test_library_refusals_are_cudann_errors(fn, build, c_name, word):
    args, kwargs = build()
    arrays = [a for a in [*args, *kwargs.values()] if isinstance(a, np.ndarray)]
    arrays += [a for v in kwargs.values() if isinstance(v, tuple) for a in v]
    before = [a.tobytes() for a in arrays]
    with pytest.raises(cudann.CudannError) as e:
        getattr(cudann, fn)(*args, **kwargs)
    err = e.value
    assert (err.code, err.name, err.function) == (-2, "CUDANN_INVALID_VALUE", c_name)
    assert err.message.startswith(c_name + ": "), err.message
    assert re.search(rf"\b{re.escape(word)}\b", err.message[len(c_name) + 2:]), err.message
    assert err.message in str(err) and "CUDANN_INVALID_VALUE" in str(err)
    assert [a.tobytes() for a in arrays] == before  # nothing was written


def test_cudann_error_for_checkpoints(tmp_path):
    with pytest.raises(cudann.CudannError) as e:
        cudann.SafetensorsFile(tmp_path / "missing.safetensors")
    assert e.value.code == cudann.INVALID_VALUE and e.value.function == "cudann_safetensors_open"
    assert "missing.safetensors" in e.value.message


PY_TYPE_ERRORS = [
    ("float64 input", lambda: cudann.silu(np.ones(4))),
    ("float64 second input", lambda: cudann.add(f(4), np.ones(4))),
    ("int64 targets", lambda: cudann.cross_entropy(f(2, 4), np.zeros(2, np.int64))),
    ("int32 seeds", lambda: cudann.sample(f(2, 4), np.zeros(2, np.int32))),
    ("float out for int32", lambda: cudann.argmax(f(2, 4), out=out(2))),
    ("float64 out", lambda: cudann.softmax(f(2, 4), out=np.zeros((2, 4)))),
    ("a list", lambda: cudann.silu([1.0, 2.0])),
    ("a string", lambda: cudann.silu("x")),
    ("int64 ids", lambda: cudann.embedding(np.zeros(2, np.int64), f(3, 4))),
    ("float step", lambda: cudann.adamw_step(out(4), f(4), out(4), out(4), lr=1e-3, step=1.5)),
    ("a bad stream", lambda: cudann.silu(f(4), stream="default")),
]


@pytest.mark.parametrize("what,call", PY_TYPE_ERRORS, ids=[c[0] for c in PY_TYPE_ERRORS])
def test_type_errors_before_the_call(what, call):
    cudann.silu(f(4))  # a success, so last_error is "" ...
    with pytest.raises(TypeError):
        call()
    assert cudann.last_error() == ""  # ... and stays so: the library was never called


def _strided():
    return np.ones(8, np.float32)[::2]


def _readonly():
    a = out(4)
    a.flags.writeable = False
    return a


PY_VALUE_ERRORS = [
    ("strided input", lambda: cudann.silu(_strided())),
    ("transposed input", lambda: cudann.softmax(f(4, 3).T)),
    ("strided output", lambda: cudann.silu(f(4), out=out(8)[::2])),
    ("read-only output", lambda: cudann.silu(f(4), out=_readonly())),
    ("output shape", lambda: cudann.silu(f(4), out=out(5))),
    ("binary shapes", lambda: cudann.add(f(4), f(5))),
    ("gemm inner dims", lambda: cudann.gemm(f(2, 3), f(4, 5))),
    ("gemm rank", lambda: cudann.gemm(f(2, 3, 1), f(1, 5))),
    ("gemm beta without out", lambda: cudann.gemm(f(2, 3), f(3, 5), beta=1.0)),
    ("gemm_ex strided rows", lambda: cudann.gemm_ex(f(4, 6)[:, ::2], f(3, 2))),
    ("rmsnorm weight", lambda: cudann.rmsnorm(f(2, 4), f(5))),
    ("attention rank", lambda: cudann.flash_attention(f(2, 3, 4), f(2, 3, 4), f(2, 3, 4))),
    ("mqa kv shape", lambda: cudann.mqa_attention(f(1, 3, 2, 4), f(1, 3, 2, 4), f(1, 3, 2, 4))),
    ("targets shape", lambda: cudann.cross_entropy(f(2, 4), i32(1, 2, 3))),
    ("size beyond a C int", lambda: cudann.rope_freqs(2**31, 8, out=out(0, 4))),
    ("embedding_backward vocab", lambda: cudann.embedding_backward(i32(0), f(1, 4))),
    ("partial_norms too small", lambda: cudann.grad_clip(out(1000), 1.0, partial_norms=out(1))),
]


@pytest.mark.parametrize("what,call", PY_VALUE_ERRORS, ids=[c[0] for c in PY_VALUE_ERRORS])
def test_value_errors_before_the_call(what, call):
    cudann.silu(f(4))
    with pytest.raises(ValueError):
        call()
    assert cudann.last_error() == ""


def test_refused_calls_write_nothing():
    o = out(4)
    with pytest.raises(TypeError):
        cudann.add(f(4), np.ones(4), out=o)
    with pytest.raises(ValueError):
        cudann.add(f(4), f(5), out=o)
    assert (o == poisoned(4)).all()
