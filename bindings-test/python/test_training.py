"""The training and inference ops (cudann_*): each against numpy in float64,
backwards against the analytic numpy gradient, and checkpoints interchanged
with the `safetensors` package."""
import ctypes

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from checks import assert_close, poisoned
from cudann_ctypes import CODES

F32 = CODES["CUDANN_F32"]


def f64(x):
    return np.asarray(x, np.float64)


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_ex_every_transpose_with_padding_and_batch(lib, rng, ta, tb):
    m, n, k, batch, pad = 5, 7, 9, 3, 2
    a_rows, a_cols = (k, m) if ta else (m, k)
    b_rows, b_cols = (n, k) if tb else (k, n)
    a = rng.standard_normal((batch, a_rows, a_cols + pad)).astype(np.float32)
    b = rng.standard_normal((b_rows, b_cols + pad)).astype(np.float32)  # stride 0: shared
    c = poisoned((batch, m, n + pad))
    code = lib.cudann_gemm_ex(ta, tb, m, n, k, 2.0, a, F32, a_cols + pad, a_rows * (a_cols + pad), b, F32, b_cols + pad, 0,
                              0.0, c, F32, n + pad, m * (n + pad), batch, None)
    assert code == 0, lib.last_error()
    op_a = f64(a[..., :a_cols]).transpose(0, 2, 1) if ta else f64(a[..., :a_cols])
    op_b = f64(b[:, :b_cols]).T if tb else f64(b[:, :b_cols])
    assert_close(c[..., :n], 2.0 * op_a @ op_b, rtol=1e-5, scale=2.0 * np.abs(op_a) @ np.abs(op_b))
    assert (c[..., n:] == poisoned(1)[0]).all(), "padding written"


def test_gelu_and_layernorm_with_backward(lib, rng):
    x = rng.standard_normal((6, 33)).astype(np.float32)
    y = poisoned(x.shape)
    assert lib.cudann_gelu(x, y, x.size, None) == 0
    xd = f64(x)
    u = np.sqrt(2 / np.pi) * (xd + 0.044715 * xd ** 3)
    assert_close(y, 0.5 * xd * (1 + np.tanh(u)), rtol=1e-6, atol=1e-7)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = poisoned(x.shape)
    assert lib.cudann_gelu_backward(dy, x, dx, x.size, None) == 0
    slope = 0.5 * (1 + np.tanh(u)) + 0.5 * xd * (1 - np.tanh(u) ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * xd ** 2)
    assert_close(dx, f64(dy) * slope, rtol=1e-5, atol=1e-6)

    w, b = rng.standard_normal(33).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    out = poisoned(x.shape)
    assert lib.cudann_layernorm(x, w, b, out, 6, 33, 1e-5, None) == 0
    mean, var = xd.mean(-1, keepdims=True), xd.var(-1, keepdims=True)
    xhat = (xd - mean) / np.sqrt(var + 1e-5)
    assert_close(out, xhat * f64(w) + f64(b), rtol=1e-5, atol=1e-5)
    dx, dw, db = poisoned(x.shape), poisoned(33), poisoned(33)
    assert lib.cudann_layernorm_backward(dy, x, w, dx, dw, db, 6, 33, 1e-5, None) == 0
    g = f64(dy) * f64(w)
    want = (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)) / np.sqrt(var + 1e-5)
    assert_close(dx, want, rtol=1e-4, atol=1e-5)
    assert_close(dw, (f64(dy) * xhat).sum(0), rtol=1e-5, atol=1e-5)
    assert_close(db, f64(dy).sum(0), rtol=1e-5, atol=1e-5)


