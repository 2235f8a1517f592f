"""Device memory, streams and devices.

On a machine without a usable GPU (or with ``CUDANN_BACKEND=cpu``) "device"
memory is host memory and streams do nothing, so the same program runs there.
"""
from __future__ import annotations

import ctypes
import math
from typing import Any, Optional, Tuple

import numpy as np

from ._core import Arr, Handle, Owned, adapt, backend, call, dtype_name, numpy_dtype, require, stream_handle

__all__ = ["DeviceArray", "Stream", "to_device", "malloc", "malloc_host", "free", "memcpy", "memset",
           "stream_synchronize", "device_synchronize", "device_count", "set_device", "get_device", "mem_info"]


def malloc(nbytes: int) -> int:
    """``cudann_malloc``: `nbytes` of device memory; returns the address (0 for 0 bytes)."""
    p = ctypes.c_void_p()
    call("cudann_malloc", ctypes.byref(p), int(nbytes))
    return p.value or 0


def malloc_host(nbytes: int) -> int:
    """``cudann_malloc_host``: `nbytes` of page-locked host memory; returns the address."""
    p = ctypes.c_void_p()
    call("cudann_malloc_host", ctypes.byref(p), int(nbytes))
    return p.value or 0


def free(ptr: int) -> None:
    """``cudann_free`` of an address from :func:`malloc` or :func:`malloc_host`."""
    call("cudann_free", int(ptr) or None)


def _address(x, name: str, stream) -> Tuple[int, Optional[int]]:
    """(address, byte length or None) of an int address or any array."""
    if isinstance(x, (int, np.integer)):
        return int(x), None
    a = require(adapt(x, name, stream), name)
    return a.ptr, a.size * a.itemsize


def memcpy(dst, src, nbytes: Optional[int] = None, *, stream=None) -> None:
    """Copies `nbytes` (default: the arrays' size, which must then agree) from `src` to
    `dst`, each an address or an array, host or device; ordered on `stream`."""
    s = stream_handle(stream)
    d, dn = _address(dst, "dst", s)
    r, rn = _address(src, "src", s)
    if nbytes is None:
        if dn is None and rn is None:
            raise ValueError("nbytes is required when dst and src are both addresses")
        if dn is not None and rn is not None and dn != rn:
            raise ValueError(f"dst holds {dn} bytes but src {rn}: pass nbytes")
        nbytes = dn if dn is not None else rn
    call("cudann_memcpy", d or None, r or None, int(nbytes), s)


def memset(dst, value: int, nbytes: Optional[int] = None, *, stream=None) -> None:
    """Sets `nbytes` bytes (default: all of array `dst`) to `value`'s low byte."""
    s = stream_handle(stream)
    d, dn = _address(dst, "dst", s)
    if nbytes is None:
        if dn is None:
            raise ValueError("nbytes is required when dst is an address")
        nbytes = dn
    call("cudann_memset", d or None, int(value), int(nbytes), s)


def stream_synchronize(stream=None) -> None:
    """Waits for the work on `stream` (None: the default stream; torch/CuPy streams too)."""
    call("cudann_stream_synchronize", stream_handle(stream))


def device_synchronize() -> None:
    """Waits for all work on the current device."""
    call("cudann_device_synchronize")


def device_count() -> int:
    """The number of GPUs calls can use (0 on the CPU backend)."""
    n = ctypes.c_int(-1)
    call("cudann_device_count", ctypes.byref(n))
    return n.value


def set_device(device: int) -> None:
    """Makes `device` the calling thread's current device."""
    call("cudann_set_device", int(device))


def get_device() -> int:
    """The calling thread's current device."""
    n = ctypes.c_int(-1)
    call("cudann_get_device", ctypes.byref(n))
    return n.value


def mem_info() -> Tuple[int, int]:
    """``(free_bytes, total_bytes)`` of the current device (of the machine on the CPU backend)."""
    free_b, total = ctypes.c_int64(), ctypes.c_int64()
    call("cudann_mem_info", ctypes.byref(free_b), ctypes.byref(total))
    return free_b.value, total.value


