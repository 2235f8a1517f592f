"""CPU GEMM benchmark: cudann_gemm_ex against numpy (OpenBLAS) and JAX `jit`
(XLA CPU), all measured in this run, for the skinny products of decoding
(M token rows times a weight matrix) and square/training shapes, in every
transpose combination.

    make build && python3 bench/gemm_bench.py [--quick] [--only decode|square]

`NT` is the linear layer y = x·Wᵀ with W [N, K] row-major; `TN`/`TT` read A
transposed. For each shape: the median ms of each side, the rate at which each
reads B (GB/s), and cudann's speedup over the faster peer. Targets (issue 20):
decode shapes at least as fast as both peers and reading B at >= 70% of the
best rate; square/training shapes >= 0.95x the faster peer.

Each side runs alone in its own process (cudann, numpy, JAX in turn, for
--rounds rounds; each time is the median over the rounds): a library's idle
worker threads (OpenBLAS's, XLA's, rayon's) spin for a while after each call
and would otherwise take cores from the next side measured.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

F32 = 0
SIDES = ("cudann", "numpy", "jax")
TRANSPOSES = [(0, 0), (0, 1), (1, 0), (1, 1)]


def shapes(quick, only=None):
    decode = [(m, n, 4096) for n in (4096, 16384) for m in ((1, 4, 16) if quick else (1, 2, 4, 8, 16, 32))]
    every = [("decode", s) for s in decode] + [("square", s) for s in ((1024, 1024, 1024), (1024, 256, 1024))]
    return [(kind, s) for kind, s in every if only in (None, kind)]


def product(side, m, n, k, ta, tb, rng):
    """fn() computing op(A) op(B) with `side`, on fresh random operands."""
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    if side == "cudann":
        from cpu_bench import LIB
        c = np.empty((m, n), np.float32)

        def ours():
            if LIB.cudann_gemm_ex(ta, tb, m, n, k, 1.0, a, F32, a.shape[1], 0, b, F32, b.shape[1], 0, 0.0, c, F32, n, 0, 1, None):
                raise RuntimeError(LIB.last_error())
        return ours
    op_a, op_b = (a.T if ta else a), (b.T if tb else b)
    if side == "numpy":
        return lambda: op_a @ op_b
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
    import jax
    import jax.numpy as jnp
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    jitted = jax.jit(lambda x, y: (x.T if ta else x) @ (y.T if tb else y))
    return lambda: jitted(ja, jb).block_until_ready()


def measure(side, quick, only, repeats):
    """This process's side alone: {"MxNxK op": median ms}, printed as JSON."""
    from cpu_bench import timed
    rng = np.random.default_rng(0)
    out = {}
    for _, (m, n, k) in shapes(quick, only):
        for ta, tb in TRANSPOSES:
            out[f"{m}x{n}x{k} {'NT'[ta] + 'NT'[tb]}"] = timed(product(side, m, n, k, ta, tb, rng), repeats)
    print(json.dumps(out))


def versions():
    from cpu_bench import LIB
    import jax
    return LIB.version(), jax.__version__


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shapes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("decode", "square"), help="only these shapes")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side's process
    args = parser.parse_args()
    repeats = 5 if args.quick else 11
    if args.side:
        return measure(args.side, args.quick, args.only, repeats)
    runs = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            command = [sys.executable, os.path.abspath(__file__), "--side", side] + ["--quick"] * args.quick
            command += ["--only", args.only] * bool(args.only)
            runs[side].append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    ours_version, jax_version = versions()
    print(f"# cudann {ours_version} vs numpy {np.__version__} (OpenBLAS) and jax {jax_version} jit; {os.cpu_count()} cores; "
          f"median of {repeats} calls, median of {args.rounds} rounds, each side in its own process")
    print(f"{'shape MxNxK':<18} {'op':<3} {'cudann':>8} {'numpy':>8} {'jax':>8} {'GB/s':>6} {'np GB/s':>7} {'jax GB/s':>8} "
          f"{'vs best':>7}  ok")
    failures = 0
    for kind, (m, n, k) in shapes(args.quick, args.only):
        for ta, tb in TRANSPOSES:
            key = f"{m}x{n}x{k} {'NT'[ta] + 'NT'[tb]}"
            times = [statistics.median(run[key] for run in runs[side]) for side in SIDES]
            gbs = [4 * n * k / t / 1e6 for t in times]
            ratio = min(times[1:]) / times[0]
            ok = ratio >= 1.0 and gbs[0] >= 0.7 * max(gbs) if kind == "decode" else ratio >= 0.95
            failures += not ok
            print(f"{m}x{n}x{k:<8} {key[-2:]:<3} {times[0]:8.3f} {times[1]:8.3f} {times[2]:8.3f} {gbs[0]:6.1f} {gbs[1]:7.1f} "
                  f"{gbs[2]:8.1f} {ratio:6.2f}x  {'yes' if ok else 'NO'}")
    print(f"{failures} below target")


if __name__ == "__main__":
    main()
