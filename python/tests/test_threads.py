"""Concurrent calls from a thread pool (ctypes drops the GIL) equal serial calls,
and each thread's CudannError carries its own cudann_last_error() message."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_close


def _jobs(rng):
    """Independent jobs; each returns its outputs as fresh arrays."""
    def gemm(a, b):
        return (cudann.gemm(a, b),)

    def softmax(x):
        return (cudann.softmax(x),)

    def rmsnorm(x, w):
        return (cudann.rmsnorm(x, w, 1e-5),)

    def cross_entropy(x, t):
        return cudann.cross_entropy(x, t)

    def sample(x, s):
        return (cudann.topp_sample(x, s, 0.9, 1.0),)

    def adamw(p, g):
        p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
        cudann.adamw_step(p, g, m, v, lr=1e-3, beta1=.9, beta2=.999, eps=1e-8, weight_decay=.01, step=1)
        return p, m, v

    def failing(n):
        """An error on this thread: its message is its own, whatever others do."""
        with pytest.raises(cudann.CudannError) as e:
            cudann.rmsnorm(np.ones((2, 4), np.float32), np.ones(4, np.float32), eps=-n)
        assert e.value.code == cudann.INVALID_VALUE
        return (np.frombuffer(e.value.message.encode(), np.uint8),)

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    jobs = []
    for i in range(12):
        jobs += [
            (gemm, (normal(96 + i, 128), normal(128, 80))),
            (softmax, (normal(16, 4097),)),
            (rmsnorm, (normal(33, 1000), normal(1000))),
            (cross_entropy, (normal(31, 2048), rng.integers(-1, 2048, 31).astype(np.int32))),
            (sample, (normal(64, 1000), rng.integers(0, 2**63, 64).astype(np.uint64))),
            (adamw, (normal(10_000), normal(10_000))),
            (failing, (i + 1,)),
        ]
    return jobs


def test_thread_pool_matches_serial(rng):
    jobs = _jobs(rng)
    serial = [fn(*args) for fn, args in jobs]
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=8) as pool:
            parallel = list(pool.map(lambda job: job[0](*job[1]), jobs))
        for (fn, args), want, got in zip(jobs, serial, parallel):
            for w, g in zip(want, got):
                np.testing.assert_array_equal(g, w, err_msg=fn.__name__)  # bitwise: deterministic
    # The serial results are right, too (so equality is not two wrong answers agreeing).
    for (fn, args), (c,) in zip(jobs[::7], serial[::7]):
        a, b = args
        assert_close(c, ref.f64(a) @ ref.f64(b), rtol=1e-5, scale=np.abs(ref.f64(a)) @ np.abs(ref.f64(b)))
    for i, (msg,) in enumerate(serial[6::7]):
        assert msg.tobytes().decode() == f"cuda_rmsnorm: eps must be finite and >= 0 (got -{i + 1})"
