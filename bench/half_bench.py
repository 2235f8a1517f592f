"""Half precision on the CPU against the float32 forms, in one run: the
conversions (GB/s of both buffers), cudann_gemm_ex with bfloat16 operands
against float32 (square and decoding shapes), and the memory-bound `_ex` ops
in bfloat16 and float16 against their float32 calls (issue 16's targets: bf16 GEMM at
least as fast as f32 at 1024^3; memory-bound bf16 ops 1.5x their f32 form).

    python3 bench/half_bench.py [path/to/libcudann.so]
"""
import ctypes
import os
import sys
import time

# numpy's OpenBLAS threads spin after its calls, taking the cores from ours.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

LIB = ctypes.CDLL(sys.argv[1] if len(sys.argv) > 1 else "target/release/libcudann.so")
F32, F16, BF16 = 0, 1, 2
P, I, L, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float


def fn(name, *argtypes):
    f = getattr(LIB, name)
    f.argtypes, f.restype = list(argtypes), ctypes.c_int32
    return f


convert = fn("cudann_convert", P, I, P, I, L, P)
gemm_ex = fn("cudann_gemm_ex", I, I, I, I, I, F, P, I, L, L, P, I, L, L, F, P, I, L, L, I, P)
add_ex = fn("cudann_add_ex", P, P, P, L, I, P)
mul_ex = fn("cudann_mul_ex", P, P, P, L, I, P)
scale_ex = fn("cudann_scale_ex", P, P, F, L, I, P)
swiglu = fn("cudann_swiglu", P, P, P, L, I, P)
softmax_ex = fn("cudann_softmax_ex", P, P, I, I, I, P)
rmsnorm_ex = fn("cudann_rmsnorm_ex", P, P, P, I, I, F, I, P)


def best(call, reps=7):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        assert call() == 0
        times.append(time.perf_counter() - t)
    return min(times)


def half(x, t=BF16):
    out = np.empty(x.shape, np.uint16)
    assert convert(x.ctypes.data, F32, out.ctypes.data, t, x.size, None) == 0
    return out


def main():
    rng = np.random.default_rng(0)
    n = 1 << 24
    x = rng.standard_normal(n).astype(np.float32)
    h, y = np.empty(n, np.uint16), np.empty(n, np.float32)
    copy = best(lambda: (np.copyto(y, x), 0)[1])
    print(f"numpy float32 copy of {n} elements: {copy * 1e3:.2f} ms ({2 * x.nbytes / copy / 1e9:.1f} GB/s)")
    print(f"{'conversion':<14}{'ms':>8}{'GB/s':>8}")
    for name, src, st, dst, dt in [("f32 -> bf16", x, F32, h, BF16), ("bf16 -> f32", h, BF16, y, F32),
                                   ("f32 -> f16", x, F32, h, F16), ("f16 -> f32", h, F16, y, F32)]:
        t = best(lambda: convert(src.ctypes.data, st, dst.ctypes.data, dt, n, None))
        print(f"{name:<14}{t * 1e3:>8.2f}{(src.nbytes + dst.nbytes) / t / 1e9:>8.1f}")

    print(f"\n{'gemm_ex (M, N, K, B transposed)':<36}{'f32 ms':>9}{'bf16 ms':>9}{'bf16 speed':>12}")
    for m, nn, k, tb in [(1024, 1024, 1024, 0), (1024, 1024, 1024, 1), (4096, 1024, 1024, 0), (64, 4096, 4096, 1),
                         (1, 4096, 4096, 1), (8, 4096, 4096, 1), (32, 4096, 4096, 1)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((nn, k) if tb else (k, nn)).astype(np.float32)
        c = np.empty((m, nn), np.float32)
        ldb = k if tb else nn

        def run(A, B, t):
            return lambda: gemm_ex(0, tb, m, nn, k, 1.0, A.ctypes.data, t, k, 0, B.ctypes.data, t, ldb, 0, 0.0, c.ctypes.data, F32, nn, 0, 1, None)
        t32, t16 = best(run(a, b, F32)), best(run(half(a), half(b), BF16))
        print(f"{str((m, nn, k, tb)):<36}{t32 * 1e3:>9.2f}{t16 * 1e3:>9.2f}{t32 / t16:>11.2f}x")

    print(f"\n{'op (half vs f32)':<28}{'f32 ms':>9}{'bf16 ms':>9}{'bf16 speed':>12}{'f16 ms':>9}{'f16 speed':>11}")
    rows, cols = 4096, 4096
    a32, b32 = rng.standard_normal(rows * cols).astype(np.float32), rng.standard_normal(rows * cols).astype(np.float32)
    w32 = rng.standard_normal(cols).astype(np.float32)
    args = {F32: (a32, b32, w32, np.empty_like(a32))}
    for t in (BF16, F16):
        args[t] = (half(a32, t), half(b32, t), half(w32, t), np.empty(a32.shape, np.uint16))
    cases = [
        ("add", lambda A, B, W, O, t: lambda: add_ex(A.ctypes.data, B.ctypes.data, O.ctypes.data, A.size, t, None)),
        ("add in place", lambda A, B, W, O, t: lambda: add_ex(A.ctypes.data, B.ctypes.data, A.ctypes.data, A.size, t, None)),
        ("mul", lambda A, B, W, O, t: lambda: mul_ex(A.ctypes.data, B.ctypes.data, O.ctypes.data, A.size, t, None)),
        ("scale", lambda A, B, W, O, t: lambda: scale_ex(A.ctypes.data, O.ctypes.data, 0.5, A.size, t, None)),
        ("scale in place", lambda A, B, W, O, t: lambda: scale_ex(A.ctypes.data, A.ctypes.data, 1.0, A.size, t, None)),
        ("swiglu", lambda A, B, W, O, t: lambda: swiglu(A.ctypes.data, B.ctypes.data, O.ctypes.data, A.size, t, None)),
        ("softmax", lambda A, B, W, O, t: lambda: softmax_ex(A.ctypes.data, O.ctypes.data, rows, cols, t, None)),
        ("rmsnorm", lambda A, B, W, O, t: lambda: rmsnorm_ex(A.ctypes.data, W.ctypes.data, O.ctypes.data, rows, cols, 1e-5, t, None)),
    ]
    for name, make in cases:
        t32, tb, th = (best(make(*args[t], t)) for t in (F32, BF16, F16))
        print(f"{name + f' {rows}x{cols}':<28}{t32 * 1e3:>9.2f}{tb * 1e3:>9.2f}{t32 / tb:>11.2f}x{th * 1e3:>9.2f}{t32 / th:>10.2f}x")


if __name__ == "__main__":
    main()
