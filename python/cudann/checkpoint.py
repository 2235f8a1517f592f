"""safetensors checkpoints through the library (``cudann_safetensors_*``)."""
from __future__ import annotations

import ctypes
import os
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ._core import CODE_DTYPES, DTYPE_CODES, Handle, adapt, call, dtype_name, require, stream_handle

__all__ = ["SafetensorsFile", "SafetensorsWriter", "load_file", "save_file"]

PathLike = Union[str, bytes, os.PathLike]


def _numpy_dtype(name: str):
    if name == "bfloat16":
        try:
            import ml_dtypes
            return np.dtype(ml_dtypes.bfloat16)
        except ImportError:
            return np.dtype(np.uint16)  # the raw bits
    return np.dtype(name)


def _cname(name: str) -> bytes:
    return name.encode("utf-8") if isinstance(name, str) else bytes(name)


class SafetensorsFile(Handle):
    """A safetensors file opened for reading (``cudann_safetensors_open``).

    ``with SafetensorsFile(path) as f: w = f["w"]``; ``f.keys()`` in file order,
    ``f.info(name)`` -> ``(dtype, shape)``, ``f.read(name, out=...)``. bfloat16
    tensors come as ``ml_dtypes.bfloat16`` when that package exists, else as uint16 bits.
    """

    def __init__(self, path: PathLike):
        h = ctypes.c_void_p()
        call("cudann_safetensors_open", os.fsencode(path), ctypes.byref(h))
        self._handle = h.value

    _destroy_fn, _gone = "cudann_safetensors_close", "file is closed"

    def close(self) -> None:
        """Closes the file (idempotent)."""
        self._release()

    def __len__(self) -> int:
        """The number of tensors in the file."""
        n = ctypes.c_int64()
        call("cudann_safetensors_count", self.handle, ctypes.byref(n))
        return n.value

    def name(self, index: int) -> str:
        """The name of tensor `index` (file order)."""
        p = ctypes.c_char_p()
        call("cudann_safetensors_name", self.handle, int(index), ctypes.byref(p))
        return p.value.decode("utf-8")

    def keys(self) -> List[str]:
        """Every tensor name, in file order."""
        return [self.name(i) for i in range(len(self))]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, name: str) -> bool:
        return name in self.keys()

    def info(self, name: str, max_dims: int = 32) -> Tuple[str, Tuple[int, ...]]:
        """``(dtype name, shape)`` of tensor `name`."""
        dt, nd = ctypes.c_int(), ctypes.c_int()
        shape = np.zeros(max_dims, np.int64)
        call("cudann_safetensors_info", self.handle, _cname(name), ctypes.byref(dt), ctypes.byref(nd), adapt(shape),
             max_dims)
        return CODE_DTYPES[dt.value], tuple(int(s) for s in shape[: nd.value])

    def read(self, name: str, out=None, *, stream=None):
        """Tensor `name` as a new numpy array, or copied into host array `out`."""
        dtype, shape = self.info(name)
        if out is None:
            out = np.empty(shape, _numpy_dtype(dtype))
        a = require(adapt(out, "out"), "out", writable=True)
        count = 1
        for s in shape:
            count *= s
        if a.size * a.itemsize != count * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize):
            raise ValueError(f"out must hold {count} {dtype} elements, got shape {a.shape} of {a.dtype}")
        call("cudann_safetensors_read", self.handle, _cname(name), DTYPE_CODES[dtype], a, count, stream_handle(stream))
        return out

    __getitem__ = read


class SafetensorsWriter(Handle):
    """Assembles a safetensors file: ``add`` tensors (copied at once), ``save`` to a path."""

    def __init__(self):
        h = ctypes.c_void_p()
        call("cudann_safetensors_writer_create", ctypes.byref(h))
        self._handle = h.value

    _destroy_fn, _gone = "cudann_safetensors_writer_free", "writer is freed"

    def add(self, name: str, array, *, dtype: Optional[str] = None, stream=None) -> None:
        """Adds host `array` as tensor `name`; `dtype` overrides the stored type
        (e.g. ``"bfloat16"`` for uint16 bits)."""
        a = require(adapt(array, "array"), "array")
        dt = dtype_name(dtype) if dtype is not None else a.dtype
        if dt not in DTYPE_CODES:
            raise TypeError(f"cannot store dtype {dt} (one of {', '.join(DTYPE_CODES)})")
        if (2 if dt == "bfloat16" else np.dtype(dt).itemsize) != a.itemsize:
            raise TypeError(f"dtype {dt} does not match the array's {a.dtype}")
        shape = np.array(a.shape, np.int64)
        call("cudann_safetensors_writer_add", self.handle, _cname(name), DTYPE_CODES[dt], len(a.shape), adapt(shape),
             a, stream_handle(stream))

    def save(self, path: PathLike) -> None:
        """Writes every tensor added so far to `path` (atomically)."""
        call("cudann_safetensors_writer_save", self.handle, os.fsencode(path))

    def free(self) -> None:
        """Releases the writer and the data it holds (idempotent)."""
        self._release()


def load_file(path: PathLike) -> Dict[str, np.ndarray]:
    """Every tensor of a safetensors file, as numpy arrays."""
    with SafetensorsFile(path) as f:
        return {name: f.read(name) for name in f.keys()}


def save_file(tensors: Dict[str, object], path: PathLike) -> None:
    """Writes `{name: host array}` as a safetensors file."""
    with SafetensorsWriter() as w:
        for name, arr in tensors.items():
            w.add(name, arr)
        w.save(path)
