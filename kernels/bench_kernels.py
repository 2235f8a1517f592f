#!/usr/bin/env python3
"""Time the PTX kernels at the sizes of their speed targets (H100: 3 TB/s copy).

    python3 kernels/bench_kernels.py        (from the repository root; needs CuPy and a GPU)

Launch configurations are the Rust runtime's (plus a few alternatives, marked).
Prints per kernel: registers, time per launch (median over 20 timings of 10
back-to-back launches), effective bandwidth, and the target.
"""

import os
import sys

import cupy as cp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {}


def kernel(module, name):
    if module not in MODULES:
        MODULES[module] = cp.RawModule(path=os.path.join(ROOT, "kernels", "ptx", module + ".ptx"))
    return MODULES[module].get_function(name)


def median_ms(fn, reps=20, batch=10):
    """Median over reps of the mean time of `batch` back-to-back launches: the
    launches queue up, so host launch latency is not counted."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        for _ in range(batch):
            fn()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b) / batch)
    return float(np.median(times))


def row(name, k, ms, nbytes, target=None):
    regs = "" if k is None else f"{k.num_regs:>3} regs"
    tgt = "" if target is None else f"target {target:.3f} ms {'OK' if ms <= target else 'SLOW'}"
    print(f"{name:<40} {regs:<8} {ms:8.4f} ms {nbytes / ms / 1e9:7.2f} TB/s  {tgt}")


def g1024(n):
    return min(-(-n // 1024), 65535)


def main():
    f32, i32, i64 = np.float32, np.int32, np.int64
    print(cp.cuda.runtime.getDeviceProperties(0)["name"].decode())
    n = 1 << 27
    x, y, z = (cp.random.standard_normal(n, dtype=f32) for _ in range(3))
    row("copy (reference)", None, median_ms(lambda: cp.copyto(y, x)), 8 * n)
    k = kernel("elementwise", "silu_f32")
    row("silu 2^27", k, median_ms(lambda: k((g1024(n),), (256,), (x, y, i64(n)))), 8 * n)
    k = kernel("elementwise", "add_f32")
    row("add 2^27", k, median_ms(lambda: k((g1024(n),), (256,), (x, y, z, i64(n)))), 12 * n)
    k = kernel("elementwise", "scale_f32")
    row("scale 2^27 in place", k, median_ms(lambda: k((g1024(n),), (256,), (x, x, f32(1.0), i64(n)))), 8 * n)

    m, v = cp.zeros(n, f32), cp.zeros(n, f32)
    k = kernel("optim", "adamw_f32")
    args = (y, x, m, v, f32(1e-3), f32(0.9), f32(0.999), f32(1e-8), f32(0.01), f32(10.0), f32(1000.0), i64(n))
    row("adamw 2^27", k, median_ms(lambda: k((g1024(n),), (256,), args)), 28 * n, 1.33)
    parts = -(-n // 256)
    partial, total = cp.zeros(parts, f32), cp.zeros(1, f32)
    ks, kt, kc = kernel("optim", "sumsq_partial_f32"), kernel("optim", "norm_total_f32"), kernel("optim", "clip_scale_f32")
    row("sumsq_partial 2^27", ks, median_ms(lambda: ks((parts,), (256,), (x, partial, i64(n)))), 4 * n)
    row("sumsq_partial 2^27 grid n/2048 (alt)", ks, median_ms(lambda: ks((-(-n // 2048),), (256,), (x, partial, i64(n)))), 4 * n)
    row("norm_total 2^19 parts", kt, median_ms(lambda: kt((1,), (1024,), (partial, total, i64(parts)))), 4 * parts)
    kt((1,), (1024,), (partial, total, i64(parts)))
    row("clip_scale 2^27 (clipping)", kc, median_ms(lambda: kc((g1024(n),), (256,), (x, total, f32(1.0), i64(n)))), 8 * n)
    del x, y, z, m, v

    rows, cols = 4096, 32000
    a = cp.random.standard_normal((rows, cols), dtype=f32)
    b = cp.empty_like(a)
    k = kernel("softmax", "softmax_f32")
    row("softmax 4096x32000", k, median_ms(lambda: k((rows,), (1024,), (a, b, i32(rows), i32(cols)))), 8 * a.size, 0.40)
    k2 = kernel("softmax", "softmax_f32")
    row("softmax 4096x32001 (scalar)", k2, median_ms(
        lambda: k2((rows - 1,), (1024,), (a, b, i32(rows - 1), i32(cols + 1)))), 8 * (rows - 1) * (cols + 1))
    row("softmax 1024x65536 (looped)", k, median_ms(
        lambda: k((2000,), (1024,), (a, b, i32(2000), i32(65536)))), 12 * 2000 * 65536)
    del a, b

    rows, cols = 8192, 32000
    a = cp.random.standard_normal((rows, cols), dtype=f32)
    t = cp.random.randint(0, cols, rows, dtype=i32)
    loss = cp.zeros(1, f32)
    kl, kn = kernel("loss", "log_softmax_f32"), kernel("loss", "nll_mean_f32")

    def ce():
        kl((rows,), (1024,), (a, a, i32(rows), i32(cols)))
        kn((1,), (1024,), (a, t, loss, i32(rows), i32(cols)))

    row("log_softmax+nll 8192x32000", kl, median_ms(ce), 8 * a.size, 0.80)
    row("  nll_mean alone", kn, median_ms(lambda: kn((1,), (1024,), (a, t, loss, i32(rows), i32(cols)))), 4 * rows)
    kb = kernel("loss", "ce_backward_f32")
    row("ce_backward 8192x32000 in place", kb, median_ms(
        lambda: kb((g1024(a.size),), (256,), (a, t, a, i32(rows), i32(cols), f32(1.0)))), 8 * a.size)
    del a

    rows, hidden = 16384, 4096
    a = cp.random.standard_normal((rows, hidden), dtype=f32)
    w = cp.random.standard_normal(hidden, dtype=f32)
    out, s = cp.empty_like(a), cp.empty_like(a)
    k = kernel("norm", "rmsnorm_f32")
    row("rmsnorm 16384x4096", k, median_ms(
        lambda: k((rows,), (1024,), (a, w, out, i32(rows), i32(hidden), f32(1e-5)))), 8 * a.size, 0.20)
    row("rmsnorm 16384x4096 block 512 (alt)", k, median_ms(
        lambda: k((rows,), (512,), (a, w, out, i32(rows), i32(hidden), f32(1e-5)))), 8 * a.size, 0.20)
    kr = kernel("norm", "rmsnorm_residual_f32")
    row("rmsnorm_residual 16384x4096", kr, median_ms(
        lambda: kr((rows,), (1024,), (a, out, w, out, s, i32(rows), i32(hidden), f32(1e-5)))), 16 * a.size)
    row("rmsnorm 4096x16384 (looped)", k, median_ms(
        lambda: k((4096,), (1024,), (a, w, out, i32(4096), i32(16384), f32(1e-5)))), 8 * a.size)
    del a, out, s

    batch, vocab = 256, 131072
    a = cp.random.standard_normal((batch, vocab), dtype=f32)
    o = cp.zeros(batch, i32)
    k = kernel("decode", "argmax_f32")
    row("argmax 256x131072", k, median_ms(lambda: k((batch,), (1024,), (a, o, i32(batch), i32(vocab)))), 4 * a.size,
        0.055)
    row("argmax 256x131071 (scalar)", k, median_ms(
        lambda: k((batch,), (1024,), (a, o, i32(batch), i32(vocab - 1)))), 4 * a.size)
    del a

    rows, experts, topk = 16384, 64, 8
    a = cp.random.standard_normal((rows, experts), dtype=f32)
    w, idx = cp.empty((rows, topk), f32), cp.empty((rows, topk), i32)
    k = kernel("softmax", "softmax_topk_f32")
    row("softmax_topk 16384x64 k=8", k, median_ms(
        lambda: k((rows,), (32,), (a, w, idx, i32(rows), i32(experts), i32(topk)))), 4 * a.size)

    num, dim, vocab = 8192, 4096, 32000
    go = cp.random.standard_normal((num, dim), dtype=f32)
    ix = cp.random.randint(0, vocab, num, dtype=i32)
    gw = cp.zeros((vocab, dim), f32)
    k = kernel("optim", "scatter_add_f32")
    row("scatter_add 8192x4096", k, median_ms(
        lambda: k((-(-dim // 256),), (256,), (go, ix, gw, i32(num), i32(dim))), reps=3, batch=2), 12 * num * dim)
    for ys in (8, 32, 128):
        row(f"scatter_add 8192x4096 grid.y={ys} (alt)", k, median_ms(
            lambda: k((-(-dim // 256), ys), (256,), (go, ix, gw, i32(num), i32(dim))), reps=3, batch=2), 12 * num * dim)
    del go, gw

    M = N = K = 2048
    A, B, C = (cp.random.standard_normal((M, M), dtype=f32) for _ in range(3))
    k = kernel("gemm", "sgemm_tiled_f32")
    ms = median_ms(lambda: k((N // 64, M // 64, 1), (16, 16), (A, B, C, i32(M), i32(N), i32(K), f32(1), f32(0),
                                                               i64(0), i64(0), i64(0))), reps=5, batch=2)
    print(f"{'sgemm_tiled 2048^3':<40} {k.num_regs:>3} regs {ms:8.4f} ms {2 * M * N * K / ms / 1e9:7.2f} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