def test_softmax_backward_and_bias(lib, rng):
    x = rng.standard_normal((4, 50)).astype(np.float32)
    p = np.exp(f64(x) - f64(x).max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y, dy = p.astype(np.float32), rng.standard_normal(x.shape).astype(np.float32)
    dx = poisoned(x.shape)
    assert lib.cudann_softmax_backward(dy, y, dx, 4, 50, None) == 0
    assert_close(dx, f64(y) * (f64(dy) - (f64(dy) * f64(y)).sum(-1, keepdims=True)), rtol=1e-5, atol=1e-7)
    db = poisoned(50)
    assert lib.cudann_bias_backward(dy, db, 4, 50, None) == 0
    assert_close(db, f64(dy).sum(0), rtol=1e-5, atol=1e-6)


def rope(x, pos, base=10000.0, inverse=False):
    """Interleaved-pair RoPE of x [B, S, H, d] at positions pos [S] in float64."""
    d = x.shape[-1]
    angle = np.outer(pos, base ** (-2.0 * np.arange(d // 2) / d))[None, :, None, :]
    cos, sin = np.cos(angle), np.sin(angle) * (-1 if inverse else 1)
    x0, x1 = f64(x)[..., 0::2], f64(x)[..., 1::2]
    out = np.empty(x.shape)
    out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    return out


def test_rope_backward_rotates_back(lib, rng):
    b, s, hq, hk, d, offset = 2, 5, 4, 2, 8, 3
    freqs = poisoned((s + offset, d // 2))
    assert lib.cuda_rope_freqs(freqs, s + offset, d, 10000.0, 1.0, None) == 0
    dq, dk = rng.standard_normal((b, s, hq, d)).astype(np.float32), rng.standard_normal((b, s, hk, d)).astype(np.float32)
    oq, ok = poisoned(dq.shape), poisoned(dk.shape)
    assert lib.cudann_rope_backward(dq, dk, freqs, oq, ok, b, s, hq, hk, d, offset, None) == 0
    pos = np.arange(s) + offset
    assert_close(oq, rope(dq, pos, inverse=True), rtol=1e-5, atol=1e-5)
    assert_close(ok, rope(dk, pos, inverse=True), rtol=1e-5, atol=1e-5)


def attention(q, k, v, causal, pos0=0):
    """Float64 GQA attention: (output [B,Sq,H,d], lse [B,Sq,H], probabilities)."""
    h, g = q.shape[2], k.shape[2]
    k, v = np.repeat(f64(k), h // g, axis=2), np.repeat(f64(v), h // g, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", f64(q), k) / np.sqrt(q.shape[-1])
    if causal:
        hidden = np.arange(k.shape[1])[None, :] > (np.arange(q.shape[1]) + pos0)[:, None]
        s = np.where(hidden, -np.inf, s)
    m = s.max(-1, keepdims=True)
    lse = m + np.log(np.exp(s - m).sum(-1, keepdims=True))
    p = np.exp(s - lse)
    return np.einsum("bhqk,bkhd->bqhd", p, v), lse[..., 0].transpose(0, 2, 1), p


def test_attention_forward_backward_against_numpy(lib, rng):
    b, s, h, g, d = 2, 19, 4, 2, 8
    q, k, v, dy = (rng.standard_normal(shape).astype(np.float32) for shape in [(b, s, h, d), (b, s, g, d), (b, s, g, d), (b, s, h, d)])
    out, lse = poisoned(q.shape), poisoned((b, s, h))
    scale = 1 / np.sqrt(d)
    assert lib.cudann_attention_forward(q, k, v, None, out, lse, b, s, s, s, h, g, d, 0, 1, scale, F32, None) == 0
    want, want_lse, p = attention(q, k, v, causal=True)
    assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    dq, dk, dv = poisoned(q.shape), poisoned(k.shape), poisoned(v.shape)
    assert lib.cudann_attention_backward(dy, q, k, v, None, out, lse, dq, dk, dv, b, s, s, h, g, d, 0, 1, scale, None) == 0
    # Analytic float64 gradients, summed over the heads that share a KV head.
    do = f64(dy).transpose(0, 2, 1, 3)
    kk, vv = np.repeat(f64(k), h // g, axis=2).transpose(0, 2, 1, 3), np.repeat(f64(v), h // g, axis=2).transpose(0, 2, 1, 3)
    dp = do @ vv.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    group = lambda x: x.reshape(b, g, h // g, s, d).sum(2).transpose(0, 2, 1, 3)
    assert_close(dq, (scale * ds @ kk).transpose(0, 2, 1, 3), rtol=1e-4, atol=1e-5)
    assert_close(dk, group(scale * ds.transpose(0, 1, 3, 2) @ f64(q).transpose(0, 2, 1, 3)), rtol=1e-4, atol=1e-5)
    assert_close(dv, group(p.transpose(0, 1, 3, 2) @ do), rtol=1e-4, atol=1e-5)


def test_decoding_with_a_kv_cache(lib, rng):
    s, h, g, d, cap = 6, 2, 1, 4, 10
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in [(1, s, h, d), (1, s, g, d), (1, s, g, d)])
    kc, vc = np.zeros((1, cap, g, d), np.float32), np.zeros((1, cap, g, d), np.float32)
    assert lib.cudann_kv_cache_write(k, v, kc, vc, 1, s, cap, g, d, 0, F32, None) == 0
    assert (kc[0, :s] == k[0]).all() and (kc[0, s:] == 0).all()
    out, lse = poisoned((1, 1, h, d)), poisoned((1, 1, h))
    last = np.ascontiguousarray(q[:, -1:])
    assert lib.cudann_attention_forward(last, kc, vc, None, out, lse, 1, 1, s, cap, h, g, d, s - 1, 1, 1 / np.sqrt(d), F32, None) == 0
    assert_close(out, attention(q, k, v, causal=True)[0][:, -1:], rtol=1e-5, atol=1e-6)


def test_moe_routing_round_trip(lib, rng):
    tokens, dim, experts, k = 7, 3, 4, 2
    logits = rng.standard_normal((tokens, experts)).astype(np.float32)
    w, idx = poisoned((tokens, k)), poisoned((tokens, k), np.int32)
    assert lib.cuda_softmax_topk(logits, w, idx, tokens, experts, k, None) == 0
    x = rng.standard_normal((tokens, dim)).astype(np.float32)
    rows, order, offsets = poisoned((tokens * k, dim)), poisoned(tokens * k, np.int32), poisoned(experts + 1, np.int32)
    assert lib.cudann_moe_dispatch(x, idx, rows, order, offsets, tokens, dim, experts, k, None) == 0
    assert (order == np.argsort(idx.ravel(), kind="stable")).all()
    assert (offsets == np.searchsorted(np.sort(idx.ravel()), np.arange(experts + 1))).all()
    assert (rows == x[order // k]).all()
    out = poisoned((tokens, dim))
    assert lib.cudann_moe_combine(rows, w, order, out, tokens, dim, k, None) == 0
    assert_close(out, f64(x) * f64(w).sum(1, keepdims=True), rtol=1e-6, atol=1e-7)  # each expert the identity
    dw = rng.standard_normal((tokens, k)).astype(np.float32)
    d_logits = poisoned((tokens, experts))
    assert lib.cudann_moe_router_backward(w, idx, dw, d_logits, tokens, experts, k, None) == 0
    want = np.zeros((tokens, experts))
    for t in range(tokens):
        want[t, idx[t]] = f64(w[t]) * (f64(dw[t]) - f64(w[t]) @ f64(dw[t]))
    assert_close(d_logits, want, rtol=1e-5, atol=1e-7)


def test_embedding_and_its_backward(lib, rng):
    vocab, dim = 6, 4
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    ids = np.array([2, -1, 5, 2], np.int32)
    out = poisoned((4, dim))
    assert lib.cudann_embedding(ids, table, out, 4, vocab, dim, F32, None) == 0
    assert (out[[0, 2, 3]] == table[[2, 5, 2]]).all() and (out[1] == 0).all()
    dy = rng.standard_normal((4, dim)).astype(np.float32)
    d_table = poisoned((vocab, dim))
    assert lib.cudann_embedding_backward(ids, dy, d_table, 4, vocab, dim, None) == 0
    want = np.zeros((vocab, dim))
    np.add.at(want, ids[ids >= 0], f64(dy)[ids >= 0])
    assert_close(d_table, want, rtol=1e-6, atol=1e-7)
    bad = np.array([0, 6], np.int32)
    assert lib.cudann_embedding(bad, table, out, 2, vocab, dim, F32, None) == CODES["CUDANN_INVALID_VALUE"]
    assert "ids[1] = 6 is outside [0, vocab_size = 6)" in lib.last_error()


def test_checkpoints_interchange_with_the_safetensors_package(lib, rng, tmp_path):
    # Written by the safetensors package, read by cudann.
    w, ids = rng.standard_normal((3, 4)).astype(np.float32), np.arange(5, dtype=np.int32)
    theirs = str(tmp_path / "theirs.safetensors")
    save_file({"w": w, "ids": ids}, theirs)
    handle = ctypes.c_void_p()
    assert lib.cudann_safetensors_open(theirs.encode(), ctypes.byref(handle)) == 0, lib.last_error()
    count = np.zeros(1, np.int64)
    assert lib.cudann_safetensors_count(handle, count) == 0 and count[0] == 2
    dtype, ndim, shape = np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(4, np.int64)
    assert lib.cudann_safetensors_info(handle, b"w", dtype, ndim, shape, 4) == 0
    assert (dtype[0], ndim[0], list(shape[:2])) == (F32, 2, [3, 4])
    got = poisoned((3, 4))
    assert lib.cudann_safetensors_read(handle, b"w", F32, got, 12, None) == 0 and (got == w).all()
    got_ids = poisoned(5, np.int32)
    assert lib.cudann_safetensors_read(handle, b"ids", CODES["CUDANN_I32"], got_ids, 5, None) == 0 and (got_ids == ids).all()
    assert lib.cudann_safetensors_close(handle) == 0
    assert lib.cudann_safetensors_close(handle) == CODES["CUDANN_INVALID_VALUE"]
    # Written by cudann, read by the safetensors package.
    writer = ctypes.c_void_p()
    assert lib.cudann_safetensors_writer_create(ctypes.byref(writer)) == 0
    assert lib.cudann_safetensors_writer_add(writer, b"w", F32, 2, np.array([3, 4], np.int64), w, None) == 0
    ours = str(tmp_path / "ours.safetensors")
    assert lib.cudann_safetensors_writer_save(writer, ours.encode()) == 0
    assert lib.cudann_safetensors_writer_free(writer) == 0
    assert (load_file(ours)["w"] == w).all()
