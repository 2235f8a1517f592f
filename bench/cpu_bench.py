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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bindings-test" / "python"))
from cudann_ctypes import Cudann  # noqa: E402  (header-derived prototypes)

LIB = Cudann()
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else 9
    print(f"# cudann {LIB.version()} vs numpy {np.__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; median of {repeats}")
    print(f"{'op':<18} {'size':<20} {'cudann ms':>10} {'numpy ms':>10} {'speedup':>8} {'target':>7}  ok")
    failures = 0
    for name, size, target, ours, theirs in cases():
        t_ours, t_np = timed(ours, repeats), timed(theirs, repeats)
        speedup = t_np / t_ours
        ok = speedup >= target
        failures += not ok
        print(f"{name:<18} {size:<20} {t_ours:>10.3f} {t_np:>10.3f} {speedup:>7.2f}x {target:>6.1f}x  {'yes' if ok else 'NO'}")
    print(f"{failures} below target")


if __name__ == "__main__":
    main()
