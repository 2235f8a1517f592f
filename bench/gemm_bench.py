"""CPU GEMM benchmark: cudann_gemm_ex against numpy (OpenBLAS) and JAX `jit`
(XLA CPU), all measured in this run, for the skinny products of decoding
(M token rows times a weight matrix) and square/training shapes, in every
transpose combination.

    make build && python3 bench/gemm_bench.py [--quick]

`NT` is the linear layer y = x·Wᵀ with W [N, K] row-major; `TN`/`TT` read A
transposed. For each shape: the median ms of each side, the rate at which each
reads B (GB/s), and cudann's speedup over the faster peer. Targets (issue 20):
decode shapes at least as fast as both peers and reading B at >= 70% of the
best rate; square/training shapes >= 0.95x the faster peer.
"""
import argparse
import os

import numpy as np

from cpu_bench import LIB, timed  # the same library binding and timing

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

F32 = 0


def case(m, n, k, ta, tb, rng):
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    c = np.empty((m, n), np.float32)
    lda, ldb = a.shape[1], b.shape[1]

    def ours():
        rc = LIB.cudann_gemm_ex(ta, tb, m, n, k, 1.0, a, F32, lda, 0, b, F32, ldb, 0, 0.0, c, F32, n, 0, 1, None)
        if rc:
            raise RuntimeError(LIB.last_error())
    op_a, op_b = (a.T if ta else a), (b.T if tb else b)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    jitted = jax.jit(lambda x, y: (x.T if ta else x) @ (y.T if tb else y))
    return ours, (lambda: op_a @ op_b), (lambda: jitted(ja, jb).block_until_ready())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shapes")
    args = parser.parse_args()
    repeats = 5 if args.quick else 11
    rng = np.random.default_rng(0)
    decode = [(m, n, 4096) for n in (4096, 16384) for m in ((1, 4, 16) if args.quick else (1, 2, 4, 8, 16, 32))]
    square = [(1024, 1024, 1024), (1024, 256, 1024)]
    transposes = [(0, 0), (0, 1), (1, 0), (1, 1)]
    print(f"# cudann {LIB.version()} vs numpy {np.__version__} (OpenBLAS) and jax {jax.__version__} jit; {os.cpu_count()} cores; "
          f"median of {repeats}")
    print(f"{'shape MxNxK':<18} {'op':<3} {'cudann':>8} {'numpy':>8} {'jax':>8} {'GB/s':>6} {'np GB/s':>7} {'jax GB/s':>8} "
          f"{'vs best':>7}  ok")
    failures = 0
    for shapes, kind in ((decode, "decode"), (square, "square")):
        for m, n, k in shapes:
            for ta, tb in transposes:
                times = [timed(fn, repeats) for fn in case(m, n, k, ta, tb, rng)]
                gbs = [4 * n * k / t / 1e6 for t in times]
                ratio = min(times[1:]) / times[0]
                ok = ratio >= 1.0 and gbs[0] >= 0.7 * max(gbs) if kind == "decode" else ratio >= 0.95
                failures += not ok
                op = "NT"[ta] + "NT"[tb]
                print(f"{m}x{n}x{k:<8} {op:<3} {times[0]:8.3f} {times[1]:8.3f} {times[2]:8.3f} {gbs[0]:6.1f} {gbs[1]:7.1f} "
                      f"{gbs[2]:8.1f} {ratio:6.2f}x  {'yes' if ok else 'NO'}")
    print(f"{failures} below target")


if __name__ == "__main__":
    main()
