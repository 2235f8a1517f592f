"""Communicators for data-parallel training: every rank (a process per GPU, or
a thread per GPU) runs the same step on its share of the batch, then averages
its gradients with the others' (:meth:`Communicator.all_reduce`). More than one
rank runs on NCCL; one rank needs nothing and its collectives are exact copies,
so a program written for N ranks runs unchanged as one, anywhere.
"""
from __future__ import annotations

import ctypes
from typing import Any, Optional

from ._core import Handle, adapt, call, infer_stream, output, require, stream_handle

__all__ = ["Communicator", "comm_id"]

ID_BYTES = 128  # CUDANN_COMM_ID_BYTES
_OPS = {"sum": 0, "avg": 1}  # CUDANN_SUM, CUDANN_AVG


def comm_id() -> bytes:
    """``cudann_comm_id``: a new communicator id. Rank 0 makes it and hands these
    bytes to the other ranks (a file, a pipe); NCCL's where NCCL and a GPU are usable."""
    buf = ctypes.create_string_buffer(ID_BYTES)
    call("cudann_comm_id", buf)
    return buf.raw


class Communicator(Handle):
    """``cudann_comm_init``: rank ``rank`` of ``nranks`` in communicator ``id`` (bytes
    from :func:`comm_id`; a fresh one when omitted, for one rank), on the current
    device. Blocks until every rank has joined. ``with Communicator(...) as c:``
    destroys it on exit; so does garbage collection."""

    def __init__(self, nranks: int = 1, rank: int = 0, id: Optional[bytes] = None):
        if id is None:
            id = comm_id()
        if len(id) != ID_BYTES:
            raise ValueError(f"id must be {ID_BYTES} bytes (from comm_id), got {len(id)}")
        h = ctypes.c_void_p()
        call("cudann_comm_init", ctypes.byref(h), int(nranks), int(rank), ctypes.create_string_buffer(bytes(id), ID_BYTES))
        self._handle = h.value
        self.nranks, self.rank = int(nranks), int(rank)

    _destroy_fn, _gone = "cudann_comm_destroy", "communicator is destroyed"

    def all_reduce(self, x: Any, out: Any = None, *, op: str = "avg", stream=None) -> Any:
        """The sum (``op="sum"``) or mean (``"avg"``) of float32 ``x`` over the ranks,
        into ``out`` (a new array by default; ``out`` may be ``x``)."""
        if op not in _OPS:
            raise ValueError(f"op must be 'sum' or 'avg', got {op!r}")
        return self._collective("cudann_all_reduce", x, out, _OPS[op], stream)

    def broadcast(self, x: Any, out: Any = None, *, root: int = 0, stream=None) -> Any:
        """Rank ``root``'s float32 ``x`` into every rank's ``out`` (``x`` is read on the
        root only; ``out`` may be ``x``)."""
        return self._collective("cudann_broadcast", x, out, int(root), stream)

    def _collective(self, fn: str, x, out, arg: int, stream):
        s = stream_handle(stream)
        xa = require(adapt(x, "x", s), "x", ("float32",))
        o, oa = output(out, xa, "out", xa.shape, "float32", s)
        call(fn, xa, oa, xa.size, arg, self.handle, infer_stream(stream, [xa, oa]))
        return o

    def destroy(self) -> None:
        """``cudann_comm_destroy`` (idempotent)."""
        self._release()

    def __repr__(self) -> str:
        state = "destroyed" if self._handle is None else f"rank {self.rank} of {self.nranks}"
        return f"cudann.Communicator({state})"
