"""argmax and the three seeded samplers: semantics and distributions, not exact tokens."""
import numpy as np
import pytest

import cudann
import reference as ref
from checks import chi2_pvalue, poisoned

ROWS = 4000
SEEDS = (np.arange(ROWS, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(12345)
LOGITS8 = np.array([1.0, -0.5, 2.0, 0.3, -2.0, 1.2, 0.0, 0.8], np.float32)


def _draw(op, logits_row, extra, temperature, rows=ROWS):
    """`rows` draws from one logits row, each row with its own seed."""
    logits = np.tile(logits_row, (rows, 1))
    return getattr(cudann, op)(logits, SEEDS[:rows].copy(), *extra, temperature=np.float32(temperature))


@pytest.mark.parametrize("rows,vocab", [(1, 1), (31, 33), (4, 4097), (2, 256_000)])
def test_argmax(rng, rows, vocab):
    x = rng.standard_normal((rows, vocab)).astype(np.float32)
    out = cudann.argmax(x)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.argmax(x, axis=1))


def test_argmax_ties_nan_and_neg_inf():
    x = np.array([[1, 3, 3, 0], [1, np.nan, 5, np.nan], [-np.inf] * 4, [7, 7, 7, 7]], np.float32)
    out = poisoned(4, np.int32)
    cudann.argmax(x, out=out)
    np.testing.assert_array_equal(out, np.argmax(x, axis=1))  # numpy: first max, NaN is max
    np.testing.assert_array_equal(out, [1, 1, 0, 0])


@pytest.mark.parametrize("op,extra", [("sample", ()), ("topk_sample", (5,)),
                                      ("topp_sample", (np.float32(0.9),))])
def test_temperature_zero_is_argmax(rng, op, extra):
    rows, vocab = 33, 1000
    x = rng.standard_normal((rows, vocab)).astype(np.float32)
    out = getattr(cudann, op)(x, SEEDS[:rows].copy(), *extra, temperature=0.0)
    np.testing.assert_array_equal(out, np.argmax(x, axis=1))


@pytest.mark.parametrize("op,extra", [("sample", ()), ("topk_sample", (50,)),
                                      ("topp_sample", (np.float32(0.8),))])
def test_same_seeds_same_tokens(rng, op, extra):
    rows, vocab = 64, 4097
    x = rng.standard_normal((rows, vocab)).astype(np.float32)
    seeds = rng.integers(0, 2**64 - 1, rows, dtype=np.uint64, endpoint=True)
    seeds[0] = np.uint64(2**64 - 1)
    outs = []
    for _ in range(3):
        outs.append(getattr(cudann, op)(x, seeds, *extra, temperature=1.0))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    assert ((outs[0] >= 0) & (outs[0] < vocab)).all()
    other = getattr(cudann, op)(x, seeds + np.uint64(1), *extra, temperature=1.0)  # new seeds, new draws
    assert (other != outs[0]).any()


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.5])
def test_sample_matches_softmax(temperature):
    tokens = _draw("sample", LOGITS8, (), temperature)
    probs = ref.softmax(ref.f64(LOGITS8) / float(np.float32(temperature)))
    assert chi2_pvalue(np.bincount(tokens, minlength=8), probs) > 1e-3


@pytest.mark.parametrize("k", [1, 3, 6, 8, 20])
def test_topk_stays_in_top_k_and_matches_renormalised_softmax(k):
    tokens = _draw("topk_sample", LOGITS8, (k,), 0.8)
    top = np.argsort(-LOGITS8, kind="stable")[: min(k, 8)]
    assert set(tokens.tolist()) <= set(top.tolist())
    if k > 1:
        probs = ref.softmax(ref.f64(LOGITS8[top]) / float(np.float32(0.8)))
        assert chi2_pvalue(np.bincount(tokens, minlength=8)[top], probs) > 1e-3


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.75, 0.95, 1.0])
def test_topp_stays_in_nucleus_and_matches_renormalised_softmax(top_p):
    probs = ref.softmax(ref.f64(LOGITS8) / float(np.float32(1.3)))
    nucleus = sorted(ref.nucleus(probs, float(np.float32(top_p))))
    tokens = _draw("topp_sample", LOGITS8, (np.float32(top_p),), 1.3)
    assert set(tokens.tolist()) <= set(nucleus)
    if len(nucleus) > 1:
        kept = probs[nucleus] / probs[nucleus].sum()
        assert chi2_pvalue(np.bincount(tokens, minlength=8)[nucleus], kept) > 1e-3


def test_topk_and_topp_large_vocab(rng):
    rows, vocab = 200, 32_000
    x = (rng.standard_normal((rows, vocab)) * 2).astype(np.float32)
    seeds = SEEDS[:rows].copy()
    out = poisoned(rows, np.int32)
    cudann.topk_sample(x, seeds, 40, 1.0, out=out)
    top40 = np.argsort(-x, axis=1, kind="stable")[:, :40]
    assert all(out[r] in top40[r] for r in range(rows))
    cudann.topp_sample(x, seeds, np.float32(0.3), 1.0, out=out)
    probs = ref.softmax(x)
    assert all(out[r] in ref.nucleus(probs[r], float(np.float32(0.3))) for r in range(rows))


@pytest.mark.parametrize("op,extra", [("sample", ()), ("topk_sample", (4,)),
                                      ("topp_sample", (np.float32(1.0),))])
def test_neg_inf_logits_are_never_drawn(op, extra):
    row = np.array([0.0, -np.inf, 1.0, -np.inf, 0.5, -np.inf, -np.inf, -np.inf], np.float32)
    tokens = _draw(op, row, extra, 1.0)
    kept = [0, 2, 4]
    assert set(tokens.tolist()) <= set(kept)
    assert chi2_pvalue(np.bincount(tokens, minlength=8)[kept], ref.softmax(ref.f64(row[kept]))) > 1e-3


def test_topk_boundary_ties_keep_lower_index():
    row = np.array([1.0, 3.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0], np.float32)
    tokens = _draw("topk_sample", row, (2,), 1.0)  # keeps 1 and 0, not 2 or 3
    assert set(tokens.tolist()) == {0, 1}
    assert chi2_pvalue(np.bincount(tokens, minlength=2), ref.softmax([1.0, 3.0])) > 1e-3


def test_an_int_seed_derives_per_row_seeds(rng):
    x = rng.standard_normal((64, 100)).astype(np.float32)
    a, b = cudann.sample(x, 7), cudann.sample(x, 7)
    np.testing.assert_array_equal(a, b)
    assert (cudann.sample(x, 8) != a).any()
