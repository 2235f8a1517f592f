"""cuda_softmax, cuda_softmax_topk, cuda_rmsnorm, cuda_rmsnorm_residual."""
import numpy as np
import pytest

import reference as ref
from checks import assert_close, assert_ulp, poisoned

SHAPES = [(1, 1), (3, 31), (5, 33), (7, 1000), (2, 4097)]


@pytest.mark.parametrize("rows,cols", SHAPES)
def test_softmax(lib, rng, rows, cols):
    x = (rng.standard_normal((rows, cols)) * 5).astype(np.float32)
    x[0] += 1e4  # large inputs: only stable if the row max is subtracted
    out = poisoned((rows, cols))
    assert lib.cuda_softmax(x, out, rows, cols, None) == 0
    assert_close(out, ref.softmax(x), rtol=1e-5, atol=1e-30)
    assert_close(out.sum(axis=1), np.ones(rows), rtol=1e-5)


def test_softmax_neg_inf_entries_and_rows(lib):
    x = np.array([[0.0, -np.inf, 1.0, -np.inf],
                  [-np.inf] * 4,
                  [3.0, 3.0, 3.0, 3.0]], np.float32)
    out = poisoned(x.shape)
    assert lib.cuda_softmax(x, out, 3, 4, None) == 0
    e = np.exp(1.0)
    assert_close(out, [[1 / (1 + e), 0, e / (1 + e), 0], [0, 0, 0, 0], [0.25] * 4], rtol=1e-6)
    assert not np.isnan(out).any()


def test_softmax_in_place(lib, rng):
    x = rng.standard_normal((4, 33)).astype(np.float32)
    want = ref.softmax(x)
    assert lib.cuda_softmax(x, x, 4, 33, None) == 0
    assert_close(x, want, rtol=1e-5)


def _topk_reference(x, k):
    p = ref.softmax(x)
    cols = x.shape[1]
    idx = np.array([np.lexsort((np.arange(cols), -row))[:k] for row in p])
    w = np.take_along_axis(p, idx, axis=1)
    return idx, w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("rows,cols,k", [(1, 1, 1), (3, 31, 1), (5, 33, 4), (2, 1000, 8), (2, 4097, 33), (4, 8, 8)])
def test_softmax_topk(lib, rng, rows, cols, k):
    # Distinct logits at least 0.01 apart, so float32 rounding cannot reorder them.
    x = np.stack([rng.permutation(cols) * 0.01 for _ in range(rows)]).astype(np.float32)
    w, idx = poisoned((rows, k)), poisoned((rows, k), np.int32)
    assert lib.cuda_softmax_topk(x, w, idx, rows, cols, k, None) == 0
    want_idx, want_w = _topk_reference(x, k)
    np.testing.assert_array_equal(idx, want_idx)
    assert_close(w, want_w, rtol=1e-5)


def test_softmax_topk_ties_take_lower_index(lib):
    x = np.array([[1.0, 5.0, 2.0, 5.0, 2.0, 0.0]], np.float32)
    w, idx = poisoned((1, 4)), poisoned((1, 4), np.int32)
    assert lib.cuda_softmax_topk(x, w, idx, 1, 6, 4, None) == 0
    np.testing.assert_array_equal(idx, [[1, 3, 2, 4]])
    e = np.exp([5.0, 5.0, 2.0, 2.0])
    assert_close(w, [e / e.sum()], rtol=1e-6)


@pytest.mark.parametrize("rows,dim", SHAPES)
def test_rmsnorm(lib, rng, rows, dim):
    x = (rng.standard_normal((rows, dim)) * 3).astype(np.float32)
    w = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    out = poisoned((rows, dim))
    assert lib.cuda_rmsnorm(x, w, out, rows, dim, np.float32(1e-5), None) == 0
    assert_close(out, ref.rmsnorm(x, w, float(np.float32(1e-5))), rtol=1e-5)


def test_rmsnorm_zero_row_and_in_place(lib, rng):
    x = rng.standard_normal((3, 33)).astype(np.float32)
    x[1] = 0.0  # eps keeps a zero row finite: it normalises to zeros
    w = rng.uniform(0.5, 1.5, 33).astype(np.float32)
    want = ref.rmsnorm(x, w, 1e-6)
    assert lib.cuda_rmsnorm(x, w, x, 3, 33, np.float32(1e-6), None) == 0
    assert_close(x, want, rtol=1e-5, atol=1e-30)
    assert (x[1] == 0).all()


@pytest.mark.parametrize("rows,dim", SHAPES)
def test_rmsnorm_residual(lib, rng, rows, dim):
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    r = rng.standard_normal((rows, dim)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    out, res_out = poisoned((rows, dim)), poisoned((rows, dim))
    assert lib.cuda_rmsnorm_residual(x, r, w, out, res_out, rows, dim, np.float32(1e-5), None) == 0
    s = ref.f64(x) + ref.f64(r)
    assert_ulp(res_out, s, max_ulp=0.5)
    assert_close(out, ref.rmsnorm(res_out, w, float(np.float32(1e-5))), rtol=1e-5)


def test_rmsnorm_residual_in_place(lib, rng):
    x = rng.standard_normal((4, 31)).astype(np.float32)
    r = rng.standard_normal((4, 31)).astype(np.float32)
    w = np.ones(31, np.float32)
    s = (x + r).astype(np.float32)
    want = ref.rmsnorm(s, w, 1e-5)
    # output := input and residual_out := residual, as a transformer block does.
    assert lib.cuda_rmsnorm_residual(x, r, w, x, r, 4, 31, np.float32(1e-5), None) == 0
    np.testing.assert_array_equal(r, s)
    assert_close(x, want, rtol=1e-5)
