"""cuda_argmax and the three seeded samplers: semantics and distributions, not exact tokens."""
import numpy as np
import pytest

import reference as ref
from checks import chi2_pvalue, poisoned

ROWS = 4000
SEEDS = (np.arange(ROWS, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(12345)
LOGITS8 = np.array([1.0, -0.5, 2.0, 0.3, -2.0, 1.2, 0.0, 0.8], np.float32)


def _draw(lib, op, logits_row, extra, temperature, rows=ROWS):
    """`rows` draws from one logits row, each row with its own seed."""
    logits = np.tile(logits_row, (rows, 1))
    out = poisoned(rows, np.int32)
    args = (logits, out, SEEDS[:rows].copy(), rows, logits.shape[1], *extra, np.float32(temperature), None)
    assert getattr(lib, op)(*args) == 0
    return out


@pytest.mark.parametrize("rows,vocab", [(1, 1), (31, 33), (4, 4097), (2, 256_000)])
def test_argmax(lib, rng, rows, vocab):
    x = rng.standard_normal((rows, vocab)).astype(np.float32)
    out = poisoned(rows, np.int32)
    assert lib.cuda_argmax(x, out, rows, vocab, None) == 0
    np.testing.assert_array_equal(out, np.argmax(x, axis=1))


def test_argmax_ties_nan_and_neg_inf(lib):
    x = np.array([[1, 3, 3, 0], [1, np.nan, 5, np.nan], [-np.inf] * 4, [7, 7, 7, 7]], np.float32)
    out = poisoned(4, np.int32)
    assert lib.cuda_argmax(x, out, 4, 4, None) == 0
    np.testing.assert_array_equal(out, np.argmax(x, axis=1))  # numpy: first max, NaN is max
    np.testing.assert_array_equal(out, [1, 1, 0, 0])


@pytest.mark.parametrize("op,extra", [("cuda_sample", ()), ("cuda_topk_sample", (5,)),
                                      ("cuda_topp_sample", (np.float32(0.9),))])
def test_temperature_zero_is_argmax(lib, rng, op, extra):
    rows, vocab = 33, 1000
    x = rng.standard_normal((rows, vocab)).astype(np.float32)
    out = poisoned(rows, np.int32)
    assert getattr(lib, op)(x, out, SEEDS[:rows].copy(), rows, vocab, *extra, np.float32(0.0), None) == 0
    np.testing.assert_array_equal(out, np.argmax(x, axis=1))


@pytest.mark.parametrize("op,extra", [("cuda_sample", ()), ("cuda_topk_sample", (50,)),
                                      ("cuda_topp_sample", (np.float32(0.8),))])
def test_same_seeds_same_tokens(lib, rng, op, extra):
    rows, vocab = 64, 4097
    x = rng.standard_normal((rows, vocab)).astype(np.float32)
    seeds = rng.integers(0, 2**64 - 1, rows, dtype=np.uint64, endpoint=True)
    seeds[0] = np.uint64(2**64 - 1)
    outs = []
    for _ in range(3):
        out = poisoned(rows, np.int32)
        assert getattr(lib, op)(x, out, seeds, rows, vocab, *extra, np.float32(1.0), None) == 0
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    assert ((outs[0] >= 0) & (outs[0] < vocab)).all()
    other = poisoned(rows, np.int32)  # and the seeds matter: new seeds, new draws
    assert getattr(lib, op)(x, other, seeds + np.uint64(1), rows, vocab, *extra, np.float32(1.0), None) == 0
    assert (other != outs[0]).any()


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.5])
def test_sample_matches_softmax(lib, temperature):
    tokens = _draw(lib, "cuda_sample", LOGITS8, (), temperature)
    probs = ref.softmax(ref.f64(LOGITS8) / float(np.float32(temperature)))
    assert chi2_pvalue(np.bincount(tokens, minlength=8), probs) > 1e-3


@pytest.mark.parametrize("k", [1, 3, 6, 8, 20])
def test_topk_stays_in_top_k_and_matches_renormalised_softmax(lib, k):
    tokens = _draw(lib, "cuda_topk_sample", LOGITS8, (k,), 0.8)
    top = np.argsort(-LOGITS8, kind="stable")[: min(k, 8)]
    assert set(tokens.tolist()) <= set(top.tolist())
    if k > 1:
        probs = ref.softmax(ref.f64(LOGITS8[top]) / float(np.float32(0.8)))
        assert chi2_pvalue(np.bincount(tokens, minlength=8)[top], probs) > 1e-3


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.75, 0.95, 1.0])
def test_topp_stays_in_nucleus_and_matches_renormalised_softmax(lib, top_p):
    probs = ref.softmax(ref.f64(LOGITS8) / float(np.float32(1.3)))
    nucleus = sorted(ref.nucleus(probs, float(np.float32(top_p))))
    tokens = _draw(lib, "cuda_topp_sample", LOGITS8, (np.float32(top_p),), 1.3)
    assert set(tokens.tolist()) <= set(nucleus)
    if len(nucleus) > 1:
        kept = probs[nucleus] / probs[nucleus].sum()
        assert chi2_pvalue(np.bincount(tokens, minlength=8)[nucleus], kept) > 1e-3


def test_topk_and_topp_large_vocab(lib, rng):
    rows, vocab = 200, 32_000
    x = (rng.standard_normal((rows, vocab)) * 2).astype(np.float32)
    seeds = SEEDS[:rows].copy()
    out = poisoned(rows, np.int32)
    assert lib.cuda_topk_sample(x, out, seeds, rows, vocab, 40, np.float32(1.0), None) == 0
    top40 = np.argsort(-x, axis=1, kind="stable")[:, :40]
    assert all(out[r] in top40[r] for r in range(rows))
    assert lib.cuda_topp_sample(x, out, seeds, rows, vocab, np.float32(0.3), np.float32(1.0), None) == 0
    probs = ref.softmax(x)
    assert all(out[r] in ref.nucleus(probs[r], float(np.float32(0.3))) for r in range(rows))


@pytest.mark.parametrize("op,extra", [("cuda_sample", ()), ("cuda_topk_sample", (4,)),
                                      ("cuda_topp_sample", (np.float32(1.0),))])
def test_neg_inf_logits_are_never_drawn(lib, op, extra):
    row = np.array([0.0, -np.inf, 1.0, -np.inf, 0.5, -np.inf, -np.inf, -np.inf], np.float32)
    tokens = _draw(lib, op, row, extra, 1.0)
    kept = [0, 2, 4]
    assert set(tokens.tolist()) <= set(kept)
    assert chi2_pvalue(np.bincount(tokens, minlength=8)[kept], ref.softmax(ref.f64(row[kept]))) > 1e-3


def test_topk_boundary_ties_keep_lower_index(lib):
    row = np.array([1.0, 3.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0], np.float32)
    tokens = _draw(lib, "cuda_topk_sample", row, (2,), 1.0)  # keeps 1 and 0, not 2 or 3
    assert set(tokens.tolist()) == {0, 1}
    assert chi2_pvalue(np.bincount(tokens, minlength=2), ref.softmax([1.0, 3.0])) > 1e-3
