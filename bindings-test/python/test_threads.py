"""Concurrent calls from a thread pool (ctypes drops the GIL) equal serial calls."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import reference as ref
from checks import assert_close, poisoned


def _jobs(lib, rng):
    """Independent jobs; each returns its outputs as fresh arrays."""
    def gemm(a, b):
        c = poisoned((a.shape[0], b.shape[1]))
        assert lib.cuda_gemm(a, b, c, a.shape[0], b.shape[1], a.shape[1], np.float32(1), np.float32(0), None) == 0
        return (c,)

    def softmax(x):
        o = poisoned(x.shape)
        assert lib.cuda_softmax(x, o, *x.shape, None) == 0
        return (o,)

    def rmsnorm(x, w):
        o = poisoned(x.shape)
        assert lib.cuda_rmsnorm(x, w, o, *x.shape, np.float32(1e-5), None) == 0
        return (o,)

    def cross_entropy(x, t):
        loss, lp = poisoned(1), poisoned(x.shape)
        assert lib.cuda_cross_entropy_forward(x, t, loss, lp, *x.shape, None) == 0
        return loss, lp

    def sample(x, s):
        o = poisoned(x.shape[0], np.int32)
        assert lib.cuda_topp_sample(x, o, s, *x.shape, np.float32(0.9), np.float32(1), None) == 0
        return (o,)

    def adamw(p, g):
        p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
        assert lib.cuda_adamw_step(p, g, m, v, *map(np.float32, (1e-3, .9, .999, 1e-8, .01)), 1, p.size, None) == 0
        return p, m, v

    def failing(n):
        """An error on this thread: its last_error is its own, whatever others do."""
        assert lib.cuda_silu(np.ones(4, np.float32), poisoned(4), -n, None) == -2
        return (np.frombuffer(lib.last_error().encode(), np.uint8),)

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


def test_thread_pool_matches_serial(lib, rng):
    jobs = _jobs(lib, rng)
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
        assert msg.tobytes().decode() == f"cuda_silu: n must be >= 0 (got -{i + 1})"
