"""silu, add, mul, scale against float64."""
import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_ulp, poisoned

SIZES = [1, 31, 33, 1000, 4097]


def _data(rng, n):
    return (rng.standard_normal(n) * 4).astype(np.float32)


@pytest.mark.parametrize("n", SIZES)
def test_silu(rng, n):
    x = _data(rng, n)
    x[0] = -80.0  # a far tail: tiny but normal result, no NaN
    y = poisoned(n)
    assert cudann.silu(x, out=y) is y
    assert_ulp(y, ref.silu(x), max_ulp=4)
    assert_ulp(cudann.silu(x), ref.silu(x), max_ulp=4)  # allocated output


def test_silu_deep_negative_tail():
    x = np.linspace(-104, -87.5, 4097).astype(np.float32)
    assert_ulp(cudann.silu(x), ref.silu(x), max_ulp=4)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("op,fn", [("add", np.add), ("mul", np.multiply)])
def test_binary(rng, n, op, fn):
    a, b = _data(rng, n), _data(rng, n)
    out = poisoned(n)
    getattr(cudann, op)(a, b, out=out)
    assert_ulp(out, fn(ref.f64(a), ref.f64(b)), max_ulp=0.5)  # one correctly rounded op


@pytest.mark.parametrize("n", SIZES)
def test_scale(rng, n):
    x = _data(rng, n)
    out = cudann.scale(x, np.float32(-0.3))
    assert_ulp(out, ref.f64(x) * float(np.float32(-0.3)), max_ulp=0.5)


def test_multidimensional_arrays_keep_their_shape(rng):
    x = _data(rng, 24).reshape(2, 3, 4)
    y = cudann.silu(x)
    assert y.shape == (2, 3, 4) and y.dtype == np.float32
    assert_ulp(y, ref.silu(x))


def test_in_place(rng):
    n = 1000
    x = _data(rng, n)
    want = ref.silu(x)
    cudann.silu(x, out=x)
    assert_ulp(x, want)
    a, b = _data(rng, n), _data(rng, n)
    want = ref.f64(a) + ref.f64(b)
    cudann.add(a, b, out=b)  # output is b
    assert_ulp(b, want, max_ulp=0.5)
