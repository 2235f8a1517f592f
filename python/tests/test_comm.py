"""Communicators through the package: one rank's collectives are exact copies
on any backend (host arrays and DeviceArrays), bad arguments raise with the
library's message, and two ranks need NCCL (refused here without it)."""
import numpy as np
import pytest

import cudann


def test_one_rank_all_reduce_and_broadcast_are_exact_copies(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    x[3] = np.float32(np.nan)
    with cudann.Communicator() as c:
        for op in ("sum", "avg"):
            y = c.all_reduce(x, op=op)
            assert y.tobytes() == x.tobytes()
        z = x.copy()
        assert c.all_reduce(z, out=z) is z and z.tobytes() == x.tobytes()
        assert c.broadcast(x).tobytes() == x.tobytes()
        with cudann.to_device(x) as dx:
            dy = c.all_reduce(dx, op="avg")
            assert isinstance(dy, cudann.DeviceArray) and dy.numpy().tobytes() == x.tobytes()
            dy.free()
    assert "destroyed" in repr(c)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        cudann.Communicator(id=b"short")
    with pytest.raises(cudann.CudannError) as e:
        cudann.Communicator(nranks=2, rank=2)
    assert e.value.code == cudann.INVALID_VALUE and "rank" in e.value.message
    with cudann.Communicator() as c:
        with pytest.raises(ValueError):
            c.all_reduce(np.zeros(3, np.float32), op="max")
        with pytest.raises(cudann.CudannError) as e:
            c.broadcast(np.zeros(3, np.float32), root=1)
        assert "root" in e.value.message
        with pytest.raises(TypeError):
            c.all_reduce(np.zeros(3, np.float64))


def test_two_ranks_need_nccl():
    id = cudann.comm_id()
    if not id.startswith(b"cudann solo id"):
        pytest.skip("this machine has NCCL and a GPU: a second rank would be needed")
    with pytest.raises(cudann.CudannError) as e:
        cudann.Communicator(nranks=2, rank=0, id=id)
    assert e.value.code == cudann.INVALID_VALUE and "one rank only" in e.value.message
