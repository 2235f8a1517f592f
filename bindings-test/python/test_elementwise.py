"""cuda_silu, cuda_add, cuda_mul, cuda_scale against float64."""
import numpy as np
import pytest

import reference as ref
from checks import assert_ulp, poisoned

SIZES = [1, 31, 33, 1000, 4097]


def _data(rng, n):
    return (rng.standard_normal(n) * 4).astype(np.float32)


@pytest.mark.parametrize("n", SIZES)
def test_silu(lib, rng, n):
    x = _data(rng, n)
    x[0] = -80.0  # a far tail: tiny but normal result, no NaN
    y = poisoned(n)
    assert lib.cuda_silu(x, y, n, None) == 0
    assert_ulp(y, ref.silu(x), max_ulp=4)


def test_silu_deep_negative_tail(lib):
    x = np.linspace(-104, -87.5, 4097).astype(np.float32)
    y = poisoned(x.size)
    assert lib.cuda_silu(x, y, x.size, None) == 0
    assert_ulp(y, ref.silu(x), max_ulp=4)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("op,fn", [("cuda_add", np.add), ("cuda_mul", np.multiply)])
def test_binary(lib, rng, n, op, fn):
    a, b = _data(rng, n), _data(rng, n)
    out = poisoned(n)
    assert getattr(lib, op)(a, b, out, n, None) == 0
    assert_ulp(out, fn(ref.f64(a), ref.f64(b)), max_ulp=0.5)  # one correctly rounded op


@pytest.mark.parametrize("n", SIZES)
def test_scale(lib, rng, n):
    x = _data(rng, n)
    out = poisoned(n)
    assert lib.cuda_scale(x, out, np.float32(-0.3), n, None) == 0  # (input, output, scale, n)
    assert_ulp(out, ref.f64(x) * float(np.float32(-0.3)), max_ulp=0.5)


def test_in_place(lib, rng):
    n = 1000
    x = _data(rng, n)
    want = ref.silu(x)
    assert lib.cuda_silu(x, x, n, None) == 0
    assert_ulp(x, want)
    a, b = _data(rng, n), _data(rng, n)
    want = ref.f64(a) + ref.f64(b)
    assert lib.cuda_add(a, b, b, n, None) == 0  # output is b
    assert_ulp(b, want, max_ulp=0.5)
