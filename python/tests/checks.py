"""Comparison helpers shared by the tests."""
import math

import numpy as np

POISON = np.float32(-7.7e7)  # outputs are pre-filled with this to see what got written
POISON_I32 = np.int32(-7777)


def poisoned(shape, dtype=np.float32):
    return np.full(shape, POISON if dtype == np.float32 else POISON_I32, dtype=dtype)


def assert_ulp(got, ref, max_ulp=4):
    """float32 `got` within `max_ulp` float32 spacings of the float64 `ref`."""
    got, ref = np.asarray(got), np.asarray(ref, np.float64)
    assert got.dtype == np.float32 and got.shape == ref.shape
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    ulp = np.maximum(ulp, np.finfo(np.float32).smallest_subnormal)
    err = np.abs(got.astype(np.float64) - ref) / ulp
    worst = int(np.argmax(err)) if err.size else 0
    assert err.size == 0 or err.flat[worst] <= max_ulp, (
        f"{err.flat[worst]:.1f} ulp at {np.unravel_index(worst, err.shape)}: "
        f"got {got.flat[worst]!r}, want {ref.flat[worst]!r}")


def assert_close(got, ref, rtol=1e-5, atol=0.0, scale=None):
    """|got - ref| <= rtol * scale + atol, scale defaulting to |ref| (a per-element
    condition bound such as |A|@|B| for a matmul may be given instead)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = np.abs(ref) if scale is None else np.asarray(scale, np.float64)
    bad = ~(np.abs(got - ref) <= rtol * scale + atol)
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.size} differ; first at {np.argwhere(bad)[0].tolist()}: "
        f"got {got[bad][0]!r}, want {ref[bad][0]!r}")


def chi2_sf(x, df):
    """P(X >= x) for X ~ chi-square(df): 1 - regularised lower gamma P(df/2, x/2) by its series."""
    a, z = df / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    term = total = 1.0 / a
    n = 1
    while term > 1e-17 * total:
        term *= z / (a + n)
        total += term
        n += 1
    return max(0.0, 1.0 - math.exp(a * math.log(z) - z - math.lgamma(a)) * total)


def chi2_pvalue(counts, probs):
    counts, probs = np.asarray(counts, np.float64), np.asarray(probs, np.float64)
    expected = counts.sum() * probs
    stat = float(np.sum((counts - expected) ** 2 / expected))
    return chi2_sf(stat, len(counts) - 1)
