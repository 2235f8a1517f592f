"""CPU benchmark: cudann vs numpy, both measured in this run on this machine.

Each numpy baseline is the plain numpy code a caller uses as its fallback when
it has no libcudann. Prints one row per op: sizes, median times, the speedup
(numpy time / cudann time) and the target of the CPU ABI issue.

    make build && python3 bench/cpu_bench.py [--quick]
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from library import Library  # noqa: E402  (header-derived prototypes)

LIB = Library()
RNG = np.random.default_rng(0)


def timed(fn, repeats):
    """Median wall time of `fn()` in milliseconds, after one warm-up call."""
    # Let the other side's idle worker threads (OpenBLAS, rayon) stop spinning
    # first: they busy-wait for a while after each call and would steal cores.
    time.sleep(0.5)
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def check(rc):
    if rc != 0:
        raise RuntimeError(LIB.last_error())


def randn(*shape):
    return RNG.standard_normal(shape, dtype=np.float32)


# --- numpy fallbacks -----------------------------------------------------------

def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_cross_entropy(logits, targets):
    m = logits.max(axis=-1, keepdims=True)
    log_probs = logits - (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))
    return -log_probs[np.arange(len(targets)), targets].mean(), log_probs


def np_adamw(p, g, m, v, lr, b1, b2, eps, wd, step):
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    m_hat = m / (1 - b1 ** step)
    v_hat = v / (1 - b2 ** step)
    p -= lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)


def np_topp(logits, top_p, temperature, rng):
    out = np.empty(len(logits), dtype=np.int32)
    for r, row in enumerate(logits):
        probs = np_softmax(row / temperature)
        order = np.argsort(-probs)
        cdf = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cdf, top_p)) + 1]
        p = probs[keep] / probs[keep].sum()
        out[r] = rng.choice(keep, p=p)
    return out


def np_sample(logits, temperature, rng):
    """Softmax, then one inverse-CDF draw per row (the vectorised numpy way)."""
    probs = np_softmax(logits / temperature)
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((len(logits), 1)) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), logits.shape[1] - 1).astype(np.int32)


# --- the cases: (name, size, target speedup, cudann call, numpy call) -----------

def case_silu(n=1 << 24):
    x, y = randn(n), np.empty(n, np.float32)
    return ("silu", "n=2^24", 3.0,
            lambda: check(LIB.cuda_silu(x, y, n, None)),
            lambda: x / (np.float32(1) + np.exp(-x)))


def case_softmax(rows=512, cols=32000):
    x, y = randn(rows, cols), np.empty((rows, cols), np.float32)
    return ("softmax", f"{rows}x{cols}", 3.0,
            lambda: check(LIB.cuda_softmax(x, y, rows, cols, None)),
            lambda: np_softmax(x))


def case_rmsnorm(rows=4096, hidden=4096):
    x, w, y = randn(rows, hidden), randn(hidden), np.empty((rows, hidden), np.float32)
    eps = np.float32(1e-6)
    return ("rmsnorm", f"{rows}x{hidden}", 3.0,
            lambda: check(LIB.cuda_rmsnorm(x, w, y, rows, hidden, 1e-6, None)),
            lambda: x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w)


def case_cross_entropy(rows=512, vocab=32000):
    x, lp = randn(rows, vocab), np.empty((rows, vocab), np.float32)
    targets = RNG.integers(0, vocab, size=rows, dtype=np.int32)
    loss = np.empty(1, np.float32)
    return ("cross_entropy_fwd", f"{rows}x{vocab}", 3.0,
            lambda: check(LIB.cuda_cross_entropy_forward(x, targets, loss, lp, rows, vocab, None)),
            lambda: np_cross_entropy(x, targets))


def case_adamw(n=1 << 24):
    p, g = randn(n), randn(n) * np.float32(0.01)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    f = np.float32
    return ("adamw", "n=2^24", 3.0,
            lambda: check(LIB.cuda_adamw_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.01, 10, n, None)),
            lambda: np_adamw(p2, g, m2, v2, f(1e-3), f(0.9), f(0.999), f(1e-8), f(0.01), 10))


def case_gemm(m, n, k):
    a, b, c = randn(m, k), randn(k, n), np.empty((m, n), np.float32)
    return ("gemm", f"{m}x{n}x{k}", 0.9,
            lambda: check(LIB.cuda_gemm(a, b, c, m, n, k, 1.0, 0.0, None)),
            lambda: a @ b)


def sampling_inputs(batch, vocab):
    """Logits N(0, 9), seeds, the token buffer, and numpy's generator."""
    logits = randn(batch, vocab) * np.float32(3)
    return logits, np.arange(batch, dtype=np.uint64), np.empty(batch, np.int32), np.random.default_rng(1)


