"""Float64 numpy references for the ABI.md formulas (independent of the library)."""
import numpy as np


def f64(x):
    return np.asarray(x, dtype=np.float64)


def silu(x):
    x = f64(x)
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    x = f64(x)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # an all -inf row: exp gives 0 everywhere
    e = np.exp(x - m)
    s = np.sum(e, axis=axis, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def log_softmax(x):
    x = f64(x)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def rmsnorm(x, w, eps):
    x = f64(x)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * f64(w)


def rope_angles(max_seq_len, head_dim, base, alpha=1.0):
    """freqs[p, i] = p * B^(-2i/d), B = base * alpha^(d/(d-2)) (NTK-aware)."""
    # alpha == 1 is plain RoPE (and the only choice for head_dim 2, where d-2 == 0).
    big_b = base * alpha ** (head_dim / (head_dim - 2)) if alpha != 1.0 else base
    theta = big_b ** (-2.0 * np.arange(head_dim // 2) / head_dim)
    return np.arange(max_seq_len)[:, None] * theta[None, :]


def rope_rotate(x, angles):
    """x [..., seq, heads, d]; angles [seq, d/2] -> interleaved pairs rotated."""
    x = f64(x)
    a = f64(angles)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * np.cos(a) - x1 * np.sin(a)
    out[..., 1::2] = x0 * np.sin(a) + x1 * np.cos(a)
    return out


def causal_mask(seq):
    return np.where(np.tril(np.ones((seq, seq), bool)), 0.0, -np.inf)


def attention(q, k, v, scale, mask=None):
    """q [b,s,h,d]; k, v [b,s,h,d] or [b,s,d] (one shared head); mask [s,s] additive."""
    q, k, v = f64(q), f64(k), f64(v)
    if k.ndim == 3:  # one KV head shared by every query head
        k = np.repeat(k[:, :, None, :], q.shape[2], axis=2)
        v = np.repeat(v[:, :, None, :], q.shape[2], axis=2)
    s = scale * np.einsum("bqhd,bkhd->bhqk", q, k)
    if mask is not None:
        s = s + mask
    return np.einsum("bhqk,bkhd->bqhd", softmax(s), v)


def adamw(p, g, m, v, lr, b1, b2, eps, wd, step):
    p, g, m, v = f64(p), f64(g), f64(m), f64(v)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mhat, vhat = m / (1 - b1 ** step), v / (1 - b2 ** step)
    return p - lr * (mhat / (np.sqrt(vhat) + eps) + wd * p), m, v


def nucleus(probs, top_p):
    """Smallest set of most probable tokens (ties: lower index) whose sum reaches top_p."""
    order = np.lexsort((np.arange(len(probs)), -f64(probs)))
    cum = np.cumsum(f64(probs)[order])
    return set(order[: int(np.searchsorted(cum, top_p * cum[-1])) + 1].tolist())
