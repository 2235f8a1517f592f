"""The training and inference ops (cudann_*): each against numpy in float64,
backwards against the analytic numpy gradient, and checkpoints interchanged
with the `safetensors` package."""
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import cudann
from checks import assert_close, poisoned


def f64(x):
    return np.asarray(x, np.float64)


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_ex_every_transpose_with_padding_and_batch(rng, ta, tb):
    m, n, k, batch, pad = 5, 7, 9, 3, 2
    a_rows, a_cols = (k, m) if ta else (m, k)
    b_rows, b_cols = (n, k) if tb else (k, n)
    a = rng.standard_normal((batch, a_rows, a_cols + pad)).astype(np.float32)
    b = rng.standard_normal((b_rows, b_cols + pad)).astype(np.float32)  # stride 0: shared
    c = poisoned((batch, m, n + pad))
    # Views of the padded arrays: leading dimensions and strides come from numpy's strides;
    # the 2-D b is shared by every batch entry (stride 0).
    cudann.gemm_ex(a[..., :a_cols], b[:, :b_cols], out=c[..., :n], trans_a=bool(ta), trans_b=bool(tb), alpha=2.0)
    op_a = f64(a[..., :a_cols]).transpose(0, 2, 1) if ta else f64(a[..., :a_cols])
    op_b = f64(b[:, :b_cols]).T if tb else f64(b[:, :b_cols])
    assert_close(c[..., :n], 2.0 * op_a @ op_b, rtol=1e-5, scale=2.0 * np.abs(op_a) @ np.abs(op_b))
    assert (c[..., n:] == poisoned(1)[0]).all(), "padding written"


def test_gelu_and_layernorm_with_backward(rng):
    x = rng.standard_normal((6, 33)).astype(np.float32)
    y = cudann.gelu(x)
    xd = f64(x)
    u = np.sqrt(2 / np.pi) * (xd + 0.044715 * xd ** 3)
    assert_close(y, 0.5 * xd * (1 + np.tanh(u)), rtol=1e-6, atol=1e-7)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = cudann.gelu_backward(dy, x)
    slope = 0.5 * (1 + np.tanh(u)) + 0.5 * xd * (1 - np.tanh(u) ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * xd ** 2)
    assert_close(dx, f64(dy) * slope, rtol=1e-5, atol=1e-6)

    w, b = rng.standard_normal(33).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    out = cudann.layernorm(x, w, b, 1e-5)
    mean, var = xd.mean(-1, keepdims=True), xd.var(-1, keepdims=True)
    xhat = (xd - mean) / np.sqrt(var + 1e-5)
    assert_close(out, xhat * f64(w) + f64(b), rtol=1e-5, atol=1e-5)
    dx, dw, db = cudann.layernorm_backward(dy, x, w, 1e-5)
    g = f64(dy) * f64(w)
    want = (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)) / np.sqrt(var + 1e-5)
    assert_close(dx, want, rtol=1e-4, atol=1e-5)
    assert_close(dw, (f64(dy) * xhat).sum(0), rtol=1e-5, atol=1e-5)
    assert_close(db, f64(dy).sum(0), rtol=1e-5, atol=1e-5)


