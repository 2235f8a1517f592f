"""ctypes binding for libcudann whose signatures come from include/cudann.h.

The argtypes/restype of every export are parsed from the header, so the Python
side cannot drift from the C ABI. `Cudann` wraps the CDLL: numpy arguments are
turned into typed pointers by `as_pointer`, which refuses anything that is not a
C-contiguous array of exactly the pointee's dtype (silently passing a strided or
float64 array would make the library read garbage).
"""
import ctypes
import os
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "include" / "cudann.h"
LIBRARY = Path(os.environ.get("CUDANN_LIB", REPO / "target" / "release" / "libcudann.so"))

# C type spelling (after `const` is dropped and spaces normalised) -> ctypes type.
_SCALARS = {
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "float": ctypes.c_float,
}
_POINTERS = {
    "float *": ctypes.POINTER(ctypes.c_float),
    "int *": ctypes.POINTER(ctypes.c_int),
    "int32_t *": ctypes.POINTER(ctypes.c_int32),
    "int64_t *": ctypes.POINTER(ctypes.c_int64),
    "uint64_t *": ctypes.POINTER(ctypes.c_uint64),
    "void *": ctypes.c_void_p,
    "void **": ctypes.POINTER(ctypes.c_void_p),
    "char *": ctypes.c_char_p,
    "char **": ctypes.POINTER(ctypes.c_char_p),
    # Checkpoint handles are opaque: passed as they were received.
    "CudannSafetensors *": ctypes.c_void_p,
    "CudannSafetensors **": ctypes.POINTER(ctypes.c_void_p),
    "CudannSafetensorsWriter *": ctypes.c_void_p,
    "CudannSafetensorsWriter **": ctypes.POINTER(ctypes.c_void_p),
}
# The numpy dtype each typed pointer must point at.
_POINTEE_DTYPE = {
    ctypes.c_float: np.dtype(np.float32),
    ctypes.c_int: np.dtype(np.int32),
    ctypes.c_int32: np.dtype(np.int32),
    ctypes.c_int64: np.dtype(np.int64),
    ctypes.c_uint64: np.dtype(np.uint64),
}

_DECL = re.compile(r"([A-Za-z_][\w \*]*?)\b((?:cuda|cudann)_\w+)\s*\(([^)]*)\)\s*;")
_DEFINE = re.compile(r"#define\s+(CUDANN_\w+)\s+(-?\d+)")


def c_type(spelling):
    """Maps one C type spelling (e.g. `const float *`) to its ctypes type."""
    s = re.sub(r"\bconst\b", "", spelling)
    s = re.sub(r"\s*\*\s*", " *", " ".join(s.split())).strip().replace("* *", "**")
    if s in _SCALARS:
        return _SCALARS[s]
    if s in _POINTERS:
        return _POINTERS[s]
    raise ValueError(f"cudann.h: unmapped C type {spelling!r}")


def _param_type(param):
    # Drop the parameter name: the last identifier, unless the declaration is unnamed.
    m = re.match(r"^(.*?[\s\*])([A-Za-z_]\w*)$", param.strip())
    return param.strip() if m is None or m.group(2) in _SCALARS else m.group(1)


def parse_header(text):
    """Returns ({name: (restype, [argtypes])}, {CUDANN_CODE: value})."""
    code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    code = re.sub(r"//[^\n]*", "", code)
    protos = {}
    for ret, name, params in _DECL.findall(code):
        params = " ".join(params.split())
        args = [] if params in ("", "void") else [c_type(_param_type(p)) for p in params.split(",")]
        protos[name] = (c_type(ret), args)
    codes = {k: int(v) for k, v in _DEFINE.findall(code)}
    return protos, codes


PROTOTYPES, CODES = parse_header(HEADER.read_text())


def as_pointer(arr, ptype):
    """A typed pointer to `arr`'s data, or an error if the layout or dtype is wrong."""
    if arr is None:
        return None
    if ptype is ctypes.c_void_p:  # typed by a separate dtype argument (CUDANN_F32, ...)
        if not arr.flags.c_contiguous:
            raise ValueError("array is not C-contiguous")
        return arr.ctypes.data_as(ctypes.c_void_p)
    want = _POINTEE_DTYPE.get(getattr(ptype, "_type_", None))
    if want is None:
        raise TypeError(f"no numpy dtype for pointer type {ptype!r}")
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected a numpy array of {want}, got {type(arr).__name__}")
    if arr.dtype != want:
        raise TypeError(f"expected dtype {want}, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError("array is not C-contiguous")
    return arr.ctypes.data_as(ptype)


class Cudann:
    """libcudann with header-derived prototypes; numpy arrays are converted checked."""

    def __init__(self, path=LIBRARY):
        self.raw = ctypes.CDLL(str(path))
        for name, (restype, argtypes) in PROTOTYPES.items():
            fn = getattr(self.raw, name)
            fn.restype, fn.argtypes = restype, argtypes

    def __getattr__(self, name):
        fn = getattr(self.raw, name)
        if name not in PROTOTYPES:
            raise AttributeError(f"{name} is not declared in cudann.h")

        def call(*args):
            conv = [as_pointer(a, t) if isinstance(a, np.ndarray) else a
                    for a, t in zip(args, fn.argtypes)]
            return fn(*conv)

        call.__name__ = name
        return call

    def last_error(self):
        return self.raw.cudann_last_error().decode()

    def version(self):
        return self.raw.cudann_version().decode()
