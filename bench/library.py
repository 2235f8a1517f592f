"""The benchmarks' handle on a built libcudann (CUDANN_LIB, default
target/release/libcudann.so), its prototypes parsed from include/cudann.h by
the Python package's own parser. Numpy arrays are passed as pointers to their
data; the header's types convert every scalar."""
import ctypes
import importlib.util
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cudann_header", REPO / "python" / "cudann" / "_header.py")
_header = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_header)


# The dtype a typed pointer must point at (`void *` takes any: a dtype argument says).
_POINTEE = {ctypes.c_float: np.float32, ctypes.c_int: np.int32, ctypes.c_int64: np.int64, ctypes.c_uint64: np.uint64}


def pointer(array, ptype):
    """`array`'s data as `ptype`; a strided array or the wrong dtype would be read as garbage."""
    want = _POINTEE.get(getattr(ptype, "_type_", None))
    if not array.flags.c_contiguous or (want is not None and array.dtype != want):
        raise TypeError(f"expected a C-contiguous {want.__name__ if want else 'array'}, got {array.dtype} {array.shape}")
    return array.ctypes.data_as(ptype)


class Library:
    def __init__(self, path=os.environ.get("CUDANN_LIB", REPO / "target" / "release" / "libcudann.so")):
        self.raw = ctypes.CDLL(str(path))
        for name, (restype, argtypes) in _header.PROTOTYPES.items():
            fn = getattr(self.raw, name)
            fn.restype, fn.argtypes = restype, argtypes

    def __getattr__(self, name):
        fn = getattr(self.raw, name)

        def call(*args):
            return fn(*[pointer(a, t) if isinstance(a, np.ndarray) else a for a, t in zip(args, fn.argtypes)])

        return call

    def last_error(self):
        return self.raw.cudann_last_error().decode()

    def version(self):
        return self.raw.cudann_version().decode()