class Stream(Handle):
    """A stream from ``cudann_stream_create`` (a real ``cudaStream_t`` on the GPU).

    Pass it as ``stream=`` to any call. ``with Stream() as s:`` destroys it on exit
    (after synchronizing); so does garbage collection.
    """

    def __init__(self):
        h = ctypes.c_void_p()
        call("cudann_stream_create", ctypes.byref(h))
        self._handle = h.value

    _destroy_fn, _gone = "cudann_stream_destroy", "stream is destroyed"

    def synchronize(self) -> None:
        """Waits until all work enqueued on this stream is done."""
        call("cudann_stream_synchronize", self.handle)

    def destroy(self) -> None:
        """Destroys the stream (enqueued work still completes); idempotent."""
        self._release()

    def __int__(self) -> int:
        return self.handle

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self.synchronize()
        self.destroy()

    def __repr__(self) -> str:
        return f"cudann.Stream({'destroyed' if self._handle is None else hex(self._handle)})"


class DeviceArray(Owned):
    """An n-d array in memory from ``cudann_malloc`` (``pinned=True``: ``cudann_malloc_host``).

    Accepted by every op like a numpy array (outputs of an op whose first input is a
    DeviceArray are DeviceArrays); ``numpy()`` copies it back. On the GPU backend it
    exposes ``__cuda_array_interface__``, so CuPy/PyTorch/Numba can wrap it without a copy.
    Freed by :meth:`free`, on leaving a ``with`` block, or when garbage collected.
    """

    def __init__(self, shape, dtype: Any = "float32", *, pinned: bool = False):
        self.shape: Tuple[int, ...] = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        if any(s < 0 for s in self.shape):
            raise ValueError(f"negative dimension in {self.shape}")
        self.dtype: str = dtype_name(dtype)
        self.pinned = pinned
        self.itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize
        self._ptr: Optional[int] = (malloc_host if pinned else malloc)(self.nbytes)

    @classmethod
    def from_numpy(cls, array, *, pinned: bool = False, stream=None) -> "DeviceArray":
        """A new DeviceArray holding a copy of host `array`."""
        array = np.ascontiguousarray(array)
        out = cls(array.shape, array.dtype, pinned=pinned)
        out.copy_from(array, stream=stream)
        return out

    @classmethod
    def empty_like(cls, array) -> "DeviceArray":
        a = adapt(array)
        return cls(a.shape, a.dtype)

    @property
    def ptr(self) -> int:
        """The address (0 for an empty array)."""
        if self._ptr is None:
            raise ValueError("DeviceArray is freed")
        return self._ptr

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _cudann_arr(self) -> Arr:
        return Arr(self, self.ptr, self.shape, self.dtype, None, not self.pinned, "cudann")

    def copy_from(self, src, *, stream=None) -> "DeviceArray":
        """Copies all of `src` (any array of the same byte size) into this array."""
        memcpy(self, src, stream=stream)
        return self

    def copy_to(self, dst, *, stream=None):
        """Copies this array into `dst` (any array of the same byte size); returns `dst`."""
        memcpy(dst, self, stream=stream)
        return dst

    def numpy(self, *, stream=None) -> np.ndarray:
        """A host copy (waits for `stream`'s earlier work)."""
        out = np.empty(self.shape, numpy_dtype(self.dtype))  # bfloat16: ml_dtypes' (TypeError without it)
        self.copy_to(out, stream=stream)
        if stream is not None:
            stream_synchronize(stream)
        return out

    def fill_bytes(self, value: int = 0, *, stream=None) -> "DeviceArray":
        """Sets every byte to `value` (``cudann_memset``)."""
        memset(self, value, stream=stream)
        return self

    def free(self) -> None:
        """Frees the memory (idempotent)."""
        if self._ptr is not None:
            p, self._ptr = self._ptr, None
            free(p)

    _release = free

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    @property
    def __cuda_array_interface__(self) -> dict:
        if self.pinned or not backend().startswith("cuda"):
            raise AttributeError("__cuda_array_interface__: not device memory (CPU backend or pinned host memory)")
        return {"shape": self.shape, "typestr": np.dtype(self.dtype).str, "data": (self.ptr, False),
                "strides": None, "version": 3, "stream": None}

    def __repr__(self) -> str:
        state = "freed" if self._ptr is None else hex(self._ptr)
        return f"cudann.DeviceArray(shape={self.shape}, dtype={self.dtype}{', pinned' if self.pinned else ''}, at {state})"


def to_device(array, *, stream=None) -> DeviceArray:
    """A :class:`DeviceArray` copy of host `array`."""
    return DeviceArray.from_numpy(array, stream=stream)
