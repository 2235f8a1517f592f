#!/usr/bin/env python3
"""Launch every PTX kernel on the GPU exactly as the Rust runtime does and
compare it with a float64 numpy reference.

    python3 kernels/check_kernels.py        (from the repository root; needs CuPy and a GPU)

Prints op / case / error / OK per check and exits 1 on any failure. Also runs
each kernel with a tiny grid (grid-stride paths), with misaligned pointers
(scalar paths), in place where the ABI allows it, and twice for the
reductions (bitwise determinism). No timing.
"""

import math
import os
import sys

import cupy as cp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTX = os.path.join(ROOT, "kernels", "ptx")
MODULES = {}
FAILED = []
RNG = np.random.default_rng(1234)
NAN = float("nan")
INF = float("inf")


def kernel(module, name):
    if module not in MODULES:
        MODULES[module] = cp.RawModule(path=os.path.join(PTX, module + ".ptx"))
    return MODULES[module].get_function(name)


def report(op, case, err, ok):
    print(f"{op:<22} {case:<44} {err:>12.3e}  {'OK' if ok else 'FAIL'}")
    if not ok:
        FAILED.append(f"{op} {case}")


def rel_err(got, want, atol=0.0):
    """Max |got - want| / (|want| + atol) over finite references; a NaN/inf
    reference must be matched exactly (same class)."""
    got = np.asarray(got, np.float64).ravel()
    want = np.asarray(want, np.float64).ravel()
    if got.shape != want.shape:
        return INF
    special = ~np.isfinite(want)
    if np.any(special):
        g, w = got[special], want[special]
        if not np.all((np.isnan(g) & np.isnan(w)) | (g == w)):
            return INF
    fin = ~special
    if not np.any(fin):
        return 0.0
    if not np.all(np.isfinite(got[fin])):
        return INF
    d = np.abs(got[fin] - want[fin])
    return float(np.max(d / (np.abs(want[fin]) + atol))) if d.size else 0.0


def ulp_err(got, want):
    """Max error in units of the float32 spacing at the reference."""
    got = np.asarray(got, np.float64).ravel()
    want = np.asarray(want, np.float64).ravel()
    special = ~np.isfinite(want)
    if not np.all((np.isnan(got[special]) & np.isnan(want[special])) | (got[special] == want[special])):
        return INF
    w = want[~special]
    spacing = np.spacing(np.abs(w).astype(np.float32)).astype(np.float64)
    return float(np.max(np.abs(got[~special] - w) / spacing)) if w.size else 0.0


def scaled_err(got, want, scale):
    """Max |got - want| / scale over finite references (scale: the size of the
    terms behind each result); a NaN/inf reference must be matched exactly."""
    want = np.asarray(want, np.float64)
    scale = np.broadcast_to(np.asarray(scale, np.float64), want.shape).ravel()
    got, want = np.asarray(got, np.float64).ravel(), want.ravel()
    if got.shape != want.shape:
        return INF
    special = ~np.isfinite(want)
    if not np.all((np.isnan(got[special]) & np.isnan(want[special])) | (got[special] == want[special])):
        return INF
    fin = ~special
    if not np.all(np.isfinite(got[fin])):
        return INF
    d = np.abs(got[fin] - want[fin])
    return float(np.max(d / (scale[fin] + 1e-30))) if d.size else 0.0


def same_bits(got, want):
    """Bitwise equality of two float32 (or int) arrays, NaN payloads included."""
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    return bool(np.array_equal(got.view(np.uint8), want.view(np.uint8)))


NULLPTR = np.uint64(0)


