"""attention_scores/_output (unfused MQA), flash_attention, mqa_attention."""
import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_close, poisoned

SHAPES = [(1, 1, 1, 1), (2, 31, 3, 16), (1, 33, 2, 64), (1, 130, 1, 8)]  # batch, seq, heads, dim


def _qkv(rng, b, s, h, d, kv_heads):
    q = rng.standard_normal((b, s, h, d)).astype(np.float32)
    kv_shape = (b, s, d) if kv_heads == "mqa" else (b, s, h, d)  # "mqa": one shared KV head
    return q, rng.standard_normal(kv_shape).astype(np.float32), rng.standard_normal(kv_shape).astype(np.float32)


def _check_attention(out, q, k, v, scale, mask):
    want = ref.attention(q, k, v, scale, mask)
    bound = ref.attention(q, k, np.abs(v), scale, mask)  # sum of p |v|: the error scale
    assert_close(out, want, rtol=1e-5, scale=bound, atol=1e-30)


@pytest.mark.parametrize("b,s,h,d", SHAPES)
def test_attention_scores_causal(rng, b, s, h, d):
    q, k, _ = _qkv(rng, b, s, h, d, kv_heads="mqa")
    scale = np.float32(1 / np.sqrt(d))
    scores = cudann.attention_scores(q, k)  # scale defaults to 1/sqrt(d)
    assert scores.shape == (b, h, s, s)
    full = float(scale) * np.einsum("bqhd,bkd->bhqk", ref.f64(q), ref.f64(k))
    bound = float(scale) * np.einsum("bqhd,bkd->bhqk", np.abs(ref.f64(q)), np.abs(ref.f64(k)))
    lower = np.tril(np.ones((s, s), bool))
    assert (scores[..., ~lower] == -np.inf).all()
    assert_close(scores[..., lower], full[..., lower], rtol=1e-5, scale=bound[..., lower])


@pytest.mark.parametrize("b,s,h,d", SHAPES)
def test_attention_output_sums_keys_up_to_query(rng, b, s, h, d):
    w = rng.uniform(0, 1, (b, h, s, s)).astype(np.float32)
    v = rng.standard_normal((b, s, d)).astype(np.float32)
    upper = ~np.tril(np.ones((s, s), bool))
    w_masked = np.where(upper, 0.0, ref.f64(w))
    w[..., upper] = np.nan  # weights above the diagonal must not be read
    out = poisoned((b, s, h, d))
    cudann.attention_output(w, v, out=out)
    want = np.einsum("bhqk,bkd->bqhd", w_masked, ref.f64(v))
    bound = np.einsum("bhqk,bkd->bqhd", w_masked, np.abs(ref.f64(v)))
    assert_close(out, want, rtol=1e-5, scale=bound, atol=1e-30)


def test_unfused_halves_compose_to_mqa(rng):
    b, s, h, d = 2, 17, 3, 8
    q, k, v = _qkv(rng, b, s, h, d, kv_heads="mqa")
    scores = cudann.attention_scores(q, k, scale=np.float32(0.3))
    weights = cudann.softmax(scores)  # over the last axis of [b, h, s, s]
    out = cudann.attention_output(weights, v)
    _check_attention(out, q, k, v, float(np.float32(0.3)), ref.causal_mask(s))


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("b,s,h,d", SHAPES)
def test_flash_attention(rng, b, s, h, d, causal):
    q, k, v = _qkv(rng, b, s, h, d, kv_heads=h)
    scale = np.float32(1 / np.sqrt(d))
    out = cudann.flash_attention(q, k, v, scale, causal=bool(causal))
    _check_attention(out, q, k, v, float(scale), ref.causal_mask(s) if causal else None)


def test_flash_attention_long_sequence(rng):
    b, s, h, d = 1, 1000, 2, 16
    q, k, v = _qkv(rng, b, s, h, d, kv_heads=h)
    out = cudann.flash_attention(q, k, v, scale=0.25)
    _check_attention(out, q, k, v, 0.25, ref.causal_mask(s))


@pytest.mark.parametrize("b,s,h,d", SHAPES)
def test_mqa_null_mask_is_causal(rng, b, s, h, d):
    q, k, v = _qkv(rng, b, s, h, d, kv_heads="mqa")
    out = cudann.mqa_attention(q, k, v, scale=0.5)
    _check_attention(out, q, k, v, 0.5, ref.causal_mask(s))


def test_mqa_additive_mask(rng):
    b, s, h, d = 2, 33, 4, 16
    q, k, v = _qkv(rng, b, s, h, d, kv_heads="mqa")
    mask = np.where(rng.uniform(size=(s, s)) < 0.3, -np.inf, 0.0).astype(np.float32)
    mask[:, 0] = 0.0
    mask[5] = -np.inf  # a query with every key masked yields zeros
    mask[7] = np.where(np.arange(s) > 7, -np.inf, 0.0)  # a row that is causal anyway
    out = cudann.mqa_attention(q, k, v, mask, scale=0.25)
    assert (out[:, 5] == 0).all()
    _check_attention(out, q, k, v, 0.25, ref.f64(mask))


def test_mqa_explicit_causal_mask_equals_null_mask(rng):
    b, s, h, d = 1, 31, 2, 8
    q, k, v = _qkv(rng, b, s, h, d, kv_heads="mqa")
    with_null = cudann.mqa_attention(q, k, v, None, 0.5)
    mask = ref.causal_mask(s).astype(np.float32)
    with_mask = cudann.mqa_attention(q, k, v, mask, 0.5)
    assert_close(with_mask, with_null, rtol=1e-6, scale=ref.attention(q, k, np.abs(v), 0.5, ref.causal_mask(s)))


# ABI.md, Aliasing: "an output may be the very same pointer as an input of the same
# shape (in-place)". output and Q share the shape [batch, seq, n_heads, head_dim].
@pytest.mark.parametrize("op", ["flash_attention", "mqa_attention"])
def test_attention_in_place_output_is_q(rng, op):
    b, s, h, d = 1, 9, 2, 8
    q, k, v = _qkv(rng, b, s, h, d, kv_heads=h if op == "flash_attention" else "mqa")
    q0 = q.copy()
    if op == "flash_attention":
        assert cudann.flash_attention(q, k, v, 0.5, causal=True, out=q) is q
    else:
        assert cudann.mqa_attention(q, k, v, None, 0.5, out=q) is q
    _check_attention(q, q0, k, v, 0.5, ref.causal_mask(s))
