"""gemm and gemm_batched: row-major C = alpha A B + beta C."""
import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_close


def _mats(rng, *shape_list):
    return [rng.standard_normal(s).astype(np.float32) for s in shape_list]


def _check(c, a, b, c0, alpha, beta):
    want = alpha * (ref.f64(a) @ ref.f64(b)) + beta * ref.f64(c0)
    # Error bound scaled by |alpha| |A| |B| + |beta| |C|, so cancellation is not punished.
    bound = abs(alpha) * (np.abs(ref.f64(a)) @ np.abs(ref.f64(b))) + abs(beta) * np.abs(c0)
    assert_close(c, want, rtol=1e-5, scale=bound, atol=1e-30)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (31, 33, 1), (33, 31, 1000), (4097, 3, 5),
                                   (2, 4097, 31), (64, 64, 64), (1, 1000, 4097)])
def test_gemm(rng, m, n, k):
    a, b, c = _mats(rng, (m, k), (k, n), (m, n))
    c0 = c.copy()
    cudann.gemm(a, b, out=c, alpha=np.float32(0.75), beta=np.float32(-1.25))
    _check(c, a, b, c0, 0.75, -1.25)


def test_gemm_allocates_and_beta_zero_does_not_read_c(rng):
    a, b = _mats(rng, (31, 17), (17, 33))
    _check(cudann.gemm(a, b), a, b, np.zeros((31, 33)), 1.0, 0.0)
    c = np.full((31, 33), np.nan, np.float32)
    cudann.gemm(a, b, out=c, beta=0.0)
    _check(c, a, b, np.zeros((31, 33)), 1.0, 0.0)


def test_gemm_k_zero_scales_c(rng):
    c = rng.standard_normal((3, 5)).astype(np.float32)
    c0 = c.copy()
    # K == 0: A B is the zero matrix.
    cudann.gemm(np.zeros((3, 0), np.float32), np.zeros((0, 5), np.float32), out=c, alpha=2.0, beta=0.5)
    assert_close(c, 0.5 * ref.f64(c0), rtol=1e-7)


@pytest.mark.parametrize("batch,m,n,k", [(1, 1, 1, 1), (3, 31, 33, 17), (5, 8, 1, 1000), (33, 4, 4, 4)])
def test_gemm_batched(rng, batch, m, n, k):
    a, b, c = _mats(rng, (batch, m, k), (batch, k, n), (batch, m, n))
    c0 = c.copy()
    cudann.gemm_batched(a, b, out=c, alpha=-2.0, beta=0.5)
    _check(c, a, b, c0, -2.0, 0.5)  # numpy's @ broadcasts over the batch axis


def test_gemm_batched_beta_zero_ignores_nan(rng):
    a, b = _mats(rng, (4, 5, 6), (4, 6, 7))
    c = np.full((4, 5, 7), np.nan, np.float32)
    cudann.gemm_batched(a, b, out=c)
    _check(c, a, b, np.zeros((4, 5, 7)), 1.0, 0.0)


def _grouped_ref(a, b, offsets, inner, trans_a, trans_b, alpha, beta, c0):
    """cudann.gemm_grouped in float64 (b per group when rows are grouped)."""
    opa = ref.f64(a).T if trans_a else ref.f64(a)
    want = ref.f64(c0).copy()
    for g in range(len(offsets) - 1):
        lo, hi = int(offsets[g]), int(offsets[g + 1])
        if inner:
            opb = ref.f64(b).T if trans_b else ref.f64(b)
            want[g] = alpha * (opa[:, lo:hi] @ opb[lo:hi]) + beta * want[g]
        else:
            opb = ref.f64(b[g]).T if trans_b else ref.f64(b[g])
            want[lo:hi] = alpha * (opa[lo:hi] @ opb) + beta * want[lo:hi]
    return want


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("inner", [False, True])
def test_gemm_grouped(rng, inner, trans_a, trans_b):
    m, n, k = 37, 21, 45
    groups = 4
    dim = k if inner else m
    # Empty groups, and (rows grouped) rows before the first and after the last left alone.
    offsets = np.array([0, 0, 11, dim - 3, dim - 3] if inner else [2, 2, 11, 30, 34], np.int32)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b_shape = (n, k) if trans_b else (k, n)
    b = rng.standard_normal(b_shape if inner else (groups,) + b_shape).astype(np.float32)
    c = rng.standard_normal((groups, m, n) if inner else (m, n)).astype(np.float32)
    c0 = c.copy()
    got = cudann.gemm_grouped(a, b, offsets, out=c, group_inner=inner, trans_a=trans_a, trans_b=trans_b,
                              alpha=0.5, beta=-1.5)
    assert got is c
    want = _grouped_ref(a, b, offsets, inner, trans_a, trans_b, 0.5, -1.5, c0)
    assert_close(c, want, rtol=1e-5, atol=1e-5 * k)
    fresh = cudann.gemm_grouped(a, b, offsets, group_inner=inner, trans_a=trans_a, trans_b=trans_b)
    want0 = _grouped_ref(a, b, offsets, inner, trans_a, trans_b, 1.0, 0.0, np.zeros_like(c0))
    covered = slice(None) if inner else slice(2, 34)
    assert_close(fresh[covered], want0[covered], rtol=1e-5, atol=1e-5 * k)


def test_gemm_grouped_errors(rng):
    a, b = np.ones((8, 4), np.float32), np.ones((2, 4, 3), np.float32)
    with pytest.raises(cudann.CudannError, match="offsets may not decrease"):
        cudann.gemm_grouped(a, b, np.array([0, 5, 4], np.int32))
    with pytest.raises(cudann.CudannError, match=r"outside \[0, m = 8\]"):
        cudann.gemm_grouped(a, b, np.array([0, 5, 9], np.int32))
    with pytest.raises(ValueError, match="b holds 2 matrices, but offsets gives 3 groups"):
        cudann.gemm_grouped(a, b, np.array([0, 1, 2, 8], np.int32))
    with pytest.raises(TypeError, match="offsets must be int32"):
        cudann.gemm_grouped(a, b, np.array([0, 4, 8], np.int64))