def grid_ew(n):
    return min(-(-n // 1024), 65535)


def dev(a, offset=0):
    """Device copy of a; offset > 0 shifts it by that many elements (misaligned)."""
    a = np.ascontiguousarray(a)
    if offset == 0:
        return cp.asarray(a)
    buf = cp.empty(a.size + offset, a.dtype)
    view = buf[offset:]
    view.set(a.ravel())
    return view.reshape(a.shape)


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- elementwise

def silu_ref(x):
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        neg = x * np.exp(np.minimum(x, 0)) / (1 + np.exp(np.minimum(x, 0)))
        pos = x / (1 + np.exp(-np.maximum(x, 0)))
    out = np.where(x >= 0, pos, neg)
    out[np.isneginf(x)] = 0.0
    return out


def check_elementwise():
    silu, add, mul, scale = (kernel("elementwise", n) for n in ("silu_f32", "add_f32", "mul_f32", "scale_f32"))
    specials = np.array([0.0, -0.0, 1e-40, -1e-40, 1.0, -1.0, 20.0, -20.0, 80.0, -79.99, -80.0, -80.01, -87.0,
                         -88.7, -90.0, -95.0, -100.0, -103.0, -104.0, -150.0, -200.0, -201.0, 88.0, 100.0,
                         3e38, -3e38, INF, -INF, NAN], np.float32)
    for n in (1, 31, 33, 1000, 4097, (1 << 20) + 3):
        for offset in (0, 1):
            for grid in (grid_ew(n), 3):
                case = f"n={n} off={offset} grid={grid}"
                x = randn(n, scale=6.0)
                x[: min(n, specials.size)] = specials[: min(n, specials.size)]
                b = randn(n)
                xd, bd = dev(x, offset), dev(b, offset)
                y = cp.full(n, NAN, np.float32)
                silu((grid,), (256,), (xd, y, np.int64(n)))
                report("silu_f32", case, ulp_err(y.get(), silu_ref(x)), ulp_err(y.get(), silu_ref(x)) <= 4)
                for name, fn, ref in (("add_f32", add, x + b), ("mul_f32", mul, x * b)):
                    y = cp.full(n, NAN, np.float32)
                    fn((grid,), (256,), (xd, bd, y, np.int64(n)))
                    ok = np.array_equal(y.get(), ref, equal_nan=True)
                    report(name, case, 0.0 if ok else INF, ok)
                y = cp.full(n, NAN, np.float32)
                scale((grid,), (256,), (xd, y, np.float32(-1.7), np.int64(n)))
                ok = np.array_equal(y.get(), x * np.float32(-1.7), equal_nan=True)
                report("scale_f32", case, 0.0 if ok else INF, ok)
    # In place: the output is an input.
    n = 4097
    x, b = randn(n, scale=4.0), randn(n)
    for offset in (0, 1):
        xd = dev(x, offset)
        silu((grid_ew(n),), (256,), (xd, xd, np.int64(n)))
        report("silu_f32", f"in place off={offset}", ulp_err(xd.get(), silu_ref(x)), ulp_err(xd.get(), silu_ref(x)) <= 4)
        ad, bd = dev(x, offset), dev(b, offset)
        add((grid_ew(n),), (256,), (ad, bd, bd, np.int64(n)))
        report("add_f32", f"in place y==b off={offset}", 0.0, np.array_equal(bd.get(), x + b))
        mul((grid_ew(n),), (256,), (ad, bd, ad, np.int64(n)))
        report("mul_f32", f"in place y==a off={offset}", 0.0, np.array_equal(ad.get(), x * (x + b)))
        sd = dev(x, offset)
        scale((grid_ew(n),), (256,), (sd, sd, np.float32(0.5), np.int64(n)))
        report("scale_f32", f"in place off={offset}", 0.0, np.array_equal(sd.get(), x * np.float32(0.5)))
    check_elementwise_training()


def sigmoid64(x):
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def silu_grad_ref(x):
    """(silu'(x), size of its terms) in float64, clamped at +-100 like the kernels."""
    x = np.clip(x.astype(np.float64), -100, 100)
    s = sigmoid64(x)
    return s * (1 + x * (1 - s)), s + np.abs(x) * s * (1 - s)


GELU_C, GELU_A = math.sqrt(2 / math.pi), 0.044715


def gelu_ref(x):
    """(gelu(x), its size times 1 + |z|): z = 2u is rounded before the exp
    (relative error ~|z| ulp deep in the tail)."""
    x = x.astype(np.float64)
    c = np.clip(x, -50, 50)
    z = 2 * GELU_C * (c + GELU_A * c ** 3)
    with np.errstate(invalid="ignore"):
        y = c * sigmoid64(z)
        y = np.where(x > 50, x, np.where(x < -50, -0.0, y))
    return y, np.abs(y) * (1 + np.abs(z)) + 1e-30


def gelu_grad_ref(x):
    """(gelu'(x), the size of its terms times 1 + |z|, as gelu_ref)."""
    x = np.clip(x.astype(np.float64), -50, 50)
    z = 2 * GELU_C * (x + GELU_A * x ** 3)
    s = sigmoid64(z)
    t = x * s * (1 - s) * 2 * GELU_C * (1 + 3 * GELU_A * x * x)
    return s + t, (s + np.abs(t)) * (1 + np.abs(z))


def check_elementwise_training():
    f32, i64 = np.float32, np.int64
    silu_b, gelu, gelu_b, swiglu, swiglu_b, bias_add = (kernel("elementwise", n) for n in (
        "silu_backward_f32", "gelu_f32", "gelu_backward_f32", "swiglu_f32", "swiglu_backward_f32", "bias_add_f32"))
    specials = np.array([0.0, -0.0, 1e-40, -1e-40, 1.0, -1.0, -0.75, -1.28, 20.0, -20.0, 49.0, 51.0, -51.0, -99.0,
                         -101.0, 150.0, -150.0, 3e38, -3e38, INF, -INF, NAN], np.float32)
    for n in (1, 31, 33, 1000, 4097, (1 << 20) + 3):
        for offset in (0, 1):
            for grid in (grid_ew(n), 3):
                case = f"n={n} off={offset} grid={grid}"
                x = randn(n, scale=6.0)
                x[: min(n, specials.size)] = specials[: min(n, specials.size)]
                dy, u = randn(n, scale=2.0), randn(n, scale=2.0)
                xd, dyd, ud = dev(x, offset), dev(dy, offset), dev(u, offset)
                DY, U = dy.astype(np.float64), u.astype(np.float64)
                # Derivatives: within 1e-5 of |dy| times the size of their terms
                # (they cross zero); values: within 1e-6 relative (a few ulp;
                # 1e-30 absolute for the subnormal tail of silu).
                y = cp.full(n, NAN, f32)
                silu_b((grid,), (256,), (dyd, xd, y, i64(n)))
                g, mag = silu_grad_ref(x)
                err = scaled_err(y.get(), DY * g, np.abs(DY) * mag)
                report("silu_backward_f32", case, err, err <= 1e-5)
                y = cp.full(n, NAN, f32)
                gelu((grid,), (256,), (xd, y, i64(n)))
                want, mag = gelu_ref(x)
                err = scaled_err(y.get(), want, mag)
                report("gelu_f32", case, err, err <= 1e-6)
                y = cp.full(n, NAN, f32)
                gelu_b((grid,), (256,), (dyd, xd, y, i64(n)))
                g, mag = gelu_grad_ref(x)
                err = scaled_err(y.get(), DY * g, np.abs(DY) * mag)
                report("gelu_backward_f32", case, err, err <= 1e-5)
                y = cp.full(n, NAN, f32)
                swiglu((grid,), (256,), (xd, ud, y, i64(n)))
                sv = silu_ref(x)
                with np.errstate(invalid="ignore", over="ignore"):
                    # Products past float32's range overflow in the kernel (and the CPU): inf there too.
                    want = (sv * U).astype(np.float32).astype(np.float64)
                err = scaled_err(y.get(), want, np.abs(want) + 1e-30)
                report("swiglu_f32", case, err, err <= 1e-6)
                dg, du = cp.full(n, NAN, f32), cp.full(n, NAN, f32)
                swiglu_b((grid,), (256,), (dyd, xd, ud, dg, du, i64(n)))
                g, mag = silu_grad_ref(x)
                with np.errstate(invalid="ignore", over="ignore"):
                    round32 = lambda v: v.astype(np.float32).astype(np.float64)
                    e1 = scaled_err(dg.get(), round32(DY * U * g), np.abs(DY * U) * mag)
                    e2 = scaled_err(du.get(), round32(DY * sv), np.abs(DY * sv) + 1e-30)
                report("swiglu_backward_f32", case, max(e1, e2), e1 <= 1e-5 and e2 <= 1e-6)
    # In place: dx == dy, y == x, d_gate == gate and d_up == up.
    n = 4097
    x, dy, u = randn(n, scale=3.0), randn(n), randn(n)
    DY, U = dy.astype(np.float64), u.astype(np.float64)
    for offset in (0, 1):
        dyd = dev(dy, offset)
        silu_b((grid_ew(n),), (256,), (dyd, dev(x, offset), dyd, i64(n)))
        g, mag = silu_grad_ref(x)
        err = scaled_err(dyd.get(), DY * g, np.abs(DY) * mag)
        report("silu_backward_f32", f"in place dx==dy off={offset}", err, err <= 1e-5)
        xd = dev(x, offset)
        gelu_b((grid_ew(n),), (256,), (dev(dy, offset), xd, xd, i64(n)))
        g, mag = gelu_grad_ref(x)
        err = scaled_err(xd.get(), DY * g, np.abs(DY) * mag)
        report("gelu_backward_f32", f"in place dx==x off={offset}", err, err <= 1e-5)
        xd = dev(x, offset)
        gelu((grid_ew(n),), (256,), (xd, xd, i64(n)))
        err = scaled_err(xd.get(), *gelu_ref(x))
        report("gelu_f32", f"in place off={offset}", err, err <= 1e-6)
        gd, ud = dev(x, offset), dev(u, offset)
        swiglu((grid_ew(n),), (256,), (gd, ud, ud, i64(n)))
        err = scaled_err(ud.get(), silu_ref(x) * U, np.abs(silu_ref(x) * U) + 1e-30)
        report("swiglu_f32", f"in place y==up off={offset}", err, err <= 1e-6)
        gd, ud = dev(x, offset), dev(u, offset)
        swiglu_b((grid_ew(n),), (256,), (dev(dy, offset), gd, ud, gd, ud, i64(n)))
        g, mag = silu_grad_ref(x)
        e1 = scaled_err(gd.get(), DY * U * g, np.abs(DY * U) * mag)
        e2 = scaled_err(ud.get(), DY * silu_ref(x), np.abs(DY * silu_ref(x)) + 1e-30)
        report("swiglu_backward_f32", f"in place dg==gate du==up off={offset}", max(e1, e2), e1 <= 1e-5 and e2 <= 1e-6)

    # Bias add: one rounded add, bitwise numpy's.
    for rows, cols in ((1, 1), (3, 31), (5, 36), (7, 1000), (1000, 4), (3, 4097)):
        for offset in (0, 1):
            for grid in (grid_ew(rows * cols), 3):
                x, b = randn(rows, cols), randn(cols)
                y = cp.full((rows, cols), NAN, f32)
                bias_add((grid,), (256,), (dev(x, offset), dev(b, offset), y, np.int32(rows), np.int32(cols)))
                ok = same_bits(y.get(), x + b[None, :])
                report("bias_add_f32", f"{rows}x{cols} off={offset} grid={grid}", 0.0 if ok else INF, ok)
    x, b = randn(64, 48), randn(48)
    xd = dev(x)
    bias_add((grid_ew(x.size),), (256,), (xd, dev(b), xd, np.int32(64), np.int32(48)))
    ok = same_bits(xd.get(), x + b[None, :])
    report("bias_add_f32", "in place 64x48", 0.0 if ok else INF, ok)

    # Column sums: f32 runs of 32 rows into double; within 2e-6 of sum |a b|;
    # bitwise the same for any grid and run to run.
    colsum = kernel("elementwise", "column_sums_f32")
    for rows, cols in ((1, 1), (3, 31), (5, 33), (1000, 36), (7, 4097), (20000, 3), (100000, 64), (0, 5)):
        a, b = randn(rows, cols), randn(rows, cols)
        A, B = a.astype(np.float64), b.astype(np.float64)
        results = []
        for grid in (-(-cols // 32), 2):
            for bp in ("b", "null"):
                out = cp.full(cols, NAN, np.float32)
                colsum((grid,), (32, 32), (dev(a), dev(b) if bp == "b" else NULLPTR, out, np.int32(rows), np.int32(cols)))
                want, mag = ((A * B).sum(0), np.abs(A * B).sum(0)) if bp == "b" else (A.sum(0), np.abs(A).sum(0))
                err = scaled_err(out.get(), want, mag)
                report("column_sums_f32", f"{rows}x{cols} {bp} grid={grid}", err, err <= 2e-6)
                results.append(out.get())
        ok = same_bits(results[0], results[2]) and same_bits(results[1], results[3])
        report("column_sums_f32", f"{rows}x{cols} any grid: same bits", 0.0 if ok else INF, ok)
    a = randn(1, 77)
    ad = dev(a)
    colsum((3,), (32, 32), (ad, NULLPTR, ad, np.int32(1), np.int32(77)))
    ok = same_bits(ad.get()[0], a[0])
    report("column_sums_f32", "one row, out == a", 0.0 if ok else INF, ok)


# ----------------------------------------------------------------------------- softmax

def softmax_ref(x):
    x = x.astype(np.float64)
    m = np.max(x, axis=1, keepdims=True)
    allinf = np.isneginf(m)
    e = np.exp(x - np.where(allinf, 0, m))
    with np.errstate(invalid="ignore"):
        y = e / e.sum(axis=1, keepdims=True)
    return np.where(allinf, 0.0, y)


def total_key(x):
    b = x.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(b < 0, b ^ 0x7FFFFFFF, b)


def topk_ref(x, k):
    rows, cols = x.shape
    idx = np.zeros((rows, k), np.int64)
    w = np.zeros((rows, k))
    for r in range(rows):
        order = np.lexsort((np.arange(cols), -total_key(x[r])))[:k]
        idx[r] = order
        v = x[r, order].astype(np.float64)
        m = v[0]
        if m == -INF:
            w[r] = 0
        else:
            e = np.exp(v - m)
            w[r] = e / e.sum()
    return idx, w


def check_softmax():
    softmax = kernel("softmax", "softmax_f32")
    topk = kernel("softmax", "softmax_topk_f32")
    for rows, cols in ((1, 1), (3, 31), (5, 33), (7, 1000), (4, 4097), (3, 32000), (2, 32768), (2, 32769),
                       (3, 40000), (2, 40001)):
        for offset in (0, 1):
            case = f"{rows}x{cols} off={offset}"
            x = randn(rows, cols, scale=4.0)
            x[0, ::3] = -INF
            if rows > 2:
                x[2, :] = -INF
            xd = dev(x, offset)
            y = cp.full((rows, cols), NAN, np.float32)
            softmax((rows,), (1024,), (xd, y, np.int32(rows), np.int32(cols)))
            err = rel_err(y.get(), softmax_ref(x), atol=1e-30)
            report("softmax_f32", case, err, err <= 2e-5)
            y2 = cp.full((rows, cols), NAN, np.float32)
            softmax((rows,), (1024,), (xd, y2, np.int32(rows), np.int32(cols)))
            report("softmax_f32", case + " determinism", 0.0, np.array_equal(y.get(), y2.get()))
    rows, cols = 5, 4097
    x = randn(rows, cols, scale=4.0)
    for grid in (rows, 2):
        xd = dev(x)
        softmax((grid,), (1024,), (xd, xd, np.int32(rows), np.int32(cols)))
        err = rel_err(xd.get(), softmax_ref(x), atol=1e-30)
        report("softmax_f32", f"in place {rows}x{cols} grid={grid}", err, err <= 2e-5)
    xd = dev(randn(3, 40000))
    x = xd.get()
    softmax((3,), (1024,), (xd, xd, np.int32(3), np.int32(40000)))
    err = rel_err(xd.get(), softmax_ref(x), atol=1e-30)
    report("softmax_f32", "in place 3x40000 (looped)", err, err <= 2e-5)

    for rows, cols, k in ((1, 1, 1), (4, 8, 2), (33, 64, 8), (5, 1000, 31), (3, 100, 100), (6, 257, 40),
                          (2, 70000, 3)):
        for ties in (False, True):
            case = f"{rows}x{cols} k={k}" + (" ties" if ties else "")
            x = randn(rows, cols, scale=3.0)
            if ties:
                x = np.round(x).astype(np.float32)
                x[0, : cols // 2] = -0.0
            if rows > 1:
                x[1, :] = -INF
            if rows > 2:
                x[2, ::2] = -INF
            w = cp.full((rows, k), NAN, np.float32)
            idx = cp.full((rows, k), -7, np.int32)
            topk((rows,), (32,), (dev(x), w, idx, np.int32(rows), np.int32(cols), np.int32(k)))
            want_idx, want_w = topk_ref(x, k)
            ok_idx = np.array_equal(idx.get(), want_idx)
            err = rel_err(w.get(), want_w, atol=1e-30)
            report("softmax_topk_f32", case, err, ok_idx and err <= 2e-5)
    # A grid smaller than rows, and a block of several warps.
    x = randn(10, 50)
    want_idx, want_w = topk_ref(x, 4)
    for grid, block in ((3, 32), (2, 96)):
        w = cp.full((10, 4), NAN, np.float32)
        idx = cp.full((10, 4), -7, np.int32)
        topk((grid,), (block,), (dev(x), w, idx, np.int32(10), np.int32(50), np.int32(4)))
        err = rel_err(w.get(), want_w)
        report("softmax_topk_f32", f"10x50 k=4 grid={grid} block={block}", err,
               np.array_equal(idx.get(), want_idx) and err <= 2e-5)
    check_softmax_backward()


def check_softmax_backward():
    """The plain kernel, and the two for long rows that keep y in shared
    memory (cols * 4 bytes): cached (dy read twice) and regs (dy in registers,
    rows up to 32768)."""
    plain = ((1, 1), (3, 31), (5, 33), (7, 1000), (4, 4097), (3, 40000), (600, 7))
    wide = ((1, 1), (5, 33), (4, 9000), (300, 9000), (3, 32768))
    for name, shapes, shared in (("softmax_backward_f32", plain, False), ("softmax_backward_cached_f32", wide + ((3, 40000),), True),
                                 ("softmax_backward_regs_f32", wide, True)):
        smb = kernel("softmax", name)
        for rows, cols in shapes:
            extra = {}
            if shared:
                smb.max_dynamic_shared_size_bytes = max(smb.max_dynamic_shared_size_bytes, 4 * cols)
                extra = {"shared_mem": 4 * cols}
            for grid in (rows, 2):
                x, dy = randn(rows, cols, scale=3.0), randn(rows, cols)
                y = softmax_ref(x).astype(np.float32)
                Y, DY = y.astype(np.float64), dy.astype(np.float64)
                dot = (DY * Y).sum(1, keepdims=True)
                want = Y * (DY - dot)
                mag = np.abs(Y) * (np.abs(DY) + np.abs(DY * Y).sum(1, keepdims=True))
                dx = cp.full((rows, cols), NAN, np.float32)
                smb((grid,), (1024,), (dev(dy), dev(y), dx, np.int32(rows), np.int32(cols)), **extra)
                err = scaled_err(dx.get(), want, mag)
                report(name, f"{rows}x{cols} grid={grid}", err, err <= 1e-5)
                dyd = dev(dy, 1)
                smb((grid,), (1024,), (dyd, dev(y, 1), dyd, np.int32(rows), np.int32(cols)), **extra)
                err2 = scaled_err(dyd.get(), want, mag)
                report(name, f"in place dx==dy mis {rows}x{cols} grid={grid}", err2,
                       err2 <= 1e-5 and same_bits(dyd.get(), dx.get()))
                yd = dev(y, 1)
                smb((grid,), (1024,), (dev(dy, 1), yd, yd, np.int32(rows), np.int32(cols)), **extra)
                report(name, f"in place dx==y mis {rows}x{cols} grid={grid}", 0.0, same_bits(yd.get(), dx.get()))


# ----------------------------------------------------------------------------- norm

def rms_ref(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps) * w.astype(np.float64)


def check_norm():
    rms = kernel("norm", "rmsnorm_f32")
    rmsr = kernel("norm", "rmsnorm_residual_f32")
    eps = np.float32(1e-5)
    for rows, hidden in ((1, 1), (3, 31), (5, 33), (7, 1000), (4, 4096), (4, 4097), (2, 8192), (2, 8193),
                         (3, 12288), (2, 20001)):
        for offset in (0, 1):
            case = f"{rows}x{hidden} off={offset}"
            x, w, r = randn(rows, hidden), randn(hidden), randn(rows, hidden)
            y = cp.full((rows, hidden), NAN, np.float32)
            rms((rows,), (1024,), (dev(x, offset), dev(w, offset), y, np.int32(rows), np.int32(hidden), eps))
            err = rel_err(y.get(), rms_ref(x, w, eps), atol=1e-6)
            report("rmsnorm_f32", case, err, err <= 2e-5)
            y = cp.full((rows, hidden), NAN, np.float32)
            s = cp.full((rows, hidden), NAN, np.float32)
            rmsr((rows,), (1024,), (dev(x, offset), dev(r, offset), dev(w, offset), y, s, np.int32(rows),
                                    np.int32(hidden), eps))
            ssum = x + r
            err = rel_err(y.get(), rms_ref(ssum, w, eps), atol=1e-6)
            report("rmsnorm_residual_f32", case, err, err <= 2e-5 and np.array_equal(s.get(), ssum))
    for rows, hidden in ((3, 4096), (3, 4097), (2, 12288)):
        x, w, r = randn(rows, hidden), randn(hidden), randn(rows, hidden)
        for grid in (rows, 1):
            xd = dev(x)
            rms((grid,), (1024,), (xd, dev(w), xd, np.int32(rows), np.int32(hidden), eps))
            err = rel_err(xd.get(), rms_ref(x, w, eps), atol=1e-6)
            report("rmsnorm_f32", f"in place {rows}x{hidden} grid={grid}", err, err <= 2e-5)
        want_y, want_s = rms_ref(x + r, w, eps), x + r
        for yname, sname in (("x", "r"), ("r", "x"), ("new", "x"), ("new", "r"), ("x", "new"), ("r", "new")):
            bufs = {"x": dev(x), "r": dev(r)}
            y = bufs[yname] if yname != "new" else cp.full((rows, hidden), NAN, np.float32)
            s = bufs[sname] if sname != "new" else cp.full((rows, hidden), NAN, np.float32)
            rmsr((rows,), (1024,), (bufs["x"], bufs["r"], dev(w), y, s, np.int32(rows), np.int32(hidden), eps))
            err = rel_err(y.get(), want_y, atol=1e-6)
            report("rmsnorm_residual_f32", f"{rows}x{hidden} y={yname} s={sname}", err,
                   err <= 2e-5 and np.array_equal(s.get(), want_s))
    check_norm_training()


def norm_stats64(x, eps, center):
    X = x.astype(np.float64)
    mean = X.mean(1, keepdims=True) if center else np.zeros((X.shape[0], 1))
    rstd = 1 / np.sqrt(((X - mean) ** 2).mean(1, keepdims=True) + eps)
    return X, mean, rstd


def norm_backward_ref(dy, x, w, eps, center):
    """(dx, dw, db) in float64 and the size of the terms behind each."""
    X, mean, rstd = norm_stats64(x, eps, center)
    DY, W = dy.astype(np.float64), w.astype(np.float64)[None, :]
    xhat = (X - mean) * rstd
    g = DY * W
    h = X.shape[1]
    g_mean = g.mean(1, keepdims=True) if center else 0.0
    gx_mean = (g * xhat).mean(1, keepdims=True)
    dx = rstd * (g - g_mean - xhat * gx_mean)
    ag = np.abs(g)
    cancel = rstd * ((ag * np.abs(X)).mean(1, keepdims=True) + np.abs(mean) * ag.mean(1, keepdims=True))
    dx_mag = rstd * (ag + ag.mean(1, keepdims=True) + (np.abs(xhat) + np.abs(X) * rstd) * cancel)
    return (dx, dx_mag), ((DY * xhat).sum(0), np.abs(DY * xhat).sum(0)), (DY.sum(0), np.abs(DY).sum(0))


def check_norm_training():
    eps = np.float32(1e-5)
    f32, i32 = np.float32, np.int32
    ln = kernel("norm", "layernorm_f32")
    xh = kernel("norm", "norm_xhat_f32")
    rmsb = kernel("norm", "rmsnorm_backward_f32")
    rmsb_chunks = kernel("norm", "rmsnorm_backward_chunks_f32")
    lnb = kernel("norm", "layernorm_backward_f32")
    colsum = kernel("elementwise", "column_sums_f32")
    for rows, hidden in ((1, 1), (3, 31), (5, 33), (7, 1000), (4, 4096), (4, 4097), (2, 20001), (600, 64)):
        for offset in (0, 1):
            for grid in (rows, 2):
                case = f"{rows}x{hidden} off={offset} grid={grid}"
                x, w, b, dy = randn(rows, hidden, scale=1.5), randn(hidden), randn(hidden), randn(rows, hidden)
                X, mean, rstd = norm_stats64(x, eps, True)
                W, B = w.astype(np.float64), b.astype(np.float64)
                y = cp.full((rows, hidden), NAN, f32)
                ln((grid,), (1024,), (dev(x, offset), dev(w, offset), dev(b, offset), y, i32(rows), i32(hidden), eps))
                want = (X - mean) * rstd * W + B
                mag = np.abs((X - mean) * rstd * W) + np.abs(mean) * rstd * np.abs(W) + np.abs(B)
                err = scaled_err(y.get(), want, mag)
                report("layernorm_f32", case, err, err <= 1e-5)
                for center in (0, 1):
                    X, mean, rstd = norm_stats64(x, eps, center)
                    h = cp.full((rows, hidden), NAN, f32)
                    xh((grid,), (1024,), (dev(x, offset), h, i32(rows), i32(hidden), eps, i32(center)))
                    err = scaled_err(h.get(), (X - mean) * rstd, (np.abs(X) + np.abs(mean)) * rstd)
                    report("norm_xhat_f32", case + f" center={center}", err, err <= 1e-5)
                    (want_dx, dx_mag), (want_dw, dw_mag), (want_db, db_mag) = norm_backward_ref(dy, x, w, eps, center)
                    dx = cp.full((rows, hidden), NAN, f32)
                    (lnb if center else rmsb)((grid,), (1024,), (dev(dy, offset), dev(x, offset), dev(w, offset), dx,
                                                                 i32(rows), i32(hidden), eps))
                    err = scaled_err(dx.get(), want_dx, dx_mag)
                    name = "layernorm_backward_f32" if center else "rmsnorm_backward_f32"
                    report(name, case, err, err <= 2e-5)
                    # The weight gradient as the library computes it: x̂ into a
                    # buffer, then column sums of dy * x̂ (and of dy).
                    dw = cp.full(hidden, NAN, f32)
                    colsum((-(-hidden // 32),), (32, 32), (dev(dy), h, dw, i32(rows), i32(hidden)))
                    err = scaled_err(dw.get(), want_dw, dw_mag)
                    report("column_sums_f32", f"{name} d_weight {case}", err, err <= 1e-5)
                    if center or hidden > 8192:
                        continue
                    # One pass: dx and per-chunk column sums, then their sum.
                    for chunk in (1, 3):
                        chunks = -(-rows // chunk)
                        dx, part = cp.full((rows, hidden), NAN, f32), cp.full((chunks, hidden), NAN, f32)
                        rmsb_chunks((min(grid, chunks),), (256,), (dev(dy, offset), dev(x, offset), dev(w, offset), dx, part,
                                                                   i32(rows), i32(hidden), eps, i32(chunk)))
                        colsum((-(-hidden // 32),), (32, 32), (part, NULLPTR, dw, i32(chunks), i32(hidden)))
                        err = max(scaled_err(dx.get(), want_dx, dx_mag), scaled_err(dw.get(), want_dw, dw_mag))
                        report("rmsnorm_backward_chunks_f32", f"{case} chunk={chunk}", err, err <= 2e-5)
        # In place: y == x, dx == dy, dx == x.
        x, w, b, dy = randn(rows, hidden), randn(hidden), randn(hidden), randn(rows, hidden)
        X, mean, rstd = norm_stats64(x, eps, True)
        xd = dev(x)
        ln((rows,), (1024,), (xd, dev(w), dev(b), xd, i32(rows), i32(hidden), eps))
        W, B = w.astype(np.float64), b.astype(np.float64)
        mag = np.abs((X - mean) * rstd * W) + np.abs(mean) * rstd * np.abs(W) + np.abs(B)
        err = scaled_err(xd.get(), (X - mean) * rstd * W + B, mag)
        report("layernorm_f32", f"in place {rows}x{hidden}", err, err <= 1e-5)
        for center in (0, 1):
            (want_dx, dx_mag), _, _ = norm_backward_ref(dy, x, w, eps, center)
            for alias in ("dy", "x"):
                dyd, xd = dev(dy), dev(x)
                out = dyd if alias == "dy" else xd
                (lnb if center else rmsb)((rows,), (1024,), (dyd, xd, dev(w), out, i32(rows), i32(hidden), eps))
                err = scaled_err(out.get(), want_dx, dx_mag)
                name = "layernorm_backward_f32" if center else "rmsnorm_backward_f32"
                report(name, f"in place dx=={alias} {rows}x{hidden}", err, err <= 2e-5)


# ----------------------------------------------------------------------------- loss

def log_softmax_ref(x):
    x = x.astype(np.float64)
    m = np.max(x, axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def check_loss():
    lsm = kernel("loss", "log_softmax_f32")
    nll = kernel("loss", "nll_mean_f32")
    ceb = kernel("loss", "ce_backward_f32")
    auxc = kernel("loss", "aux_counts_f32")
    auxl = kernel("loss", "aux_loss_f32")
    for rows, cols in ((1, 1), (3, 31), (5, 33), (7, 1000), (4, 4097), (3, 32000), (2, 32769), (2, 40001)):
        for offset in (0, 1):
            case = f"{rows}x{cols} off={offset}"
            x = randn(rows, cols, scale=4.0)
            x[0, ::3] = -INF
            lp = cp.full((rows, cols), NAN, np.float32)
            lsm((rows,), (1024,), (dev(x, offset), lp, np.int32(rows), np.int32(cols)))
            # Error relative to the row's log-sum-exp scale (lp near 0 has no relative meaning).
            want = log_softmax_ref(x)
            err = rel_err(lp.get(), want, atol=1.0)
            report("log_softmax_f32", case, err, err <= 1e-5)
    x = randn(4, 4097, scale=3.0)
    xd = dev(x)
    lsm((2,), (1024,), (xd, xd, np.int32(4), np.int32(4097)))
    err = rel_err(xd.get(), log_softmax_ref(x), atol=1.0)
    report("log_softmax_f32", "in place 4x4097 grid=2", err, err <= 1e-5)

    for rows, vocab in ((1, 1), (1, 7), (33, 31), (1000, 50), (5000, 17)):
        lp = randn(rows, vocab) - 3.0
        t = RNG.integers(0, vocab, rows).astype(np.int32)
        t[::4] = -100
        valid = t >= 0
        want = -np.mean(lp.astype(np.float64)[np.arange(rows)[valid], t[valid]]) if valid.any() else 0.0
        for grid in (1, 2):
            loss = cp.full(1, NAN, np.float32)
            nll((grid,), (1024,), (dev(lp), dev(t), loss, np.int32(rows), np.int32(vocab)))
            err = rel_err(loss.get(), [want], atol=1e-30)
            report("nll_mean_f32", f"{rows}x{vocab} grid={grid}", err, err <= 1e-6)
    lp = randn(8, 10)
    loss = cp.full(1, 5.0, np.float32)
    nll((1,), (1024,), (dev(lp), dev(np.full(8, -100, np.int32)), loss, np.int32(8), np.int32(10)))
    report("nll_mean_f32", "all padding -> 0", 0.0, loss.get()[0] == 0.0)
    t = np.arange(8, dtype=np.int32)
    t[5] = 10
    nll((1,), (1024,), (dev(lp), dev(t), loss, np.int32(8), np.int32(10)))
    report("nll_mean_f32", "target >= vocab -> NaN", 0.0, np.isnan(loss.get()[0]))

    scale = np.float32(0.25)
    for rows, vocab in ((1, 1), (3, 3), (5, 2), (7, 5), (33, 31), (7, 1000), (4, 4097), (3, 32000)):
        for offset in (0, 1):
            for grid in (grid_ew(rows * vocab), 3):
                lp = log_softmax_ref(randn(rows, vocab)).astype(np.float32)
                t = RNG.integers(0, vocab, rows).astype(np.int32)
                t[::3] = -100
                if rows > 1:
                    t[1] = vocab  # out of range: matches no column
                want = np.exp(lp.astype(np.float64))
                for r in range(rows):
                    if t[r] < 0:
                        want[r] = 0
                    elif t[r] < vocab:
                        want[r, t[r]] -= 1
                want *= scale
                d = cp.full((rows, vocab), NAN, np.float32)
                ceb((grid,), (256,), (dev(lp, offset), dev(t), d, np.int32(rows), np.int32(vocab), scale))
                err = rel_err(d.get(), want, atol=1e-6)
                report("ce_backward_f32", f"{rows}x{vocab} off={offset} grid={grid}", err, err <= 1e-5)
    lp = log_softmax_ref(randn(6, 4097)).astype(np.float32)
    t = RNG.integers(0, 4097, 6).astype(np.int32)
    want = np.exp(lp.astype(np.float64))
    want[np.arange(6), t] -= 1
    lpd = dev(lp)
    ceb((grid_ew(6 * 4097),), (256,), (lpd, dev(t), lpd, np.int32(6), np.int32(4097), np.float32(1.0)))
    err = rel_err(lpd.get(), want, atol=1e-6)
    report("ce_backward_f32", "in place 6x4097", err, err <= 1e-5)

    for rows, experts, k in ((1, 1, 1), (33, 8, 2), (1000, 64, 4), (4097, 16, 3)):
        probs = RNG.random((rows, experts)).astype(np.float32)
        probs /= probs.sum(axis=1, keepdims=True)
        chosen = RNG.integers(0, experts, (rows, k)).astype(np.int32)  # duplicates on purpose
        want_f = np.array([np.mean([e in chosen[t] for t in range(rows)]) for e in range(experts)])
        want_p = probs.astype(np.float64).mean(axis=0)
        for grid in (experts, 1):
            f = cp.full(experts, NAN, np.float32)
            p = cp.full(experts, NAN, np.float32)
            auxc((grid,), (256,), (dev(probs), dev(chosen), f, p, np.int32(rows), np.int32(experts), np.int32(k)))
            err = max(rel_err(f.get(), want_f, atol=1e-30), rel_err(p.get(), want_p))
            report("aux_counts_f32", f"{rows}x{experts} k={k} grid={grid}", err, err <= 1e-6)
            aux = cp.full(1, NAN, np.float32)
            auxl((1,), (256,), (f, p, aux, np.int32(experts), np.float32(0.01)))
            want = 0.01 * experts * np.dot(f.get().astype(np.float64), p.get().astype(np.float64))
            err = rel_err(aux.get(), [want])
            report("aux_loss_f32", f"{rows}x{experts} k={k} grid={grid}", err, err <= 1e-6)


# ----------------------------------------------------------------------------- optim

def check_optim():
    adamw = kernel("optim", "adamw_f32")
    sumsq = kernel("optim", "sumsq_partial_f32")
    total = kernel("optim", "norm_total_f32")
    clip = kernel("optim", "clip_scale_f32")
    scatter = kernel("optim", "scatter_add_f32")
    lr, b1, b2, eps, wd, step = 1e-3, 0.9, 0.999, 1e-8, 0.01, 7
    ibc1, ibc2 = 1 / (1 - b1 ** step), 1 / (1 - b2 ** step)
    f32 = np.float32
    for n in (1, 31, 33, 1000, 4097, (1 << 20) + 3):
        for offset in (0, 1):
            for grid in (grid_ew(n), 3):
                p, g, m = randn(n), randn(n), randn(n, scale=0.1)
                v = np.abs(randn(n, scale=0.01))
                pd, md, vd = dev(p, offset), dev(m, offset), dev(v, offset)
                adamw((grid,), (256,), (pd, dev(g, offset), md, vd, f32(lr), f32(b1), f32(b2), f32(eps), f32(wd),
                                        f32(ibc1), f32(ibc2), np.int64(n)))
                P, G, M, V = (a.astype(np.float64) for a in (p, g, m, v))
                B1, B2, LR, WD = f32(b1), f32(b2), f32(lr), f32(wd)
                # Errors are measured against the sum of the terms' magnitudes:
                # m and p may cancel to near 0, where relative error means nothing.
                m_scale = B1 * np.abs(M) + (1 - B1) * np.abs(G)
                M = B1 * M + (1 - B1) * G
                V = B2 * V + (1 - B2) * G * G
                upd = (M * f32(ibc1)) / (np.sqrt(V * f32(ibc2)) + f32(eps))
                p_scale = np.abs(P) + LR * (np.abs(upd) + WD * np.abs(P))
                P = P - LR * (upd + WD * P)
                err = max(float(np.max(np.abs(md.get() - M) / m_scale)), rel_err(vd.get(), V),
                          float(np.max(np.abs(pd.get() - P) / p_scale)))
                report("adamw_f32", f"n={n} off={offset} grid={grid}", err, err <= 2e-6)
    for n in (1, 31, 256, 257, 1000, 4097, (1 << 20) + 3):
        for offset in (0, 1):
            g = randn(n)
            parts = -(-n // 256)
            norm = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
            for grid in (parts, -(-n // 2048), 3):
                for c in (norm * 2, norm / 3):
                    gd = dev(g, offset)
                    partial = cp.full(parts, NAN, np.float32)
                    tot = cp.full(1, NAN, np.float32)
                    sumsq((grid,), (256,), (gd, partial, np.int64(n)))
                    want_p = np.add.reduceat(g.astype(np.float64) ** 2, np.arange(0, n, 256))
                    e1 = rel_err(partial.get(), want_p)
                    total((1,), (1024,), (partial, tot, np.int64(parts)))
                    e2 = rel_err(tot.get(), [norm])
                    clip((grid_ew(n),), (256,), (gd, tot, f32(c), np.int64(n)))
                    want_g = g.astype(np.float64) * (f32(c) / tot.get()[0] if tot.get()[0] > f32(c) else 1.0)
                    e3 = rel_err(gd.get(), want_g, atol=1e-6)
                    err = max(e1, e2, e3)
                    report("sumsq/total/clip", f"n={n} off={offset} grid={grid} clip={'hi' if c > norm else 'lo'}",
                           err, e1 <= 1e-5 and e2 <= 1e-6 and e3 <= 1e-6)
    for parts in (1, 5, 4096, 16385, 100003):
        for offset in (0, 1):
            p = np.abs(randn(parts))
            tot = cp.full(1, NAN, np.float32)
            total((1,), (1024,), (dev(p, offset), tot, np.int64(parts)))
            err = rel_err(tot.get(), [math.sqrt(float(np.sum(p.astype(np.float64))))])
            report("norm_total_f32", f"parts={parts} off={offset}", err, err <= 1e-6)
    for num, dim, vocab in ((1, 1, 1), (33, 31, 5), (1000, 257, 40), (300, 1000, 1000), (17, 4096, 3)):
        for grid in ((-(-dim // 256), 1), (1, 1), (-(-dim // 256), 5)):
            go = randn(num, dim)
            idx = RNG.integers(-1, vocab, num).astype(np.int32)
            gw = randn(vocab, dim)
            want = gw.astype(np.float64).copy()
            for i in range(num):
                if idx[i] >= 0:
                    want[idx[i]] += go[i]
            gwd = dev(gw)
            scatter(grid, (256,), (dev(go), dev(idx), gwd, np.int32(num), np.int32(dim)))
            # Bitwise the same as a float32 sum in index order (the CPU backend's order).
            seq = gw.copy()
            for i in range(num):
                if idx[i] >= 0:
                    seq[idx[i]] += go[i]
            err = rel_err(gwd.get(), want, atol=1e-3)
            report("scatter_add_f32", f"num={num} dim={dim} V={vocab} grid={grid}", err,
                   np.array_equal(gwd.get(), seq))


# ----------------------------------------------------------------------------- embedding

def check_embedding():
    emb = kernel("embedding", "embedding_f32")
    embb = kernel("embedding", "embedding_backward_f32")
    i32 = np.int32
    for n_ids, vocab, dim in ((1, 1, 1), (33, 5, 31), (1000, 40, 256), (300, 1000, 1000), (17, 3, 4096),
                              (5000, 7, 12), (70000, 9, 4)):
        table = randn(vocab, dim)
        ids = RNG.integers(-1, vocab + 1, n_ids).astype(np.int32)  # padding and out of range included
        want = np.zeros((n_ids, dim), np.float32)
        for i, v in enumerate(ids):
            if v >= vocab:
                want[i] = NAN
            elif v >= 0:
                want[i] = table[v]
        for offset in (0, 1):
            for grid in (min(n_ids, 65535), 3):
                out = cp.full((n_ids, dim), -7.0, np.float32)
                emb((grid,), (256,), (dev(ids), dev(table, offset), out, i32(n_ids), i32(vocab), i32(dim)))
                got = out.get()
                ok = np.array_equal(got, want, equal_nan=True) and same_bits(got[ids < vocab], want[ids < vocab])
                report("embedding_f32", f"{n_ids} ids {vocab}x{dim} off={offset} grid={grid}", 0.0 if ok else INF, ok)
    # Backward, as the library launches it: one sort pass groups the positions
    # by the id's high bits, then each row is the float32 sum, from 0, in
    # position order (the CPU backend's), so bitwise; ids < 0 and >= vocab
    # skipped, rows no id names zero. Skewed ids fill buckets past a window of
    # 1024 positions, rows past a warp's list of 32 and past 32 in a window
    # (the whole block's), as text's token counts (Zipf) do.
    cases = [(1, 1, 1), (33, 5, 31), (1000, 40, 256), (300, 1000, 1000), (17, 3, 4096), (5000, 7, 12), (70000, 9, 4),
             (4000, 70000, 20), (3000, 2, 64), (20000, 300, 8), (3000, 600000, 4), (30000, 64, 16), (50000, 4096, 36),
             (40000, 32000, 1100)]
    for n_ids, vocab, dim in cases:
        ids = RNG.integers(-1, vocab + 1, n_ids).astype(np.int32)
        if n_ids == 20000:
            ids[RNG.random(n_ids) < 0.7] = 257  # one row named 14000 times, its bucket 15000
        if n_ids in (30000, 50000, 40000):
            ids = (RNG.zipf(1.2, n_ids) - 2).clip(-1, vocab).astype(np.int32)  # padding and out of range kept
        dy = randn(n_ids, dim)
        seq = np.zeros((vocab, dim), np.float32)
        for i, v in enumerate(ids):
            if 0 <= v < vocab:
                seq[v] += dy[i]
        shift = min(max(int(vocab - 1).bit_length() - 8, 0), 11)
        buckets = ((vocab - 1) >> shift) + 1
        rows = min(max((1 << shift) // 8, 16), 256, 1 << shift)
        parts = (1 << shift) // rows
        order, sorted_ids = cp.full(n_ids, -7, i32), cp.full(n_ids, -7, i32)
        offsets = cp.full(buckets + 1, -7, i32)
        sort_pass(dev(ids), order, offsets, n_ids, vocab, shift, buckets, sorted_keys=sorted_ids)
        for grid in (min(buckets * parts, 65535), 3, 1):
            for offset in (0, 1):
                dt = cp.full((vocab, dim), NAN, np.float32)
                embb((grid,), (256,), (sorted_ids, order, offsets, dev(dy, offset), dt, i32(vocab), i32(dim), i32(shift),
                                      i32(buckets), i32(parts)))
                ok = same_bits(dt.get(), seq)
                report("embedding_backward_f32", f"{n_ids} ids {vocab}x{dim} grid={grid} off={offset}", 0.0 if ok else INF, ok)


# ----------------------------------------------------------------------------- KV cache

def check_kv_cache():
    kv = kernel("attention", "kv_cache_write_f32")
    i32 = np.int32
    for batch, new_len, max_seq, heads, hd, pos in ((1, 1, 1, 1, 1, 0), (2, 3, 16, 2, 8, 5), (3, 1, 33, 4, 31, 32),
                                                    (2, 64, 64, 2, 64, 0), (4, 100, 300, 8, 128, 17)):
        row = heads * hd
        n = batch * new_len * row
        kn, vn = randn(batch, new_len, row), randn(batch, new_len, row)
        kc0, vc0 = randn(batch, max_seq, row), randn(batch, max_seq, row)
        want_k, want_v = kc0.copy(), vc0.copy()
        want_k[:, pos:pos + new_len], want_v[:, pos:pos + new_len] = kn, vn
        for offset in (0, 1):
            for grid in (grid_ew(n), 3):
                kc, vc = dev(kc0, offset), dev(vc0, offset)
                kv((grid,), (256,), (dev(kn, offset), dev(vn, offset), kc, vc, i32(batch), i32(new_len), i32(max_seq),
                                     np.int64(row), i32(pos)))
                ok = same_bits(kc.get(), want_k) and same_bits(vc.get(), want_v)
                report("kv_cache_write_f32", f"b={batch} new={new_len} max={max_seq} row={row} pos={pos} "
                       f"off={offset} grid={grid}", 0.0 if ok else INF, ok)
        if new_len == max_seq:  # crossed: k_new is v_cache, v_new is k_cache
            a, b = dev(kn), dev(vn)
            kv((grid_ew(n),), (256,), (a, b, b, a, i32(batch), i32(new_len), i32(max_seq), np.int64(row), i32(pos)))
            ok = same_bits(b.get(), kn) and same_bits(a.get(), vn)
            report("kv_cache_write_f32", f"crossed buffers b={batch} new={new_len} row={row}", 0.0 if ok else INF, ok)


# ----------------------------------------------------------------------------- moe

def cpu_dot32(a, b):
    """The CPU backend's dot product (reduce.rs triple_sum) in float32, bitwise:
    16 lanes per block of 1024, a fixed lane tree, blocks added in double."""
    a, b = np.asarray(a, np.float32).ravel(), np.asarray(b, np.float32).ravel()
    n = a.size
    totals = []
    for b0 in range(0, max(n, 1), 1024):
        acc = np.zeros(16, np.float32)
        blk_a, blk_b = a[b0:b0 + 1024], b[b0:b0 + 1024]
        for m in range(0, blk_a.size, 16):
            p = blk_a[m:m + 16] * blk_b[m:m + 16]
            acc[:p.size] = acc[:p.size] + p
        for w in (8, 4, 2, 1):
            acc[:w] = acc[:w] + acc[w:2 * w]
        totals.append(acc[0])
    if n <= 1024:
        return np.float32(totals[0])
    t = -0.0
    for v in totals:
        t += float(v)
    return np.float32(t)


FEW_SLOTS = 32768  # src/gpu/ops/sort.rs


def sort_pass(keys, order, offsets, n, bound, shift, buckets, grid=None, inv=0, scanned=None, sorted_keys=0):
    """One pass of sort.cu's stable counting sort, launched as the library does
    (grid: fewer blocks than chunks; scanned: force the prefix-sum launch on or off)."""
    i32 = np.int32
    chunks = -(-n // 1024)
    if scanned is None:
        scanned = buckets * chunks > FEW_SLOTS
    counts = cp.full(buckets * chunks + 1, -7, i32)  # every entry written
    args = (i32(n), i32(bound), i32(shift), i32(buckets), i32(chunks))
    blocks = grid or max(1, chunks)
    kernel("sort", "sort_count_i32")((blocks,), (1024,), (keys, counts) + args)
    if scanned:
        kernel("sort", "sort_prefix_sum_i32")((1,), (1024,), (counts, i32(buckets * chunks)))
    kernel("sort", "sort_place_i32")((blocks,), (1024,), (keys, counts, order, sorted_keys, offsets, inv) + args + (i32(scanned),))


def check_sort():
    """A pass orders the items stably by the digit (key >> shift) % buckets
    (numpy's stable argsort), dropping keys outside [0, bound); offsets[d] is
    digit d's first row, the rest of the order stays -1, and sorted_keys holds
    the placed items' keys (the rest untouched)."""
    i32 = np.int32
    for n, bound, shift, buckets, grid in ((1, 1, 0, 256, None), (1000, 300, 1, 150, None), (5000, 70000, 8, 256, 2),
                                           (3000, 2, 0, 2, None), (70000, 1 << 20, 12, 256, None),
                                           (200000, 1 << 16, 0, 1024, 7), (200000, 1 << 16, 8, 256, 7)):
        keys = RNG.integers(-2, bound + 2, n).astype(i32)
        valid = (keys >= 0) & (keys < bound)
        digit = np.where(valid, (keys >> shift) % buckets, -1)
        want = np.array([p for p in np.argsort(digit, kind="stable") if valid[p]], i32)
        want_off = np.concatenate([[0], np.cumsum(np.bincount(digit[valid], minlength=buckets))])
        for scanned in (False, True):
            order, offsets = cp.full(n, -7, i32), cp.full(buckets + 1, -7, i32)  # every entry written
            sorted_keys = cp.full(n, -7, i32)
            sort_pass(dev(keys), order, offsets, n, bound, shift, buckets, grid, scanned=scanned, sorted_keys=sorted_keys)
            got, got_keys = order.get(), sorted_keys.get()
            ok = (np.array_equal(got[:want.size], want) and (got[want.size:] == -1).all()
                  and np.array_equal(offsets.get(), want_off) and np.array_equal(got_keys[:want.size], keys[want])
                  and (got_keys[want.size:] == -7).all())
            report("sort_place_i32", f"n={n} bound={bound} >>{shift} %{buckets} grid={grid} scanned={scanned}", 0.0 if ok else INF, ok)


def check_moe():
    i32, f32 = np.int32, np.float32
    rb = kernel("moe", "moe_router_backward_f32")
    auxb = kernel("moe", "aux_loss_backward_f32")
    scatter = kernel("moe", "moe_scatter_f32")
    rows_of_pairs, gsum = kernel("moe", "moe_rows_of_pairs_i32"), kernel("moe", "moe_gather_sum_f32")

    def group(flat, experts, grid, scanned):
        """The library's grouping of the pairs `flat` by expert: (offsets, order, each pair's row)."""
        off, order, inv = cp.full(experts + 1, -7, i32), cp.full(flat.size, -7, i32), cp.full(flat.size, -7, i32)
        sort_pass(dev(flat), order, off, flat.size, experts, 0, experts, grid, inv, scanned)
        return off, order, inv
    cb = kernel("moe", "moe_combine_backward_f32")
    for tokens, dim, experts, k in ((1, 1, 1, 1), (37, 33, 8, 2), (64, 256, 64, 8), (5, 1030, 300, 4),
                                    (2000, 16, 4, 3), (3, 2100, 2, 2), (1000, 64, 1500, 2), (7, 0, 5, 2),
                                    (5, 70, 64, 40)):
        pairs = tokens * k
        idx = np.stack([RNG.permutation(experts)[:k] for _ in range(tokens)]).astype(np.int32)
        if tokens > 3:
            idx[3] = idx[3][0]  # a token listing one expert k times
        w = np.abs(randn(tokens, k)) + f32(0.01)
        dw = randn(tokens, k)
        case = f"T={tokens} dim={dim} E={experts} k={k}"

        # Router backward: bitwise the CPU's (cpu_dot32 over k, one f32 term per
        # chosen expert, in j order from 0).
        want = np.zeros((tokens, experts), f32)
        for t in range(tokens):
            mean = cpu_dot32(w[t], dw[t])
            for j in range(k):
                want[t, idx[t, j]] = want[t, idx[t, j]] + w[t, j] * (dw[t, j] - mean)
        for grid in (-(-tokens // 16), 1):
            d = cp.full((tokens, experts), NAN, f32)
            rb((grid,), (256,), (dev(w), dev(idx), dev(dw), d, i32(tokens), i32(experts), i32(k)))
            ok = same_bits(d.get(), want)
            report("moe_router_backward_f32", f"{case} grid={grid}", 0.0 if ok else INF, ok)

        # Aux-loss backward: one double product per element, rounded once.
        fc = np.abs(randn(experts))
        factor = 0.37 * f32(0.01).astype(np.float64) * experts / tokens
        d = cp.full((tokens, experts), NAN, f32)
        auxb((grid_ew(tokens * experts),), (256,), (dev(fc), d, i32(tokens), i32(experts),
                                                    np.float64(factor).view(np.int64)))
        ok = same_bits(d.get(), np.broadcast_to((factor * fc.astype(np.float64)).astype(f32), (tokens, experts)))
        report("aux_loss_backward_f32", case, 0.0 if ok else INF, ok)

        # Dispatch: the stable grouping (integers) and the gathered rows.
        flat = idx.ravel()
        want_order = np.argsort(flat, kind="stable").astype(np.int32)
        want_off = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=experts))]).astype(np.int32)
        x = randn(tokens, dim)
        want_y = x[want_order // k] if dim else np.zeros((pairs, 0), f32)
        for grid, scanned in ((max(1, -(-pairs // 1024)), False), (1, False), (max(1, -(-pairs // 1024)), True)):
            off, order, inv = group(flat, experts, grid, scanned)
            y = cp.full((pairs, dim), NAN, f32)
            scatter((max(1, min(-(-tokens // 8), 3)),), (256,),
                    (dev(x), inv, off, y, i32(tokens), i32(dim), i32(k), i32(experts)))
            want_inv = np.empty(pairs, np.int64)
            want_inv[want_order] = np.arange(pairs)
            ok = (np.array_equal(off.get(), want_off) and np.array_equal(order.get(), want_order)
                  and np.array_equal(inv.get(), want_inv) and same_bits(y.get(), want_y))
            report("moe dispatch (chunk counts/chunk order/scatter)", f"{case} grid={grid} scanned={scanned}", 0.0 if ok else INF, ok)

        # Dispatch backward and combine: each pair's row, then float32 sums in
        # j order from 0 per token (bitwise the CPU's).
        rows_of = np.empty(pairs, np.int64)
        rows_of[want_order] = np.arange(pairs)
        inv = cp.full(pairs, -1, i32)
        rows_of_pairs((grid_ew(pairs),), (256,), (dev(want_order), inv, i32(pairs)))
        ok = np.array_equal(inv.get(), rows_of)
        report("moe_rows_of_pairs_i32", case, 0.0 if ok else INF, ok)
        g = randn(pairs, dim)
        for weighted in (False, True):
            want = np.zeros((tokens, dim), f32)
            for t in range(tokens):
                for j in range(k):
                    r = g[rows_of[t * k + j]]
                    want[t] = want[t] + (w[t, j] * r if weighted else r)
            for grid in (-(-tokens // 8), 2):
                out = cp.full((tokens, dim), NAN, f32)
                gsum((grid,), (256,), (dev(g), dev(w) if weighted else NULLPTR, inv, out, i32(tokens), i32(dim), i32(k)))
                ok = same_bits(out.get(), want)
                name = "combine" if weighted else "dispatch backward"
                report("moe_gather_sum_f32", f"{name} {case} grid={grid}", 0.0 if ok else INF, ok)

        # Combine backward: products, and cpu_dot32 per pair.
        dy = randn(tokens, dim)
        want_de = np.empty((pairs, dim), f32)
        want_dw = np.empty(pairs, f32)
        for p in range(pairs):
            pair = want_order[p]
            want_de[p] = w.ravel()[pair] * dy[pair // k]
            want_dw[pair] = cpu_dot32(dy[pair // k], g[p])
        for grid in (-(-tokens // 8), 2):
            de = cp.full((pairs, dim), NAN, f32)
            dwo = cp.full(pairs, NAN, f32)
            cb((grid,), (256,), (dev(dy), dev(g), dev(w), inv, de, dwo, i32(tokens), i32(dim), i32(k)))
            ok = same_bits(de.get(), want_de) and same_bits(dwo.get(), want_dw)
            report("moe_combine_backward_f32", f"{case} grid={grid}", 0.0 if ok else INF, ok)

    # Indices outside [0, n_experts) (device memory, unchecked): no expert; the
    # rows past offsets[n_experts] get order -1 and NaN.
    flat = np.array([0, 9, 1, 0, -3, 1], np.int32)
    x = randn(3, 4)
    for scanned in (False, True):
        off, order, inv = group(flat, 2, 1, scanned)
        y = cp.full((6, 4), 0.0, f32)
        scatter((1,), (256,), (dev(x), inv, off, y, i32(3), i32(4), i32(2), i32(2)))
        got = y.get()
        ok = (np.array_equal(off.get(), [0, 2, 4]) and np.array_equal(order.get(), [0, 3, 2, 5, -1, -1])
              and np.array_equal(inv.get(), [0, -1, 2, 1, -1, 3])
              and same_bits(got[:4], x[[0, 1, 1, 2]]) and bool(np.all(np.isnan(got[4:]))))
        report("moe dispatch (chunk counts/chunk order/scatter)", f"indices out of range scanned={scanned}", 0.0 if ok else INF, ok)
    # Many experts: several windows of digits, the counts summed in place or by the prefix sum.
    experts, tokens, k = 5000, 3000, 2
    flat = RNG.integers(0, experts, tokens * k).astype(np.int32)
    want_off = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=experts))])
    for scanned in (False, True):
        off, order, _ = group(flat, experts, 2, scanned)
        ok = np.array_equal(off.get(), want_off) and np.array_equal(order.get(), np.argsort(flat, kind="stable"))
        report("moe grouping (chunk counts/chunk order)", f"E={experts} pairs={tokens * k} scanned={scanned}", 0.0 if ok else INF, ok)


# ----------------------------------------------------------------------------- decode, gemm

def argmax_ref(x):
    out = []
    for row in x:
        nan = np.flatnonzero(np.isnan(row))
        out.append(nan[0] if nan.size else int(np.argmax(row)))
    return np.array(out)


def check_decode():
    argmax = kernel("decode", "argmax_f32")
    for batch, vocab in ((1, 1), (3, 2), (2, 3), (5, 5), (3, 31), (5, 1000), (4, 4097), (2, 131072), (3, 50257),
                         (2, 300001)):
        for offset in (0, 1):
            x = np.round(randn(batch, vocab, scale=3.0))  # many ties
            x[0, :] = -INF
            if batch > 1:
                x[1, vocab // 2] = NAN
                x[1, -1] = NAN
            if batch > 2:
                x[2, :] = -0.0
                x[2, vocab - 1] = 0.0
            if batch > 3:
                x[3, min(1, vocab - 1)] = NAN  # in the unaligned head
            if batch > 4:
                x[4, -1] = 1e9  # in the tail
            for grid in (batch, 1):
                out = cp.full(batch, -7, np.int32)
                argmax((grid,), (1024,), (dev(x, offset), out, np.int32(batch), np.int32(vocab)))
                ok = np.array_equal(out.get(), argmax_ref(x))
                report("argmax_f32", f"{batch}x{vocab} off={offset} grid={grid}", 0.0 if ok else INF, ok)


def check_gemm():
    gemm = kernel("gemm", "sgemm_tiled_f32")
    for batch, M, N, K in ((1, 1, 1, 1), (1, 33, 31, 17), (1, 64, 64, 64), (2, 65, 129, 100), (3, 7, 200, 300),
                           (1, 300, 5, 1)):
        for beta in (0.0, 0.5):
            A, B = randn(batch, M, K), randn(batch, K, N)
            C = randn(batch, M, N)
            Cin = np.full_like(C, NAN) if beta == 0.0 else C
            alpha = 1.5
            want = alpha * A.astype(np.float64) @ B.astype(np.float64) + beta * Cin.astype(np.float64) \
                if beta else alpha * A.astype(np.float64) @ B.astype(np.float64)
            scale = np.abs(A.astype(np.float64)) @ np.abs(B.astype(np.float64)) * alpha + 1
            for grid in ((-(-N // 64), -(-M // 64), batch), (1, 1, batch)):
                Cd = dev(Cin)
                gemm(grid, (16, 16), (dev(A), dev(B), Cd, np.int32(M), np.int32(N), np.int32(K), np.float32(alpha),
                                      np.float32(beta), np.int64(M * K), np.int64(K * N), np.int64(M * N)))
                err = float(np.max(np.abs(Cd.get() - want) / scale))
                report("sgemm_tiled_f32", f"b={batch} {M}x{N}x{K} beta={beta} grid={grid[:2]}", err,
                       err <= 1e-5 and np.all(np.isfinite(Cd.get())))


def check_gemm_grouped():
    """gemm_grouped_f32: rows grouped (per-group B) and k grouped (per-group C),
    every transpose, partial tiles, empty groups, rows outside every group left
    as they were, offsets out of order (clamped: (150, 20, 200, 180) is groups
    150..150, 20..200 and 200..200), blocks striding over tiles."""
    grouped = kernel("gemm", "gemm_grouped_f32")
    for inner, m, n, k, offsets in ((0, 300, 130, 70, (5, 5, 129, 260, 290)), (1, 140, 129, 300, (0, 100, 100, 299, 300)),
                                    (0, 40, 9, 33, (0, 40)), (0, 200, 64, 32, (150, 20, 200, 180))):
        groups = len(offsets) - 1
        dim = k if inner else m
        clamped = []
        for g in range(groups):  # the kernel's reading of the offsets
            lo = min(max(offsets[g], 0), dim)
            clamped.append((lo, max(lo, min(max(offsets[g + 1], 0), dim))))
        for ta, tb in ((0, 0), (0, 1), (1, 0), (1, 1)):
            A = randn(*((k, m) if ta else (m, k)))
            B = randn(*((1,) if inner else (groups,)), *((n, k) if tb else (k, n)))
            C = randn(groups if inner else 1, m, n)
            opA = A.T.astype(np.float64) if ta else A.astype(np.float64)
            opB = [(b.T if tb else b).astype(np.float64) for b in B]
            # k grouped: an empty group's C is beta C; rows grouped: rows in no group keep C.
            want = C.astype(np.float64) * (0.5 if inner else 1.0)
            scale = np.abs(want) + 1
            for g, (lo, hi) in enumerate(clamped):
                if inner:
                    want[g] = 1.5 * opA[:, lo:hi] @ opB[0][lo:hi] + 0.5 * C[g]
                    scale[g] += 1.5 * np.abs(opA[:, lo:hi]) @ np.abs(opB[0][lo:hi])
                else:
                    want[0, lo:hi] = 1.5 * opA[lo:hi] @ opB[g] + 0.5 * C[0, lo:hi]
                    scale[0, lo:hi] += 1.5 * np.abs(opA[lo:hi]) @ np.abs(opB[g])
            tiles = groups * -(-m // 128) if inner else -(-m // 128) + groups
            for grid_y in (tiles, 1):
                Cd = dev(C)
                grouped((-(-n // 128), grid_y), (256,), (dev(A), dev(B), Cd, dev(np.array(offsets, np.int32)), np.int32(groups),
                        np.int32(inner), np.int32(m), np.int32(n), np.int32(k), np.int32(ta), np.int32(tb),
                        np.int64(A.shape[1]), np.int64(B.shape[2]), np.int64(n), np.int64(0),
                        np.int64(0 if inner else B[0].size), np.int64(m * n if inner else 0), np.float32(1.5), np.float32(0.5)))
                err = float(np.max(np.abs(Cd.get() - want) / scale))
                report("gemm_grouped_f32", f"inner={inner} {m}x{n}x{k} t={ta}{tb} offsets={offsets} grid_y={grid_y}", err, err <= 1e-5)


# ----------------------------------------------------------------------------- rope

def rope_freqs_ref(max_seq, d, base, alpha):
    half = d // 2
    b = float(base) if alpha == 1.0 else float(base) * float(alpha) ** (d / (d - 2.0))
    theta = np.array([b ** (-2.0 * i / d) for i in range(half)])
    return (np.arange(max_seq)[:, None] * theta[None, :]).astype(np.float32)


def rope_ref(x, freqs, seq_len, offset, ntk):
    """x [tokens, heads, d] float32, freqs the table the kernel wrote."""
    tokens, heads, d = x.shape
    half = d // 2
    pos = np.arange(tokens) % seq_len + offset
    a = freqs[pos].astype(np.float64)
    if ntk != 1.0:
        a = (a * np.array([float(ntk) ** (-2.0 * i / (d - 2.0)) for i in range(half)])).astype(np.float32)
        a = a.astype(np.float64)
    c, s = np.cos(a)[:, None, :], np.sin(a)[:, None, :]
    x0, x1 = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    y = np.empty(x.shape)
    y[..., 0::2] = x0 * c - x1 * s
    y[..., 1::2] = x0 * s + x1 * c
    return y, np.abs(x0) + np.abs(x1)


def check_rope():
    freqs_k = kernel("rope", "rope_freqs_f32")
    rot = kernel("rope", "rope_rotate_f32")
    for max_seq, d, base, alpha in ((1, 2, 10000.0, 1.0), (7, 6, 10000.0, 1.0), (4096, 64, 10000.0, 1.0),
                                    (8192, 128, 500000.0, 1.0), (1000, 128, 10000.0, 4.0), (33, 4, 10.0, 0.5)):
        n = max_seq * d // 2
        for grid in (grid_ew(n), 3):
            f = cp.full((max_seq, d // 2), NAN, np.float32)
            freqs_k((grid,), (256,), (f, np.int32(max_seq), np.int32(d), np.float32(base), np.float32(alpha)))
            err = ulp_err(f.get(), rope_freqs_ref(max_seq, d, base, alpha))
            report("rope_freqs_f32", f"{max_seq}x{d} base={base} alpha={alpha} grid={grid}", err, err <= 1)
    table = rope_freqs_ref(4200, 128, 10000.0, 1.0)
    for batch, seq, heads, d, offset, ntk in ((1, 1, 1, 2, 0, 1.0), (2, 7, 3, 6, 0, 1.0), (2, 33, 4, 64, 5, 1.0),
                                              (3, 100, 8, 128, 4000, 1.0), (2, 65, 2, 128, 0, 8.0),
                                              (1, 17, 5, 10, 3, 0.7)):
        half = d // 2
        ft = dev(rope_freqs_ref(4200, d, 10000.0, 1.0))
        tokens = batch * seq
        n = tokens * heads * half
        x = randn(tokens, heads, d, scale=3.0)
        for offset_el in (0, 1):
            for grid in (grid_ew(n), 3):
                xd = dev(x, offset_el)
                y = cp.full((tokens, heads, d), NAN, np.float32)
                rot((grid,), (256,), (xd, ft, y, np.int64(tokens), np.int32(seq), np.int32(heads), np.int32(d),
                                      np.int32(offset), np.float32(ntk)))
                want, mag = rope_ref(x, ft.get(), seq, offset, ntk)
                got = y.get().astype(np.float64)
                err = float(np.max(np.abs(got - want) / np.repeat(mag + 1e-30, 2, axis=-1)))
                report("rope_rotate_f32", f"b={batch} s={seq} h={heads} d={d} off={offset} ntk={ntk} "
                       f"mis={offset_el} grid={grid}", err, err <= 1e-6)
        xd = dev(x, 1)
        rot((grid_ew(n),), (256,), (xd, ft, xd, np.int64(tokens), np.int32(seq), np.int32(heads), np.int32(d),
                                    np.int32(offset), np.float32(ntk)))
        want, mag = rope_ref(x, ft.get(), seq, offset, ntk)
        err = float(np.max(np.abs(xd.get() - want) / np.repeat(mag + 1e-30, 2, axis=-1)))
        report("rope_rotate_f32", f"in place b={batch} s={seq} h={heads} d={d}", err, err <= 1e-6)
        # The backward: the same launch, each pair turned by minus its angle
        # (the reference with negated angles), and undoing the forward.
        back = kernel("rope", "rope_rotate_back_f32")
        for offset_el in (0, 1):
            for grid in (grid_ew(n), 3):
                xd = dev(x, offset_el)
                y = cp.full((tokens, heads, d), NAN, np.float32)
                back((grid,), (256,), (xd, ft, y, np.int64(tokens), np.int32(seq), np.int32(heads), np.int32(d),
                                       np.int32(offset), np.float32(ntk)))
                want, mag = rope_ref(x, -ft.get(), seq, offset, ntk)
                err = float(np.max(np.abs(y.get() - want) / np.repeat(mag + 1e-30, 2, axis=-1)))
                report("rope_rotate_back_f32", f"b={batch} s={seq} h={heads} d={d} off={offset} ntk={ntk} "
                       f"mis={offset_el} grid={grid}", err, err <= 1e-6)
        xd = dev(x)
        args = (np.int64(tokens), np.int32(seq), np.int32(heads), np.int32(d), np.int32(offset), np.float32(ntk))
        rot((grid_ew(n),), (256,), (xd, ft, xd) + args)
        back((grid_ew(n),), (256,), (xd, ft, xd) + args)
        err = float(np.max(np.abs(xd.get() - x) / np.repeat(rope_ref(x, ft.get(), seq, offset, ntk)[1] + 1e-30, 2, axis=-1)))
        report("rope_rotate_back_f32", f"in place, undoes the forward b={batch} s={seq} h={heads} d={d}", err,
               err <= 2e-6)


# ----------------------------------------------------------------------------- attention

FA_BR = lambda d: 64 if d <= 64 else 32 if d <= 128 else 16
# The all-head-dim kernel, and the one for d <= 64 with 16-byte loads: (name, largest d, BR, needs d % 4 == 0
# and aligned pointers).
FA_KERNELS = (("flash_attention_f32", 256, None, False), ("flash_attention_d64_f32", 64, 64, True))


def attn_ref(q, k, v, scale, causal, mask):
    """q [b, s, h, d]; k, v [b, s, kvh, d] -> (out, scale of |terms|) in float64."""
    b, s, h, d = q.shape
    kvh = k.shape[2]
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    if kvh == 1:
        k64, v64 = np.repeat(k64, h, axis=2), np.repeat(v64, h, axis=2)
    sc = np.einsum("bihd,bjhd->bhij", q64, k64) * scale
    if mask is not None:
        sc = sc + mask.astype(np.float64)[None, None]
    if causal:
        sc = np.where(np.tril(np.ones((s, s), bool))[None, None], sc, -np.inf)
    m = np.max(sc, axis=-1, keepdims=True)
    allm = np.isneginf(m)
    e = np.exp(sc - np.where(allm, 0, m))
    w = e / np.where(allm, 1, e.sum(-1, keepdims=True))
    w = np.where(allm, 0, w)
    out = np.einsum("bhij,bjhd->bihd", w, v64)
    mag = np.einsum("bhij,bjhd->bihd", w, np.abs(v64))
    return out, mag


def check_attention():
    scores = kernel("attention", "attention_scores_f32")
    output = kernel("attention", "attention_output_f32")
    i32, f32 = np.int32, np.float32
    for batch, heads, seq, d in ((1, 1, 1, 1), (2, 3, 7, 5), (2, 4, 65, 64), (1, 2, 130, 100), (1, 1, 200, 17)):
        q, k = randn(batch, seq, heads, d), randn(batch, seq, d)
        scale = 1.0 / math.sqrt(d)
        want = np.einsum("bihd,bjd->bhij", q.astype(np.float64), k.astype(np.float64)) * scale
        mag = np.einsum("bihd,bjd->bhij", np.abs(q.astype(np.float64)), np.abs(k.astype(np.float64))) * scale
        tri = np.tril(np.ones((seq, seq), bool))[None, None]
        for grid in ((-(-seq // 64), -(-seq // 64), batch * heads), (1, 1, 1)):
            S = cp.full((batch, heads, seq, seq), NAN, np.float32)
            scores(grid, (16, 16), (dev(q), dev(k), S, i32(batch), i32(heads), i32(seq), i32(d), f32(scale)))
            got = S.get()
            ok_mask = bool(np.all(np.isneginf(got[~np.broadcast_to(tri, got.shape)])))
            err = float(np.max(np.where(tri, np.abs(got - want) / (mag + 1e-30), 0)))
            report("attention_scores_f32", f"b={batch} h={heads} s={seq} d={d} grid={grid}", err,
                   ok_mask and err <= 1e-5)
        w = np.abs(randn(batch, heads, seq, seq))
        w = np.where(tri, w, NAN).astype(np.float32)  # garbage above the diagonal
        w[..., 0, 1:] = INF
        v = randn(batch, seq, d)
        wz = np.where(tri, w, 0).astype(np.float64)
        want = np.einsum("bhij,bjd->bihd", wz, v.astype(np.float64))
        mag = np.einsum("bhij,bjd->bihd", wz, np.abs(v.astype(np.float64)))
        for grid in ((-(-d // 64), -(-seq // 64), batch * heads), (1, 1, 1)):
            O = cp.full((batch, seq, heads, d), NAN, np.float32)
            output(grid, (16, 16), (dev(w), dev(v), O, i32(batch), i32(heads), i32(seq), i32(d)))
            err = float(np.max(np.abs(O.get() - want) / (mag + 1e-30)))
            report("attention_output_f32", f"b={batch} h={heads} s={seq} d={d} grid={grid}", err, err <= 1e-5)

    cases = [  # batch, seq, heads, kv_heads, d, causal, mask kind
        (1, 1, 1, 1, 1, 1, None), (2, 7, 3, 3, 5, 1, None), (2, 65, 4, 4, 64, 1, None), (1, 130, 2, 2, 64, 0, None),
        (2, 63, 3, 1, 64, 1, None), (1, 129, 2, 1, 32, 0, None), (2, 100, 2, 2, 32, 1, None),
        (1, 97, 2, 2, 128, 1, None), (1, 70, 3, 1, 128, 0, None), (1, 33, 2, 2, 80, 1, None),
        (1, 45, 2, 2, 48, 0, None), (1, 50, 2, 1, 256, 1, None), (1, 40, 2, 2, 200, 0, None),
        (1, 19, 2, 2, 33, 1, None), (1, 66, 2, 1, 64, 0, "rand"), (1, 66, 2, 1, 64, 1, "rand"),
        (2, 31, 2, 1, 128, 0, "rows"), (1, 257, 1, 1, 64, 1, None), (1, 300, 2, 2, 16, 0, "rows"),
    ]
    for batch, seq, heads, kvh, d, causal, mk in cases:
        q = randn(batch, seq, heads, d, scale=1.5)
        k = randn(batch, seq, kvh, d, scale=1.5)
        v = randn(batch, seq, kvh, d)
        scale = 1.0 / math.sqrt(d)
        mask = None
        if mk is not None:
            mask = np.where(RNG.random((seq, seq)) < 0.3, -np.inf, 0.0).astype(np.float32)
            if mk == "rows":
                mask[1, :] = -np.inf  # a query with every key masked: zeros
                mask[seq // 2, :] = -np.inf
            mask[:, 0] = np.where(np.arange(seq) % 5 == 0, -np.inf, 0.0)
        want, mag = attn_ref(q, k, v, scale, causal, mask)
        for name, dmax, br, aligned in FA_KERNELS:
            if d > dmax or (aligned and d % 4):
                continue
            flash = kernel("attention", name)
            work = -(-seq // (br or FA_BR(d))) * heads * batch
            for offset in ((0,) if aligned else (0, 1)):
                for grid in (work, 3):
                    O = cp.full((batch, seq, heads, d), NAN, np.float32)
                    mptr = dev(mask, offset) if mask is not None else np.uint64(0)
                    flash((grid,), (64,), (dev(q, offset), dev(k, offset), dev(v, offset), O, i32(batch), i32(seq),
                                           i32(heads), i32(kvh), i32(d), f32(scale), i32(causal), mptr))
                    got = O.get()
                    err = float(np.max(np.abs(got - want) / (mag + 1e-3)))
                    report(name, f"b={batch} s={seq} h={heads} kv={kvh} d={d} c={causal} "
                           f"m={mk} off={offset} grid={grid}", err, err <= 2e-5 and np.all(np.isfinite(got)))
    # The TF32 tensor-core kernel (CUDANN_ALLOW_TF32=1, head_dim 64): products
    # rounded to 10 mantissa bits, so errors of ~1e-3 of the output's scale.
    tf32 = kernel("attention_tf32", "flash_attention_tf32_d64")
    for batch, seq, heads, kvh, causal, mk in ((2, 37, 3, 3, 1, None), (1, 129, 2, 2, 0, None), (2, 63, 3, 1, 1, None),
                                               (1, 66, 2, 1, 1, "rows"), (1, 300, 2, 2, 0, "rows"),
                                               (1, 1000, 4, 4, 1, None), (1, 1, 1, 1, 1, None)):
        q, k, v = randn(batch, seq, heads, 64, scale=1.5), randn(batch, seq, kvh, 64, scale=1.5), randn(batch, seq, kvh, 64)
        mask = None
        if mk is not None:
            mask = np.where(RNG.random((seq, seq)) < 0.3, -np.inf, 0.0).astype(np.float32)
            mask[seq // 2, :] = -np.inf
        want, mag = attn_ref(q, k, v, 0.125, causal, mask)
        work = -(-seq // 64) * heads * batch
        for grid in (work, 3):
            O = cp.full((batch, seq, heads, 64), NAN, np.float32)
            mptr = dev(mask) if mask is not None else np.uint64(0)
            tf32((grid,), (128,), (dev(q), dev(k), dev(v), O, i32(batch), i32(seq), i32(heads), i32(kvh), i32(64),
                                   f32(0.125), i32(causal), mptr))
            got = O.get()
            err = float(np.max(np.abs(got - want) / (mag + 1e-3)))
            zeros = mask is None or bool(np.all(got[:, seq // 2] == 0))
            report("flash_attention_tf32_d64", f"b={batch} s={seq} h={heads} kv={kvh} c={causal} m={mk} grid={grid}",
                   err, err <= 1e-2 and zeros and np.all(np.isfinite(got)))
    # Bitwise determinism; a head dim above a specialised kernel's leaves O alone.
    q, k, v = randn(2, 200, 4, 64), randn(2, 200, 4, 64), randn(2, 200, 4, 64)
    for name in ("flash_attention_f32", "flash_attention_d64_f32"):
        outs = []
        for _ in range(2):
            O = cp.full((2, 200, 4, 64), NAN, np.float32)
            kernel("attention", name)((-(-200 // 64) * 8,), (64,), (dev(q), dev(k), dev(v), O, i32(2), i32(200), i32(4),
                                                                    i32(4), i32(64), f32(0.125), i32(1), np.uint64(0)))
            outs.append(O.get())
        report(name, "determinism", 0.0, np.array_equal(outs[0], outs[1]))
    for what, args in (("d=80 > 64", (dev(randn(2, 200, 4, 80)),) * 3 + (i32(80),)),
                       ("d=62 (d % 4 != 0)", (dev(randn(2, 200, 4, 62)),) * 3 + (i32(62),)),
                       ("misaligned Q", (dev(q, 1), dev(k), dev(v), i32(64)))):
        O = cp.full((2, 200, 4, args[3].item()), 7.0, np.float32)
        kernel("attention", "flash_attention_d64_f32")((32,), (64,), args[:3] + (O, i32(2), i32(200), i32(4), i32(4),
                                                                                 args[3], f32(0.125), i32(1),
                                                                                 np.uint64(0)))
        report("flash_attention_d64_f32", f"{what}: O untouched", 0.0, bool(cp.all(O == 7.0)))


def decode_ref(q, k, v, kv_len, pos0, causal, scale, mask):
    """q [b, ql, h, d]; k, v [b, cap, kvh, d] (grouped-query heads) -> (out, scale of |terms|, lse) in float64."""
    b, ql, h, d = q.shape
    group = h // k.shape[2]
    k64 = np.repeat(k[:, :kv_len].astype(np.float64), group, axis=2)
    v64 = np.repeat(v[:, :kv_len].astype(np.float64), group, axis=2)
    sc = np.einsum("bihd,bjhd->bhij", q.astype(np.float64), k64) * scale
    if mask is not None:
        sc = sc + mask.astype(np.float64)[None, None]
    if causal:
        seen = np.arange(kv_len)[None, :] <= pos0 + np.arange(ql)[:, None]
        sc = np.where(seen[None, None], sc, -np.inf)
    m = np.max(sc, axis=-1, keepdims=True)
    allm = np.isneginf(m)
    e = np.where(allm, 0, np.exp(sc - np.where(allm, 0, m)))
    total = e.sum(-1, keepdims=True)
    w = e / np.where(allm, 1, total)
    lse = np.where(allm, -np.inf, np.log(np.where(allm, 1, total)) + np.where(allm, 0, m))[..., 0]
    return (np.einsum("bhij,bjhd->bihd", w, v64), np.einsum("bhij,bjhd->bihd", w, np.abs(v64)),
            lse.transpose(0, 2, 1))


def check_attention_decode():
    """The split kernels and both combines (the library's split length) against
    float64. The cp.async forms (sm_80+) give the register forms' very bits, and
    the two combines each other's for up to 32 splits."""
    i32, f32 = np.int32, np.float32
    forms = [("attention", "attention_decode_r{R}_d{D}_f32", 0)]
    if cp.cuda.Device().compute_capability >= "80":
        forms.append(("attention_sm80", "attention_decode_async_r{R}_d{D}_f32", 76 * 1024))
    # (batch, q_len, kv_len, kv_cap, heads, kv_heads, d, causal, mask)
    for batch, ql, kv_len, cap, heads, kvh, d, causal, masked in (
            (1, 1, 4096, 4096, 32, 8, 128, 1, False),  # 32 splits of 128
            (3, 1, 3000, 4096, 8, 1, 128, 1, False),   # 8 rows, 47 splits
            (2, 2, 700, 1024, 4, 2, 256, 1, True),     # d 256, two new tokens, a mask
            (1, 1, 5000, 5000, 2, 2, 32, 0, False),    # one row, 79 splits
            (1, 1, 300, 300, 2, 1, 36, 1, False),      # 2 rows, a partial last tile
            (1, 1, 40, 40, 8, 4, 64, 1, False),        # one split: the block writes O
            (1, 1, 4096, 4096, 32, 8, 64, 1, False),   # d 64: tiles of 64 keys
            (2, 3, 2000, 2048, 8, 4, 48, 1, True)):    # 6 rows of d 48, a mask, partial tiles
        rows = ql * heads // kvh
        R, D = 1 << (rows - 1).bit_length(), 64 if d <= 64 else 128 if d <= 128 else 256
        pos0 = kv_len - ql
        kv_end = min(kv_len, pos0 + ql) if causal else kv_len
        want_splits = -(-256 // (batch * kvh))
        split_len = min(1024, max(64, -(-(-(-kv_end // want_splits)) // 32) * 32))
        splits = max(1, -(-kv_end // split_len))
        q, k, v = randn(batch, ql, heads, d), randn(batch, cap, kvh, d), randn(batch, cap, kvh, d)
        mask = RNG.standard_normal((ql, kv_len)).astype(np.float32) if masked else None
        scale = 1.0 / math.sqrt(d)
        want, mag, want_lse = decode_ref(q, k, v, kv_len, pos0, causal, scale, mask)
        case = f"b={batch} q={ql} kv={kv_len}/{cap} h={heads}/{kvh} d={d} splits={splits}"
        combines = ("attention_decode_combine_f32", "attention_decode_combine_many_f32") if splits > 1 else (None,)
        first = {}
        for module, pattern, shared in forms:
            name = pattern.format(R=R, D=D)
            if shared:
                kernel(module, name).max_dynamic_shared_size_bytes = shared
            for grid in (batch * kvh * splits, 7):
                part = cp.full(batch * kvh * splits * R * (d // 4 + 1) * 4, NAN, np.float32)
                mptr = dev(mask) if mask is not None else np.uint64(0)
                for combine in combines:
                    O = cp.full((batch, ql, heads, d), NAN, np.float32)
                    lse = cp.full((batch, ql, heads), NAN, np.float32)
                    kernel(module, name)((grid,), (256,), (dev(q), dev(k), dev(v), O, mptr, lse, i32(batch), i32(ql),
                                                           i32(kv_len), i32(cap), i32(heads), i32(kvh), i32(d), i32(pos0),
                                                           i32(causal), f32(scale), i32(splits), i32(split_len), part),
                                         shared_mem=shared)
                    if combine:
                        kernel("attention", combine)((min(batch * kvh * rows, 65535),), (256,),
                                                     (part, O, lse, i32(batch), i32(ql), i32(heads), i32(kvh), i32(d),
                                                      i32(splits), i32(R)))
                    got, got_lse = O.get(), lse.get()
                    err = float(np.max(np.abs(got - want) / (mag + 1e-3)))
                    lse_err = float(np.max(np.abs(got_lse - want_lse)))
                    ref = first.setdefault(combine if splits > 32 else None, (got, got_lse))
                    same = np.array_equal(got, ref[0]) and np.array_equal(got_lse, ref[1])
                    report(name, f"{case} grid={grid} {combine and combine[len('attention_decode_'):]}", max(err, lse_err),
                           err <= 2e-5 and lse_err <= 1e-5 and same)

# ----------------------------------------------------------------------------- sampling
# A float32 port of the CPU generator (src/cpu/rng.rs, math.rs, decode.rs); every
# operation rounds to float32 as the Rust code does (numpy never fuses).

F32 = np.float32
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(z):
    z = np.asarray(z, np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_key(seed, row):
    with np.errstate(over="ignore"):
        return mix64(np.uint64(seed) ^ mix64(np.uint64(row) + GOLDEN))


def cpu_ln(x):
    x = np.asarray(x, F32)
    bits = x.view(np.int32)
    e = (bits - np.int32(0x3f3504f3)) >> np.int32(23)
    f = (bits - (e << np.int32(23))).view(F32) - F32(1)
    s = f / (F32(2) + f)
    z = s * s
    w = z * z
    r = z * (F32(0.6666666) + w * F32(0.28498787)) + w * (F32(0.40000972) + w * F32(0.24279079))
    h = F32(0.5) * f * f
    ef = e.astype(F32)
    return s * (h + r) + ef * F32(-2.1219444e-4) - h + f + ef * F32(0.6933594)


GROUP_SALT = np.uint64(0xD1B54A32D192ED03)


def cpu_uniform(h):
    return ((h >> np.uint64(41)).astype(np.uint32).astype(F32) + F32(0.5)) * F32(2.0 ** -23)


def cpu_noise(key, vocab):
    """rng.rs: the noise of every token of a row, group by group."""
    j = np.arange(vocab, dtype=np.int64)
    tile, lane, member = j // 1024, j % 32, (j % 1024) // 32
    n = (np.minimum(vocab - tile * 1024, 1024) - lane + 31) // 32
    with np.errstate(over="ignore"):
        h = mix64((np.uint64(key) ^ GROUP_SALT) + (tile * 32 + lane).astype(np.uint64) * GOLDEN)
        e = -cpu_ln(cpu_uniform(mix64(np.uint64(key) + j.astype(np.uint64) * GOLDEN)))
    m = cpu_ln(n.astype(F32)) - cpu_ln(-cpu_ln(cpu_uniform(h)))
    arg = ((h & np.uint64(0xFFFFFF)) * n.astype(np.uint64)) >> np.uint64(24)
    return np.where(member == arg, m, -cpu_ln(cpu_exp(-m) + e)).astype(F32)


def cpu_exp(x):
    x = np.asarray(x, F32)
    x = np.where(x < F32(-170), F32(-170), x)
    x = np.where(x > F32(88.8), F32(88.8), x).astype(F32)
    magic = F32(12582912.0)
    sh = x * F32(1.4426950408889634) + magic
    n = sh - magic
    ni = sh.view(np.int32) - magic.view(np.int32)
    r = x - n * F32(0.6933594) - n * F32(-2.1219444e-4)
    c = [F32(1) / F32(q) for q in (6, 24, 120, 720, 5040)]
    p = F32(1) + r * (F32(1) + r * (F32(0.5) + r * (c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * c[4]))))))
    half = ni >> 1
    pow2 = lambda k: ((k.astype(np.int64) + 127).astype(np.uint32) << np.uint32(23)).view(F32)
    return (p.astype(F32) * pow2(half) * pow2(ni - half)).astype(F32)


def cpu_rank_order(x):
    return np.lexsort((np.arange(x.size), -total_key(x)))


def cpu_nucleus_keep(x, T, top_p):
    """decode.rs nucleus_floor, as a keep mask (None: every token)."""
    finite = x[~np.isnan(x)]
    m = np.max(finite) if finite.size else F32(np.nan)
    p = cpu_exp(((x - m) / F32(T)).astype(F32))
    bits = p.view(np.uint32)
    b = (bits >> 20).astype(np.int64)
    nb = (0x7f7fffff >> 20) + 1
    mass = np.zeros(nb)
    np.add.at(mass, b, p.astype(np.float64))  # exact in any order
    total = np.cumsum(mass)[-1]  # sequential, as Iterator::sum
    target = float(np.float64(F32(top_p)) * total)
    cum = 0.0
    for bb in np.flatnonzero(mass)[::-1]:
        if cum + mass[bb] < target:
            cum += mass[bb]
            continue
        idx = np.flatnonzero(b == bb)
        idx = idx[np.lexsort((idx, -p[idx].astype(np.float64)))]
        run = np.cumsum(np.concatenate([[cum], p[idx].astype(np.float64)]))[1:]  # sequential
        hit = np.flatnonzero(run >= target)
        jf = idx[hit[0]] if hit.size else idx[-1]
        pf = p[jf]
        return (p > pf) | ((p == pf) & (np.arange(x.size) <= jf))
    return None


def cpu_sample_row(x, key, T, kind, param):
    x = np.asarray(x, F32)
    n = x.size
    s = (x / F32(T)).astype(F32) + cpu_noise(key, n)
    if kind == "topk" and param < n:
        kept = cpu_rank_order(x)[:param]
        best_s, best_j = -np.inf, int(kept[0])
        ks = s[kept]
        ok = ~np.isnan(ks)
        if ok.any():
            mx = ks[ok].max()
            if mx > best_s:
                best_j = int(kept[ok & (ks == mx)].min())
            elif mx == best_s:
                best_j = int(min(best_j, kept[ok & (ks == mx)].min()))
        return best_j
    keep = np.ones(n, bool)
    if kind == "topp" and param < 1.0:
        k2 = cpu_nucleus_keep(x, T, param)
        if k2 is not None:
            keep = k2
    ok = keep & (s > -np.inf)
    if not ok.any():
        return 0
    mx = s[ok].max()
    return int(np.flatnonzero(ok & (s == mx))[0])


def cpu_sample(x, seeds, T, kind, param):
    return np.array([cpu_sample_row(x[r], row_key(int(seeds[r]), r), T, kind, param) for r in range(x.shape[0])],
                    np.int64)


def cpu_library():
    """The CPU backend itself, when a build of it sits in .device/ (host pointers run on the CPU)."""
    import ctypes
    path = os.path.join(ROOT, ".device", "libcudann.so")
    if not os.path.exists(path):
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    V, I, Fl = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.cuda_sample.argtypes = [V, V, V, I, I, Fl, V]
    lib.cuda_topk_sample.argtypes = [V, V, V, I, I, I, Fl, V]
    lib.cuda_topp_sample.argtypes = [V, V, V, I, I, Fl, Fl, V]

    def run(kind, x, seeds, T, param):
        x = np.ascontiguousarray(x, F32)
        seeds = np.ascontiguousarray(seeds, np.uint64)
        out = np.zeros(x.shape[0], np.int32)
        args = (x.ctypes.data, out.ctypes.data, seeds.ctypes.data, x.shape[0], x.shape[1])
        if kind == "all":
            rc = lib.cuda_sample(*args, T, None)
        elif kind == "topk":
            rc = lib.cuda_topk_sample(*args, param, T, None)
        else:
            rc = lib.cuda_topp_sample(*args, param, T, None)
        return out.astype(np.int64) if rc == 0 else None
    return run


def gpu_sample(kind, x, seeds, T, param, grid=None, cluster=False):
    batch, vocab = x.shape
    out = cp.full(batch, -7, np.int32)
    xd, sd = (x if isinstance(x, cp.ndarray) else dev(x)), cp.asarray(seeds, np.uint64)
    g = (batch if grid is None else grid,)
    if cluster:  # clusters of 4 blocks per row (sm_90+)
        p = np.int32(param) if kind == "topk" else np.float32(param)
        kernel("sample_cluster", kind + "_cluster_f32")((4 * g[0],), (1024,), (xd, out, sd, np.int32(batch), np.int32(vocab),
                                                                             p, np.float32(T)))
    elif kind == "all":
        kernel("sample", "sample_f32")(g, (1024,), (xd, out, sd, np.int32(batch), np.int32(vocab), np.float32(T)))
    elif kind == "topk":
        kernel("sample", "topk_sample_f32")(g, (1024,), (xd, out, sd, np.int32(batch), np.int32(vocab),
                                                         np.int32(param), np.float32(T)))
    else:
        kernel("sample", "topp_sample_f32")(g, (1024,), (xd, out, sd, np.int32(batch), np.int32(vocab),
                                                         np.float32(param), np.float32(T)))
    return out.get().astype(np.int64)


def sample_rows(rows, vocab, style):
    """Logits of one style: normal at scales 1..10, integer ties, -inf holes,
    constant rows, sorted rows, one peaked token."""
    x = randn(rows, vocab) * RNG.choice([1.0, 3.0, 10.0], (rows, 1)).astype(F32)
    if style == "ties":
        x = np.round(x * 0.5).astype(F32)
    elif style == "holes":
        x[RNG.random(x.shape) < 0.3] = -INF
    elif style == "flat":
        x[:] = F32(0.25)
    elif style == "sorted":
        x = np.sort(x, axis=1)
    elif style == "peaked":
        x[np.arange(rows), RNG.integers(0, vocab, rows)] += F32(12)
    return x.astype(F32)


def chi2_crit(dof, z=3.09):  # upper 0.1% point, Wilson-Hilferty
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def check_sample():
    lib = cpu_library()
    print(f"{'sampling reference':<22} {'numpy port' + (' + CPU library (.device/libcudann.so)' if lib else ''):<44}")
    T_list = (1.0, 0.7, 0.5, 2.0, 1.3)
    for name, kind, params in (("sample_f32", "all", (None,)), ("topk_sample_f32", "topk", (1, 5, 50, 900, 1500)),
                               ("topp_sample_f32", "topp", (0.9, 0.5, 0.99, 0.05)),
                               ("topk_cluster_f32", "topk", (1, 5, 50, 900, 1500, 3)),
                               ("topp_cluster_f32", "topp", (0.9, 0.5, 0.99, 0.05, 0.95, 0.8, 0.2))):
        cluster = name.endswith("cluster_f32")
        agree = total = lib_agree = lib_total = 0
        bad_member = 0
        cases = []
        for style in ("normal", "ties", "holes", "peaked", "flat", "sorted"):
            for vocab in (1000, 4097, 20000):
                cases.append((style, vocab, 150 if vocab < 20000 else 24))
        cases += [("normal", 131072, 4), ("peaked", 131072, 4), ("normal", 262144, 2), ("normal", 7, 50),
                  ("ties", 2, 50), ("normal", 1, 5)]
        for ci, (style, vocab, rows) in enumerate(cases):
            param = params[ci % len(params)]
            if kind == "topk" and param >= vocab:
                param = max(1, vocab - 1)
            if kind == "topk" and vocab == 1:
                continue
            T = T_list[ci % len(T_list)]
            x = sample_rows(rows, vocab, style)
            seeds = RNG.integers(0, 2**63, rows, dtype=np.uint64)
            got = gpu_sample(kind, x, seeds, T, param, grid=3 if ci % 4 == 0 else None, cluster=cluster)
            want = cpu_sample(x, seeds, T, kind, param)
            agree += int(np.sum(got == want))
            total += rows
            if lib is not None and vocab >= 2:
                ref = lib(kind, x, seeds, T, param if param is not None else 0)
                if ref is not None:
                    lib_agree += int(np.sum(ref == want))
                    lib_total += rows
            for r in range(rows):
                outside = not (0 <= got[r] < vocab)
                if not outside and kind == "topk" and param < vocab:
                    outside = got[r] not in set(cpu_rank_order(x[r])[:param].tolist())
                elif not outside and kind == "topp":
                    keep = cpu_nucleus_keep(x[r], T, param)
                    outside = keep is not None and not keep[got[r]]
                if outside:
                    bad_member += 1
                    shown = np.array2string(x[r][:16], precision=9)
                    print(f"   {name} {style} vocab={vocab} param={param} T={T} row {r}: token {got[r]} outside the kept set; "
                          f"CPU {want[r]}, seed {seeds[r]}, logits {shown}{' ...' if vocab > 16 else ''}")
            if np.any(got != want):
                print(f"   {name} {style} vocab={vocab} param={param} T={T}: {int(np.sum(got != want))} of {rows} differ")
        if kind == "topp":
            # -0 and +0 give the same p: the nucleus at top_p 0.5 is the first of them alone.
            x = np.tile(np.array([-0.0, 0.0, -0.0, 0.0], F32), (64, 1))
            seeds = RNG.integers(0, 2**63, 64, dtype=np.uint64)
            got = gpu_sample(kind, x, seeds, 1.0, 0.2, cluster=cluster)
            report(name, "signed zeros: the first token", float(np.sum(got != 0)), bool(np.all(got == 0)))
        rate = agree / total
        report(name, f"agreement with CPU draws ({total} rows)", 1 - rate, rate >= 0.999)
        report(name, "token inside the kept set", float(bad_member), bad_member == 0)
        if lib is not None:
            report(name, f"numpy port vs CPU library ({lib_total} rows)", 1 - lib_agree / max(lib_total, 1),
                   lib_agree == lib_total)
        # Frequencies of one row over many seeds against the kept softmax.
        x = np.array([2.0, 1.5, 1.5, 0.2, -1.0, 3.0, 0.0, -INF, 2.5, 1.0, -0.5, 0.7], F32)
        T, n = 0.8, 60000
        param = {"all": None, "topk": 5, "topp": 0.8}[kind]
        keep = np.ones(x.size, bool)
        if kind == "topk":
            keep[:] = False
            keep[cpu_rank_order(x)[:param]] = True
        if kind == "topp":
            keep = cpu_nucleus_keep(x, T, param)
        e = np.where(keep, np.exp((x.astype(np.float64) - x.max()) / T), 0.0)
        prob = e / e.sum()
        got = gpu_sample(kind, np.tile(x, (n, 1)), np.arange(n, dtype=np.uint64) * 7919 + 3, T, param, cluster=cluster)
        counts = np.bincount(got, minlength=x.size).astype(np.float64)
        pos = prob > 0
        chi2 = float(np.sum((counts[pos] - n * prob[pos]) ** 2 / (n * prob[pos])))
        crit = chi2_crit(int(pos.sum()) - 1)
        report(name, f"chi2 over {n} seeds (crit {crit:.1f})", chi2, chi2 <= crit and counts[~pos].sum() == 0)
    # The cluster kernel (sm_90+: a few long rows, a cluster of 4 blocks each) draws as sample_f32.
    clus = kernel("sample_cluster", "sample_cluster_f32")
    for rows, vocab, grid in ((1, 131072, 4), (3, 5000, 12), (9, 70000, 8), (2, 1025, 8), (1, 1, 4)):
        x = sample_rows(rows, vocab, "normal")
        seeds = RNG.integers(0, 2**63, rows, dtype=np.uint64)
        out = cp.full(rows, -7, np.int32)
        clus((grid,), (1024,), (dev(x), out, cp.asarray(seeds), np.int32(rows), np.int32(vocab), np.float32(0.8)))
        want = cpu_sample(x, seeds, 0.8, "all", None)
        report("sample_cluster_f32", f"{rows}x{vocab} grid={grid}: same tokens as the CPU", float(np.sum(out.get() != want)),
               np.array_equal(out.get(), want))
    # Same seeds, same tokens; a row's token does not depend on the batch around it.
    x = sample_rows(64, 5000, "normal")
    seeds = RNG.integers(0, 2**63, 64, dtype=np.uint64)
    for kind, param in (("all", None), ("topk", 40), ("topp", 0.9)):
        a = gpu_sample(kind, x, seeds, 0.9, param)
        b = gpu_sample(kind, x, seeds, 0.9, param, grid=5)
        report(kind + " determinism", "grid 64 vs 5", 0.0, np.array_equal(a, b))


# ----------------------------------------------------------------------------- > 2^31 elements

def free_pool():
    cp.get_default_memory_pool().free_all_blocks()


def check_large():
    """Buffers past 2^31 elements (64-bit index math), verified on the device."""
    free = cp.cuda.Device().mem_info[0]
    if free < 48 << 30:
        print(f"{'large (> 2^31 elements)':<22} {'SKIPPED: needs 48 GiB free GPU memory':<44}")
        return
    f32, i32, i64 = np.float32, np.int32, np.int64
    n = (1 << 31) + 7
    x = cp.ones(n, f32)
    kernel("elementwise", "scale_f32")((grid_ew(n),), (256,), (x, x, f32(3.0), i64(n)))
    report("scale_f32", "n=2^31+7 in place", 0.0, bool(cp.all(x == 3.0)))
    parts = -(-n // 256)
    partial, tot = cp.full(parts, NAN, f32), cp.full(1, NAN, f32)
    kernel("optim", "sumsq_partial_f32")((-(-n // 2048),), (256,), (x, partial, i64(n)))
    kernel("optim", "norm_total_f32")((1,), (1024,), (partial, tot, i64(parts)))
    kernel("optim", "clip_scale_f32")((grid_ew(n),), (256,), (x, tot, f32(1.0), i64(n)))
    want = math.sqrt(9.0 * n)
    ok = bool(cp.all(partial[:-1] == 2304.0)) and float(partial[-1]) == 63.0 and abs(float(tot[0]) - want) <= 1e-6 * want
    got = x[-3:].get()
    report("sumsq/total/clip", "n=2^31+7", rel_err(tot.get(), [want]),
           ok and bool(np.allclose(got, 3.0 / float(tot[0]), rtol=1e-6)))
    del x, partial
    free_pool()

    rows, cols = 65537, 32768  # rows * cols = 2^31 + 2^15
    x = cp.tile(cp.arange(cols, dtype=f32) % 7, rows).reshape(rows, cols)
    kernel("softmax", "softmax_f32")((rows,), (1024,), (x, x, i32(rows), i32(cols)))
    want = softmax_ref((np.arange(cols) % 7)[None, :].astype(np.float32))[0]
    first, last = x[0].get(), x[-1].get()
    err = max(rel_err(first, want), rel_err(last, want))
    report("softmax_f32", f"{rows}x{cols} in place", err, err <= 2e-5 and bool(cp.all(x == x[0])))
    x.fill(-10.0)
    t = cp.asarray(RNG.integers(0, cols, rows).astype(np.int32))
    kernel("loss", "ce_backward_f32")((grid_ew(rows * cols),), (256,),
                                      (x, t, x, i32(rows), i32(cols), f32(0.5)))
    e = np.float32(np.exp(np.float32(-10.0))) * np.float32(0.5)
    hot = x[cp.arange(rows), t]
    x[cp.arange(rows), t] = e
    ok = bool(cp.all(cp.abs(x - e) <= 1e-6 * e)) and bool(cp.all(cp.abs(hot - (e - 0.5)) <= 1e-6))
    report("ce_backward_f32", f"{rows}x{cols} in place", 0.0, ok)
    x.fill(0.0)
    pos = cp.asarray((np.arange(rows) * 31) % cols)
    x[cp.arange(rows), pos] = 1.0
    out = cp.full(rows, -1, i32)
    kernel("decode", "argmax_f32")((rows,), (1024,), (x, out, i32(rows), i32(cols)))
    report("argmax_f32", f"{rows}x{cols}", 0.0, bool(cp.all(out == pos)))
    x.fill(2.0)
    w = cp.full(cols, 0.5, f32)
    kernel("norm", "rmsnorm_f32")((rows,), (1024,), (x, w, x, i32(rows), i32(cols), f32(0.0)))
    report("rmsnorm_f32", f"{rows}x{cols} in place (looped)", 0.0, bool(cp.all(x == 0.5)))
    del x, hot
    free_pool()

    num, dim, vocab = 64, 4096, 600000  # gw has 2.46e9 elements
    gw = cp.zeros((vocab, dim), f32)
    idx = cp.asarray(RNG.integers(vocab - 1000, vocab, num).astype(np.int32))
    go = cp.asarray(randn(num, dim))
    kernel("optim", "scatter_add_f32")((dim // 256, 8), (256,), (go, idx, gw, i32(num), i32(dim)))
    want = np.zeros((1000, dim))
    np.add.at(want, idx.get() - (vocab - 1000), go.get().astype(np.float64))
    err = rel_err(gw[vocab - 1000:].get(), want, atol=1e-3)
    report("scatter_add_f32", f"rows past 2^31 elements", err, err <= 1e-5 and float(cp.abs(gw[: vocab - 1000]).max()) == 0)
    del gw
    free_pool()

    M = N = 46341  # M * N > 2^31
    A, B = cp.asarray(randn(M, 1)), cp.asarray(randn(1, N))
    C = cp.full((M, N), NAN, f32)
    kernel("gemm", "sgemm_tiled_f32")((-(-N // 64), -(-M // 64), 1), (16, 16),
                                      (A, B, C, i32(M), i32(N), i32(1), f32(1.0), f32(0.0), i64(0), i64(0), i64(0)))
    ok = bool(cp.all(C == A * B))
    report("sgemm_tiled_f32", f"{M}x{N}x1", 0.0, ok)
    del C
    free_pool()


def main():
    os.chdir(ROOT)
    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    only = sys.argv[1:]  # optional: names of the checks to run, e.g. "rope attention sample"
    for check in (check_elementwise, check_softmax, check_norm, check_loss, check_optim, check_sort, check_embedding,
                  check_decode, check_gemm, check_gemm_grouped, check_rope, check_attention, check_attention_decode, check_kv_cache, check_moe, check_sample,
                  check_large):
        if only and check.__name__[len("check_"):] not in only:
            continue
        check()
    cp.cuda.Device().synchronize()
    if FAILED:
        print(f"\n{len(FAILED)} FAILED:\n  " + "\n  ".join(FAILED))
        return 1
    print("\nall kernels OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
