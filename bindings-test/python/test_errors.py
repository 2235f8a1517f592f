"""Every entry point's error path: -2, a message naming the function and argument,
and no buffer touched (every array argument is compared bitwise before/after)."""
import math
import re

import numpy as np
import pytest

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
    from cudann_ctypes import PROTOTYPES
    ops = {n for n in PROTOTYPES if n.startswith("cuda_")}
    assert ops == {name for name, _, _ in CASES}


@pytest.mark.parametrize("name,build,word", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_invalid_argument(lib, name, build, word):
    args = build()
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    before = [a.tobytes() for a in arrays]
    assert getattr(lib, name)(*args) == -2
    msg = lib.last_error()
    assert msg.startswith(name + ": "), msg
    assert re.search(rf"\b{re.escape(word)}\b", msg[len(name) + 2:]), msg
    assert [a.tobytes() for a in arrays] == before  # nothing was written


def test_topk_message_text(lib):
    o = poisoned(2, np.int32)
    assert lib.cuda_topk_sample(f(2, 4), o, seeds(2), 2, 4, 0, np.float32(1), None) == -2
    assert lib.last_error() == "cuda_topk_sample: k must be >= 1 (got 0)"


def test_success_clears_last_error(lib):
    assert lib.cuda_silu(f(4), out(4), -1, None) == -2
    assert lib.last_error() != ""
    assert lib.cuda_silu(f(4), out(4), 4, None) == 0
    assert lib.last_error() == ""