def case_topp(batch=8, vocab=131072):
    logits, seeds, tokens, rng = sampling_inputs(batch, vocab)
    return ("topp_sample", f"{batch}x{vocab} p=0.9", 10.0,
            lambda: check(LIB.cuda_topp_sample(logits, tokens, seeds, batch, vocab, 0.9, 1.0, None)),
            lambda: np_topp(logits, 0.9, 1.0, rng))


def case_sample(batch=8, vocab=131072):
    logits, seeds, tokens, rng = sampling_inputs(batch, vocab)
    return ("sample", f"{batch}x{vocab}", 3.0,
            lambda: check(LIB.cuda_sample(logits, tokens, seeds, batch, vocab, 1.0, None)),
            lambda: np_sample(logits, 1.0, rng))


# --- training and inference ops (cudann_*) ------------------------------------

F32 = 0  # CUDANN_F32


def np_sigmoid(x):
    return np.float32(1) / (np.float32(1) + np.exp(-x))


def case_silu_backward(n=1 << 24):
    x, dy, dx = randn(n), randn(n), np.empty(n, np.float32)

    def numpy():
        s = np_sigmoid(x)
        return dy * s * (np.float32(1) + x * (np.float32(1) - s))
    return ("silu_backward", "n=2^24", 3.0, lambda: check(LIB.cudann_silu_backward(dy, x, dx, n, None)), numpy)


def np_gelu_parts(x):
    c = np.float32(np.sqrt(2 / np.pi))
    return c * (x + np.float32(0.044715) * x * x * x), c


def case_gelu(n=1 << 24):
    x, y = randn(n), np.empty(n, np.float32)
    return ("gelu", "n=2^24", 3.0, lambda: check(LIB.cudann_gelu(x, y, n, None)),
            lambda: np.float32(0.5) * x * (np.float32(1) + np.tanh(np_gelu_parts(x)[0])))


def case_gelu_backward(n=1 << 24):
    x, dy, dx = randn(n), randn(n), np.empty(n, np.float32)

    def numpy():
        u, c = np_gelu_parts(x)
        t = np.tanh(u)
        half = np.float32(0.5)
        return dy * (half * (1 + t) + half * x * (1 - t * t) * c * (1 + np.float32(3 * 0.044715) * x * x))
    return ("gelu_backward", "n=2^24", 3.0, lambda: check(LIB.cudann_gelu_backward(dy, x, dx, n, None)), numpy)


def case_swiglu(n=1 << 24):
    g, u, y = randn(n), randn(n), np.empty(n, np.float32)
    return ("swiglu", "n=2^24", 3.0, lambda: check(LIB.cudann_swiglu(g, u, y, n, F32, None)),
            lambda: g * np_sigmoid(g) * u)


def case_swiglu_backward(n=1 << 24):
    g, u, dy, dg, du = randn(n), randn(n), randn(n), np.empty(n, np.float32), np.empty(n, np.float32)

    def numpy():
        s = np_sigmoid(g)
        return dy * u * s * (np.float32(1) + g * (np.float32(1) - s)), dy * g * s
    return ("swiglu_backward", "n=2^24", 3.0, lambda: check(LIB.cudann_swiglu_backward(dy, g, u, dg, du, n, None)), numpy)


def case_bias(rows=4096, cols=4096):
    x, b, y, db = randn(rows, cols), randn(cols), np.empty((rows, cols), np.float32), np.empty(cols, np.float32)
    yield ("bias_add", f"{rows}x{cols}", 3.0, lambda: check(LIB.cudann_bias_add(x, b, y, rows, cols, None)), lambda: x + b)
    yield ("bias_backward", f"{rows}x{cols}", 3.0, lambda: check(LIB.cudann_bias_backward(x, db, rows, cols, None)),
           lambda: x.sum(axis=0))


