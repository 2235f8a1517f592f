"""softmax, softmax_topk, rmsnorm, rmsnorm_residual."""
import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_close, assert_ulp, poisoned

SHAPES = [(1, 1), (3, 31), (5, 33), (7, 1000), (2, 4097)]


@pytest.mark.parametrize("rows,cols", SHAPES)
def test_softmax(rng, rows, cols):
    x = (rng.standard_normal((rows, cols)) * 5).astype(np.float32)
    x[0] += 1e4  # large inputs: only stable if the row max is subtracted
    out = poisoned((rows, cols))
    cudann.softmax(x, out=out)
    assert_close(out, ref.softmax(x), rtol=1e-5, atol=1e-30)
    assert_close(out.sum(axis=1), np.ones(rows), rtol=1e-5)


def test_softmax_neg_inf_entries_and_rows():
    x = np.array([[0.0, -np.inf, 1.0, -np.inf],
                  [-np.inf] * 4,
                  [3.0, 3.0, 3.0, 3.0]], np.float32)
    out = cudann.softmax(x)
    e = np.exp(1.0)
    assert_close(out, [[1 / (1 + e), 0, e / (1 + e), 0], [0, 0, 0, 0], [0.25] * 4], rtol=1e-6)
    assert not np.isnan(out).any()


def test_softmax_in_place(rng):
    x = rng.standard_normal((4, 33)).astype(np.float32)
    want = ref.softmax(x)
    cudann.softmax(x, out=x)
    assert_close(x, want, rtol=1e-5)


def _topk_reference(x, k):
    p = ref.softmax(x)
    cols = x.shape[1]
    idx = np.array([np.lexsort((np.arange(cols), -row))[:k] for row in p])
    w = np.take_along_axis(p, idx, axis=1)
    return idx, w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("rows,cols,k", [(1, 1, 1), (3, 31, 1), (5, 33, 4), (2, 1000, 8), (2, 4097, 33), (4, 8, 8)])
def test_softmax_topk(rng, rows, cols, k):
    # Distinct logits at least 0.01 apart, so float32 rounding cannot reorder them.
    x = np.stack([rng.permutation(cols) * 0.01 for _ in range(rows)]).astype(np.float32)
    w, idx = poisoned((rows, k)), poisoned((rows, k), np.int32)
    cudann.softmax_topk(x, k, weights=w, indices=idx)
    want_idx, want_w = _topk_reference(x, k)
    np.testing.assert_array_equal(idx, want_idx)
    assert_close(w, want_w, rtol=1e-5)


def test_softmax_topk_ties_take_lower_index():
    x = np.array([[1.0, 5.0, 2.0, 5.0, 2.0, 0.0]], np.float32)
    w, idx = cudann.softmax_topk(x, 4)
    assert w.dtype == np.float32 and idx.dtype == np.int32
    np.testing.assert_array_equal(idx, [[1, 3, 2, 4]])
    e = np.exp([5.0, 5.0, 2.0, 2.0])
    assert_close(w, [e / e.sum()], rtol=1e-6)


@pytest.mark.parametrize("rows,dim", SHAPES)
def test_rmsnorm(rng, rows, dim):
    x = (rng.standard_normal((rows, dim)) * 3).astype(np.float32)
    w = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    out = poisoned((rows, dim))
    cudann.rmsnorm(x, w, eps=np.float32(1e-5), out=out)
    assert_close(out, ref.rmsnorm(x, w, float(np.float32(1e-5))), rtol=1e-5)


def test_rmsnorm_zero_row_and_in_place(rng):
    x = rng.standard_normal((3, 33)).astype(np.float32)
    x[1] = 0.0  # eps keeps a zero row finite: it normalises to zeros
    w = rng.uniform(0.5, 1.5, 33).astype(np.float32)
    want = ref.rmsnorm(x, w, 1e-6)
    cudann.rmsnorm(x, w, 1e-6, out=x)
    assert_close(x, want, rtol=1e-5, atol=1e-30)
    assert (x[1] == 0).all()


@pytest.mark.parametrize("rows,dim", SHAPES)
def test_rmsnorm_residual(rng, rows, dim):
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    r = rng.standard_normal((rows, dim)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    out, res_out = cudann.rmsnorm_residual(x, r, w, eps=1e-5)
    s = ref.f64(x) + ref.f64(r)
    assert_ulp(res_out, s, max_ulp=0.5)
    assert_close(out, ref.rmsnorm(res_out, w, float(np.float32(1e-5))), rtol=1e-5)


def test_rmsnorm_residual_in_place(rng):
    x = rng.standard_normal((4, 31)).astype(np.float32)
    r = rng.standard_normal((4, 31)).astype(np.float32)
    w = np.ones(31, np.float32)
    s = (x + r).astype(np.float32)
    want = ref.rmsnorm(s, w, 1e-5)
    # output := input and residual_out := residual, as a transformer block does.
    cudann.rmsnorm_residual(x, r, w, 1e-5, out=x, residual_out=r)
    np.testing.assert_array_equal(r, s)
    assert_close(x, want, rtol=1e-5)


def test_rmsnorm_over_leading_axes(rng):
    x = rng.standard_normal((2, 3, 5, 16)).astype(np.float32)  # rows = 2 * 3 * 5
    w = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    assert_close(cudann.rmsnorm(x, w, eps=1e-5), ref.rmsnorm(x, w, float(np.float32(1e-5))), rtol=1e-5)
