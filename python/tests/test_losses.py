"""cross_entropy/_backward (with padding rows), aux_loss and aux_loss_backward."""
import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_close, poisoned

PAD = -100


def _targets(rng, rows, vocab, pad_every=3):
    t = rng.integers(0, vocab, rows).astype(np.int32)
    t[1::pad_every] = PAD  # padding rows are excluded from the mean
    return t


@pytest.mark.parametrize("rows,vocab", [(1, 1), (31, 33), (33, 1000), (4, 4097), (2, 3)])
def test_cross_entropy_forward(rng, rows, vocab):
    logits = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    targets = _targets(rng, rows, vocab)
    loss, lp = poisoned(()), poisoned((rows, vocab))
    got_loss, got_lp = cudann.cross_entropy(logits, targets, log_probs=lp, loss=loss)
    assert got_loss is loss and got_lp is lp
    want_lp = ref.log_softmax(logits)
    assert_close(lp, want_lp, rtol=1e-5, scale=np.abs(want_lp) + 1.0)
    kept = targets >= 0
    want_loss = -want_lp[kept, targets[kept]].mean()
    assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)


def test_cross_entropy_forward_in_place_and_all_padding(rng):
    logits = rng.standard_normal((5, 31)).astype(np.float32)
    want_lp = ref.log_softmax(logits)
    targets = np.full(5, PAD, np.int32)  # no counted row: the loss is 0
    loss, _ = cudann.cross_entropy(logits, targets, log_probs=logits)
    assert loss.shape == () and loss == 0.0
    assert_close(logits, want_lp, rtol=1e-5, scale=np.abs(want_lp) + 1.0)


@pytest.mark.parametrize("rows,vocab", [(1, 1), (31, 33), (33, 1000), (4, 4097)])
def test_cross_entropy_backward(rng, rows, vocab):
    lp = ref.log_softmax(rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    targets = _targets(rng, rows, vocab)
    scale = np.float32(1.0 / rows)
    d = cudann.cross_entropy_backward(lp, targets, scale)
    onehot = np.zeros((rows, vocab))
    kept = targets >= 0
    onehot[np.nonzero(kept)[0], targets[kept]] = 1.0
    want = (np.exp(ref.f64(lp)) - onehot) * float(scale)
    want[~kept] = 0.0  # padding rows get a zero gradient
    assert_close(d, want, rtol=1e-5, scale=(np.exp(ref.f64(lp)) + onehot) * float(scale), atol=1e-30)
    assert (d[~kept] == 0).all()


def test_cross_entropy_backward_in_place(rng):
    lp = ref.log_softmax(rng.standard_normal((3, 33))).astype(np.float32)
    targets = np.array([4, PAD, 32], np.int32)
    p = np.exp(ref.f64(lp))
    want = p.copy()
    want[0, 4] -= 1.0
    want[2, 32] -= 1.0
    want[1] = 0.0
    cudann.cross_entropy_backward(lp, targets, 1.0, out=lp)
    assert_close(lp, want, rtol=1e-5, scale=p + 1.0)


@pytest.mark.parametrize("tokens,experts,top_k", [(1, 1, 1), (31, 8, 2), (1000, 33, 4), (33, 8, 8)])
def test_aux_loss_forward(rng, tokens, experts, top_k):
    probs = ref.softmax(rng.standard_normal((tokens, experts))).astype(np.float32)
    idx = np.stack([rng.choice(experts, top_k, replace=False) for _ in range(tokens)]).astype(np.int32)
    alpha = np.float32(0.01)
    aux, f, p = cudann.aux_loss(probs, idx, alpha)
    chosen = np.zeros((tokens, experts), bool)
    chosen[np.arange(tokens)[:, None], idx] = True
    want_f = chosen.mean(axis=0)
    want_p = ref.f64(probs).mean(axis=0)
    assert_close(f, want_f, rtol=1e-6)
    assert_close(p, want_p, rtol=1e-5)
    assert_close(aux, float(alpha) * experts * np.sum(want_f * want_p), rtol=1e-5)
    d_probs = cudann.aux_loss_backward(f, tokens, alpha, scale=0.5)
    assert_close(d_probs, np.broadcast_to(0.5 * float(alpha) * experts * ref.f64(f) / tokens, (tokens, experts)), rtol=1e-6)