def case_norm_backward(rows=4096, hidden=4096):
    x, dy, w, b = randn(rows, hidden), randn(rows, hidden), randn(hidden), randn(hidden)
    dx, dw, db, y = np.empty_like(x), np.empty(hidden, np.float32), np.empty(hidden, np.float32), np.empty_like(x)
    eps = np.float32(1e-5)

    def np_rms_backward():
        r = 1 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        g = dy * w
        return r * (g - x * r * r * np.mean(g * x, axis=-1, keepdims=True)), (dy * x * r).sum(axis=0)

    def np_layernorm():
        mean = x.mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(x.var(axis=-1, keepdims=True) + eps) * w + b

    def np_layernorm_backward():
        mean = x.mean(axis=-1, keepdims=True)
        rstd = 1 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
        xhat, g = (x - mean) * rstd, dy * w
        dxv = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
        return dxv, (dy * xhat).sum(axis=0), dy.sum(axis=0)
    size = f"{rows}x{hidden}"
    yield ("rmsnorm_backward", size, 3.0, lambda: check(LIB.cudann_rmsnorm_backward(dy, x, w, dx, dw, rows, hidden, 1e-5, None)), np_rms_backward)
    yield ("layernorm", size, 3.0, lambda: check(LIB.cudann_layernorm(x, w, b, y, rows, hidden, 1e-5, None)), np_layernorm)
    yield ("layernorm_backward", size, 3.0,
           lambda: check(LIB.cudann_layernorm_backward(dy, x, w, dx, dw, db, rows, hidden, 1e-5, None)), np_layernorm_backward)


def case_softmax_backward(rows=512, cols=32000):
    y, dy, dx = np_softmax(randn(rows, cols)), randn(rows, cols), np.empty((rows, cols), np.float32)
    return ("softmax_backward", f"{rows}x{cols}", 3.0, lambda: check(LIB.cudann_softmax_backward(dy, y, dx, rows, cols, None)),
            lambda: y * (dy - (dy * y).sum(axis=-1, keepdims=True)))


