"""adamw_step, zero_grad, grad_clip, scatter_add."""
import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_close, poisoned

SIZES = [1, 31, 33, 1000, 4097]


@pytest.mark.parametrize("n", SIZES)
def test_adamw_steps(rng, n):
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1
    p = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for step in (1, 2, 3, 10):
        g = rng.standard_normal(n).astype(np.float32)
        # Each step is checked from the library's own float32 state (no drift).
        f32 = [float(np.float32(h)) for h in (lr, b1, b2, eps, wd)]
        want_p, want_m, want_v = ref.adamw(p, g, m, v, *f32, step)
        update = np.abs(want_m / (1 - f32[1] ** step)) / (np.sqrt(want_v / (1 - f32[2] ** step)) + f32[3])
        m_scale = f32[1] * np.abs(ref.f64(m)) + (1 - f32[1]) * np.abs(ref.f64(g))  # m may cancel
        tol = 2 * np.spacing(np.abs(want_p).astype(np.float32)) + 1e-5 * lr * (update + wd * np.abs(p))
        cudann.adamw_step(p, g, m, v, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, step=step)
        assert_close(m, want_m, rtol=1e-6, scale=m_scale, atol=1e-30)
        assert_close(v, want_v, rtol=1e-6, atol=1e-30)
        assert_close(p, want_p, rtol=1.0, scale=tol)


@pytest.mark.parametrize("n", SIZES)
def test_zero_grad(rng, n):
    g = np.concatenate([rng.standard_normal(n).astype(np.float32), poisoned(3)])
    cudann.zero_grad(g[:n])
    assert (g[:n] == 0).all() and not np.signbit(g[:n]).any()
    assert (g[n:] == poisoned(3)).all()  # nothing past `size` is touched


@pytest.mark.parametrize("n", SIZES + [100_000])
@pytest.mark.parametrize("clips", [True, False])
def test_grad_clip(rng, n, clips):
    g = rng.standard_normal(n).astype(np.float32)
    norm = float(np.sqrt(np.sum(ref.f64(g) ** 2)))
    clip = np.float32(norm * (0.5 if clips else 2.0))
    g0 = g.copy()
    partial, total = poisoned(-(-n // 256)), poisoned(1)
    assert cudann.grad_clip(g, clip, total_norm=total[0:1].reshape(()), partial_norms=partial).shape == ()
    assert_close(total, [norm], rtol=1e-5)  # the norm before clipping
    if clips:
        assert_close(g, ref.f64(g0) * (float(clip) / norm), rtol=1e-5)
    else:
        np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize("num,vocab,dim", [(1, 1, 1), (33, 7, 31), (1000, 50, 64), (4097, 3, 2)])
def test_scatter_add(rng, num, vocab, dim):
    go = rng.standard_normal((num, dim)).astype(np.float32)
    idx = rng.integers(-1, vocab, num).astype(np.int32)  # -1 rows are skipped
    if num > 1:
        idx[-2:] = [vocab - 1, vocab - 1]  # duplicates accumulate
        idx[0] = -5
    gw = rng.standard_normal((vocab, dim)).astype(np.float32)
    want, bound = ref.f64(gw), np.abs(ref.f64(gw))
    keep = idx >= 0
    np.add.at(want, idx[keep], ref.f64(go)[keep])
    np.add.at(bound, idx[keep], np.abs(ref.f64(go))[keep])
    cudann.scatter_add(go, idx, gw)
    assert_close(gw, want, rtol=1e-6, scale=bound * max(1.0, np.log2(num)))


def test_scatter_add_exact_small_case():
    go = np.array([[1, 2], [10, 20], [100, 200], [1000, 2000]], np.float32)
    idx = np.array([2, -1, 0, 2], np.int32)
    gw = np.zeros((3, 2), np.float32)
    cudann.scatter_add(go, idx, gw)
    np.testing.assert_array_equal(gw, [[100, 200], [0, 0], [1001, 2002]])
