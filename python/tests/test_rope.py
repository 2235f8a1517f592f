"""rope_freqs (angles p*theta_i, NTK base) and the four rotations."""
import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_close, poisoned


def _pair_scale(x):
    """|x0| + |x1| of each rotated pair, per element: the natural error scale."""
    x = np.abs(ref.f64(x))
    return np.repeat(x[..., 0::2] + x[..., 1::2], 2, axis=-1)


def _table(max_len, head_dim, base=10000.0, alpha=1.0):
    return ref.rope_angles(max_len, head_dim, base, alpha).astype(np.float32)


@pytest.mark.parametrize("max_len,head_dim,base,alpha", [
    (1, 2, 10000.0, 1.0), (33, 64, 10000.0, 1.0), (31, 128, 500000.0, 1.0),
    (1000, 6, 10000.0, 1.0), (17, 64, 10000.0, 4.0), (5, 4, 10000.0, 2.0)])
def test_rope_freqs_are_ntk_angles(max_len, head_dim, base, alpha):
    freqs = cudann.rope_freqs(max_len, head_dim, base, alpha)
    assert freqs.shape == (max_len, head_dim // 2)
    want = ref.rope_angles(max_len, head_dim, base, alpha)
    assert_close(freqs, want, rtol=2e-6, atol=1e-30)
    assert (freqs[0] == 0).all()  # position 0 is never rotated


@pytest.mark.parametrize("batch,seq,heads,dim,offset", [(1, 1, 1, 2, 0), (2, 31, 3, 8, 0),
                                                        (3, 33, 2, 64, 7), (1, 5, 1, 128, 1000)])
def test_rope_forward(rng, batch, seq, heads, dim, offset):
    freqs = _table(seq + offset, dim)
    x = rng.standard_normal((batch, seq, heads, dim)).astype(np.float32)
    out = poisoned(x.shape)
    cudann.rope_forward(x, freqs, offset, out=out)
    want = ref.rope_rotate(x, freqs[offset:offset + seq])
    assert_close(out, want, rtol=1e-5, scale=_pair_scale(x))


def test_rope_forward_in_place(rng):
    freqs = _table(9, 16)
    x = rng.standard_normal((2, 9, 2, 16)).astype(np.float32)
    want = ref.rope_rotate(x, freqs)
    scale = _pair_scale(x)
    cudann.rope_forward(x, freqs, out=x)
    assert_close(x, want, rtol=1e-5, scale=scale)


def test_rope_qk_grouped_heads_with_offset(rng):
    b, s, hq, hk, d, off = 2, 31, 4, 2, 32, 5
    freqs = _table(s + off, d)
    q = rng.standard_normal((b, s, hq, d)).astype(np.float32)
    k = rng.standard_normal((b, s, hk, d)).astype(np.float32)
    q_out, k_out = cudann.rope_qk(q, k, freqs, offset=off)
    assert_close(q_out, ref.rope_rotate(q, freqs[off:off + s]), rtol=1e-5, scale=_pair_scale(q))
    assert_close(k_out, ref.rope_rotate(k, freqs[off:off + s]), rtol=1e-5, scale=_pair_scale(k))


def test_rope_in_place(rng):
    b, s, h, d = 3, 33, 2, 64
    freqs = _table(40, d)  # a longer table than needed: only the first s rows are used
    q = rng.standard_normal((b, s, h, d)).astype(np.float32)
    k = rng.standard_normal((b, s, h, d)).astype(np.float32)
    want_q, want_k = ref.rope_rotate(q, freqs[:s]), ref.rope_rotate(k, freqs[:s])
    sq, sk = _pair_scale(q), _pair_scale(k)
    cudann.rope_inplace(q, k, freqs)
    assert_close(q, want_q, rtol=1e-5, scale=sq)
    assert_close(k, want_k, rtol=1e-5, scale=sk)


@pytest.mark.parametrize("seq,orig_len,scaled", [(33, 16, True), (33, 33, False), (8, 4096, False)])
def test_rope_ntk(rng, seq, orig_len, scaled):
    b, h, d, alpha = 2, 3, 16, 4.0
    freqs = _table(seq, d)  # the unscaled table
    q = rng.standard_normal((b, seq, h, d)).astype(np.float32)
    k = rng.standard_normal((b, seq, h, d)).astype(np.float32)
    angles = ref.f64(freqs)
    if scaled:  # dynamic NTK: angle * alpha^(-2i/(d-2))
        angles = angles * alpha ** (-2.0 * np.arange(d // 2) / (d - 2))
    want_q, want_k = ref.rope_rotate(q, angles), ref.rope_rotate(k, angles)
    sq, sk = _pair_scale(q), _pair_scale(k)
    cudann.rope_ntk_inplace(q, k, freqs, alpha, orig_len)
    assert_close(q, want_q, rtol=1e-5, scale=sq)
    assert_close(k, want_k, rtol=1e-5, scale=sk)