def case_rope_backward(batch=4, seq=512, heads=32, kv_heads=8, dim=128):
    freqs = np.empty((seq, dim // 2), np.float32)
    check(LIB.cuda_rope_freqs(freqs, seq, dim, 10000.0, 1.0, None))
    dq, dk = randn(batch, seq, heads, dim), randn(batch, seq, kv_heads, dim)
    oq, ok = np.empty_like(dq), np.empty_like(dk)
    cos, sin = np.cos(freqs)[None, :, None, :], np.sin(freqs)[None, :, None, :]

    def np_rotate_back(x):
        out = np.empty_like(x)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out[..., 0::2], out[..., 1::2] = x0 * cos + x1 * sin, x1 * cos - x0 * sin
        return out
    return ("rope_backward", f"{batch}x{seq}x({heads}+{kv_heads})x{dim}", 3.0,
            lambda: check(LIB.cudann_rope_backward(dq, dk, freqs, oq, ok, batch, seq, heads, kv_heads, dim, 0, None)),
            lambda: (np_rotate_back(dq), np_rotate_back(dk)))


def case_embedding(n=16384, vocab=32000, dim=1024):
    table, ids = randn(vocab, dim), RNG.integers(0, vocab, size=n, dtype=np.int32)
    out, dy, d_table = np.empty((n, dim), np.float32), randn(n, dim), np.empty((vocab, dim), np.float32)

    def np_backward():
        d = np.zeros((vocab, dim), np.float32)
        np.add.at(d, ids, dy)
        return d
    yield ("embedding", f"{n} of {vocab}x{dim}", 3.0, lambda: check(LIB.cudann_embedding(ids, table, out, n, vocab, dim, F32, None)),
           lambda: table[ids])
    yield ("embedding_backward", f"{n} of {vocab}x{dim}", 3.0,
           lambda: check(LIB.cudann_embedding_backward(ids, dy, d_table, n, vocab, dim, None)), np_backward)


def case_moe(tokens=8192, dim=1024, experts=8, k=2):
    x, logits = randn(tokens, dim), randn(tokens, experts)
    w, idx = np.empty((tokens, k), np.float32), np.empty((tokens, k), np.int32)
    check(LIB.cuda_softmax_topk(logits, w, idx, tokens, experts, k, None))
    rows, order, offsets = np.empty((tokens * k, dim), np.float32), np.empty(tokens * k, np.int32), np.empty(experts + 1, np.int32)
    y = np.empty((tokens, dim), np.float32)
    check(LIB.cudann_moe_dispatch(x, idx, rows, order, offsets, tokens, dim, experts, k, None))
    position = np.argsort(order)  # row of each pair

    def np_dispatch():
        o = np.argsort(idx.ravel(), kind="stable")
        return x[o // k], o, np.searchsorted(idx.ravel()[o], np.arange(experts + 1))
    size = f"{tokens}x{dim} E={experts} k={k}"
    yield ("moe_dispatch", size, 3.0,
           lambda: check(LIB.cudann_moe_dispatch(x, idx, rows, order, offsets, tokens, dim, experts, k, None)), np_dispatch)
    yield ("moe_combine", size, 3.0, lambda: check(LIB.cudann_moe_combine(rows, w, order, y, tokens, dim, k, None)),
           lambda: np.einsum("tk,tkd->td", w, rows[position].reshape(tokens, k, dim)))


def np_attention(q, k, v):
    """Causal GQA attention with numpy einsum (scores materialised): output,
    probabilities, and the KV heads repeated per query head."""
    h, g = q.shape[2], k.shape[2]
    kk, vv = np.repeat(k, h // g, axis=2), np.repeat(v, h // g, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, kk) / np.float32(np.sqrt(q.shape[-1]))
    s = np.where(np.triu(np.ones(s.shape[-2:], bool), 1), np.float32(-np.inf), s)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, vv), p, kk, vv


def case_attention(batch=4, seq=512, heads=8, kv_heads=2, dim=64):
    q, k, v, dy = randn(batch, seq, heads, dim), randn(batch, seq, kv_heads, dim), randn(batch, seq, kv_heads, dim), randn(batch, seq, heads, dim)
    out, lse = np.empty_like(q), np.empty((batch, seq, heads), np.float32)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    scale = 1 / np.sqrt(dim)
    check(LIB.cudann_attention_forward(q, k, v, None, out, lse, batch, seq, seq, seq, heads, kv_heads, dim, 0, 1, scale, F32, None))

    def np_backward():
        o, p, kk, vv = np_attention(q, k, v)
        dp = np.einsum("bqhd,bkhd->bhqk", dy, vv)
        ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) * np.float32(scale)
        group = (batch, seq, kv_heads, heads // kv_heads, dim)
        return (np.einsum("bhqk,bkhd->bqhd", ds, kk), np.einsum("bhqk,bqhd->bkhd", ds, q).reshape(group).sum(3),
                np.einsum("bhqk,bqhd->bkhd", p, dy).reshape(group).sum(3))
    size = f"{batch}x{seq} H={heads} G={kv_heads} d={dim}"
    yield ("attention_fwd", size, 1.0,
           lambda: check(LIB.cudann_attention_forward(q, k, v, None, out, lse, batch, seq, seq, seq, heads, kv_heads, dim, 0, 1, scale, F32, None)),
           lambda: np_attention(q, k, v)[0])
    yield ("attention_bwd", size, 1.0,
           lambda: check(LIB.cudann_attention_backward(dy, q, k, v, None, out, lse, dq, dk, dv, batch, seq, seq, heads, kv_heads, dim, 0, 1, scale, None)),
           np_backward)


def training_cases():
    yield case_silu_backward()
    yield case_gelu()
    yield case_gelu_backward()
    yield case_swiglu()
    yield case_swiglu_backward()
    yield from case_bias()
    yield from case_norm_backward()
    yield case_softmax_backward()
    yield case_rope_backward()
    yield from case_embedding()
    yield from case_moe()
    yield from case_attention()


def cases():
    yield case_silu()
    yield case_softmax()
    yield case_rmsnorm()
    yield case_cross_entropy()
    yield case_adamw()
    yield case_gemm(1024, 1024, 1024)
    yield case_gemm(16, 4096, 4096)
    yield case_sample()
    yield case_topp()
    yield from training_cases()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--training", action="store_true", help="only the training and inference ops (cudann_*)")
    args = parser.parse_args()
    repeats = 3 if args.quick else 9
    print(f"# cudann {LIB.version()} vs numpy {np.__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; median of {repeats}")
    print(f"{'op':<18} {'size':<20} {'cudann ms':>10} {'numpy ms':>10} {'speedup':>8} {'target':>7}  ok")
    failures = 0
    for name, size, target, ours, theirs in (training_cases() if args.training else cases()):
        t_ours, t_np = timed(ours, repeats), timed(theirs, repeats)
        speedup = t_np / t_ours
        ok = speedup >= target
        failures += not ok
        print(f"{name:<18} {size:<20} {t_ours:>10.3f} {t_np:>10.3f} {speedup:>7.2f}x {target:>6.1f}x  {'yes' if ok else 'NO'}")
    print(f"{failures} below target")


if __name__ == "__main__":
    main()