def test_softmax_backward_and_bias(rng):
    x = rng.standard_normal((4, 50)).astype(np.float32)
    p = np.exp(f64(x) - f64(x).max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y, dy = p.astype(np.float32), rng.standard_normal(x.shape).astype(np.float32)
    dx = cudann.softmax_backward(dy, y)
    assert_close(dx, f64(y) * (f64(dy) - (f64(dy) * f64(y)).sum(-1, keepdims=True)), rtol=1e-5, atol=1e-7)
    db = cudann.bias_backward(dy)
    assert_close(db, f64(dy).sum(0), rtol=1e-5, atol=1e-6)
    bias = rng.standard_normal(50).astype(np.float32)
    assert_close(cudann.bias_add(x, bias), f64(x) + f64(bias), rtol=1e-7)


def rope(x, pos, base=10000.0, inverse=False):
    """Interleaved-pair RoPE of x [B, S, H, d] at positions pos [S] in float64."""
    d = x.shape[-1]
    angle = np.outer(pos, base ** (-2.0 * np.arange(d // 2) / d))[None, :, None, :]
    cos, sin = np.cos(angle), np.sin(angle) * (-1 if inverse else 1)
    x0, x1 = f64(x)[..., 0::2], f64(x)[..., 1::2]
    out = np.empty(x.shape)
    out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    return out


def test_rope_backward_rotates_back(rng):
    b, s, hq, hk, d, offset = 2, 5, 4, 2, 8, 3
    freqs = cudann.rope_freqs(s + offset, d, 10000.0, 1.0)
    dq, dk = rng.standard_normal((b, s, hq, d)).astype(np.float32), rng.standard_normal((b, s, hk, d)).astype(np.float32)
    oq, ok = cudann.rope_backward(dq, dk, freqs, offset)
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


def test_attention_forward_backward_against_numpy(rng):
    b, s, h, g, d = 2, 19, 4, 2, 8
    q, k, v, dy = (rng.standard_normal(shape).astype(np.float32) for shape in [(b, s, h, d), (b, s, g, d), (b, s, g, d), (b, s, h, d)])
    scale = 1 / np.sqrt(d)
    out, lse = cudann.attention_forward(q, k, v, causal=True)  # scale defaults to 1/sqrt(d)
    want, want_lse, p = attention(q, k, v, causal=True)
    assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    dq, dk, dv = cudann.attention_backward(dy, q, k, v, out, lse, causal=True, scale=scale)
    # Analytic float64 gradients, summed over the heads that share a KV head.
    do = f64(dy).transpose(0, 2, 1, 3)
    kk, vv = np.repeat(f64(k), h // g, axis=2).transpose(0, 2, 1, 3), np.repeat(f64(v), h // g, axis=2).transpose(0, 2, 1, 3)
    dp = do @ vv.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    group = lambda x: x.reshape(b, g, h // g, s, d).sum(2).transpose(0, 2, 1, 3)
    assert_close(dq, (scale * ds @ kk).transpose(0, 2, 1, 3), rtol=1e-4, atol=1e-5)
    assert_close(dk, group(scale * ds.transpose(0, 1, 3, 2) @ f64(q).transpose(0, 2, 1, 3)), rtol=1e-4, atol=1e-5)
    assert_close(dv, group(p.transpose(0, 1, 3, 2) @ do), rtol=1e-4, atol=1e-5)


def test_decoding_with_a_kv_cache(rng):
    s, h, g, d, cap = 6, 2, 1, 4, 10
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in [(1, s, h, d), (1, s, g, d), (1, s, g, d)])
    kc, vc = np.zeros((1, cap, g, d), np.float32), np.zeros((1, cap, g, d), np.float32)
    cudann.kv_cache_write(k, v, kc, vc, pos=0)
    assert (kc[0, :s] == k[0]).all() and (kc[0, s:] == 0).all()
    last = np.ascontiguousarray(q[:, -1:])
    out, lse = cudann.attention_forward(last, kc, vc, kv_len=s, pos0=s - 1, need_lse=False)
    assert lse is None
    assert_close(out, attention(q, k, v, causal=True)[0][:, -1:], rtol=1e-5, atol=1e-6)


def test_moe_routing_round_trip(rng):
    tokens, dim, experts, k = 7, 3, 4, 2
    logits = rng.standard_normal((tokens, experts)).astype(np.float32)
    w, idx = cudann.softmax_topk(logits, k)
    x = rng.standard_normal((tokens, dim)).astype(np.float32)
    rows, order, offsets = cudann.moe_dispatch(x, idx, experts)
    assert (order == np.argsort(idx.ravel(), kind="stable")).all()
    assert (offsets == np.searchsorted(np.sort(idx.ravel()), np.arange(experts + 1))).all()
    assert (rows == x[order // k]).all()
    out = cudann.moe_combine(rows, w, order)
    assert_close(out, f64(x) * f64(w).sum(1, keepdims=True), rtol=1e-6, atol=1e-7)  # each expert the identity
    dw = rng.standard_normal((tokens, k)).astype(np.float32)
    d_logits = cudann.moe_router_backward(w, idx, dw, experts)
    want = np.zeros((tokens, experts))
    for t in range(tokens):
        want[t, idx[t]] = f64(w[t]) * (f64(dw[t]) - f64(w[t]) @ f64(dw[t]))
    assert_close(d_logits, want, rtol=1e-5, atol=1e-7)


def test_embedding_and_its_backward(rng):
    vocab, dim = 6, 4
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    ids = np.array([2, -1, 5, 2], np.int32)
    out = cudann.embedding(ids, table)
    assert (out[[0, 2, 3]] == table[[2, 5, 2]]).all() and (out[1] == 0).all()
    dy = rng.standard_normal((4, dim)).astype(np.float32)
    d_table = cudann.embedding_backward(ids, dy, vocab)
    want = np.zeros((vocab, dim))
    np.add.at(want, ids[ids >= 0], f64(dy)[ids >= 0])
    assert_close(d_table, want, rtol=1e-6, atol=1e-7)
    bad = np.array([0, 6], np.int32)
    with pytest.raises(cudann.CudannError) as e:
        cudann.embedding(bad, table, out=out[:2])
    assert e.value.code == cudann.INVALID_VALUE
    assert "ids[1] = 6 is outside [0, vocab_size = 6)" in e.value.message


def test_checkpoints_interchange_with_the_safetensors_package(rng, tmp_path):
    # Written by the safetensors package, read by cudann.
    w, ids = rng.standard_normal((3, 4)).astype(np.float32), np.arange(5, dtype=np.int32)
    theirs = str(tmp_path / "theirs.safetensors")
    save_file({"w": w, "ids": ids}, theirs)
    f = cudann.SafetensorsFile(theirs)
    assert len(f) == 2 and sorted(f.keys()) == ["ids", "w"]
    assert f.info("w") == ("float32", (3, 4)) and f.info("ids") == ("int32", (5,))
    got = poisoned((3, 4))
    assert f.read("w", out=got) is got and (got == w).all()
    got_ids = f["ids"]
    assert got_ids.dtype == np.int32 and (got_ids == ids).all()
    handle = f.handle
    f.close()
    f.close()  # idempotent on the Python side
    assert cudann.raw.cudann_safetensors_close(handle) == cudann.INVALID_VALUE  # the library refuses a dead handle
    # Written by cudann, read by the safetensors package.
    ours = str(tmp_path / "ours.safetensors")
    with cudann.SafetensorsWriter() as writer:
        writer.add("w", w)
        writer.save(ours)
    assert (load_file(ours)["w"] == w).all()
    cudann.save_file({"w": w, "ids": ids, "scalar": np.array(2.5, np.float64)}, ours)
    back = cudann.load_file(ours)
    assert (back["w"] == w).all() and (back["ids"] == ids).all() and back["scalar"].shape == ()
    assert load_file(ours)["scalar"] == 2.5


def test_silu_and_swiglu_backward(rng):
    x, up, dy = (rng.standard_normal(300).astype(np.float32) for _ in range(3))
    xd = f64(x)
    s = 1 / (1 + np.exp(-xd))
    assert_close(cudann.silu_backward(dy, x), f64(dy) * s * (1 + xd * (1 - s)), rtol=1e-5, atol=1e-7)
    assert_close(cudann.swiglu(x, up), xd * s * f64(up), rtol=1e-5, atol=1e-7)
    d_gate, d_up = cudann.swiglu_backward(dy, x, up)
    assert_close(d_gate, f64(dy) * f64(up) * s * (1 + xd * (1 - s)), rtol=1e-5, atol=1e-7)
    assert_close(d_up, f64(dy) * xd * s, rtol=1e-5, atol=1e-7)


def test_rmsnorm_backward(rng):
    rows, hidden, eps = 5, 37, 1e-5
    x, dy = rng.standard_normal((rows, hidden)).astype(np.float32), rng.standard_normal((rows, hidden)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, hidden).astype(np.float32)
    dx, dw = cudann.rmsnorm_backward(dy, x, w, eps)
    xd = f64(x)
    r = 1 / np.sqrt((xd * xd).mean(-1, keepdims=True) + float(np.float32(eps)))
    g = f64(dy) * f64(w)
    assert_close(dx, r * (g - xd * r * r * (g * xd).mean(-1, keepdims=True)), rtol=1e-4, atol=1e-5)
    assert_close(dw, (f64(dy) * xd * r).sum(0), rtol=1e-5, atol=1e-5)


def test_moe_dispatch_and_combine_backward(rng):
    tokens, dim, experts, k = 6, 5, 3, 2
    idx = np.stack([rng.choice(experts, k, replace=False) for _ in range(tokens)]).astype(np.int32)
    x = rng.standard_normal((tokens, dim)).astype(np.float32)
    rows, order, _ = cudann.moe_dispatch(x, idx, experts)
    d_rows = rng.standard_normal(rows.shape).astype(np.float32)
    d_x = cudann.moe_dispatch_backward(d_rows, order, k)
    want = np.zeros((tokens, dim))
    np.add.at(want, order // k, f64(d_rows))  # row p came from token order[p] // k
    assert_close(d_x, want, rtol=1e-6, atol=1e-7)
    w = rng.uniform(0.1, 1, (tokens, k)).astype(np.float32)
    expert_out = rng.standard_normal(rows.shape).astype(np.float32)
    dy = rng.standard_normal((tokens, dim)).astype(np.float32)
    d_expert, d_w = cudann.moe_combine_backward(dy, expert_out, w, order)
    row_of = np.argsort(order)  # the dispatched row of pair t*k + j
    want_de, want_dw = np.zeros(rows.shape), np.zeros((tokens, k))
    for t in range(tokens):
        for j in range(k):
            p = row_of[t * k + j]
            want_de[p] = f64(w[t, j]) * f64(dy[t])
            want_dw[t, j] = f64(dy[t]) @ f64(expert_out[p])
    assert_close(d_expert, want_de, rtol=1e-6, atol=1e-7)
    assert_close(d_w, want_dw, rtol=1e-5, atol=1e-6)
