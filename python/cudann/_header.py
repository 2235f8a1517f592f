"""Parses the bundled ``cudann.h`` into ctypes prototypes and constants.

The argtypes and restype of every export come from the header that ships with
the package (a copy of ``include/cudann.h`` made at build time), so the Python
side cannot drift from the C ABI.
"""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

# The copy bundled with the package; in the source tree, include/cudann.h
# (bench/ loads this module from there).
HEADER = Path(__file__).with_name("cudann.h")
if not HEADER.exists():
    HEADER = Path(__file__).resolve().parents[2] / "include" / "cudann.h"

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

_DECL = re.compile(r"([A-Za-z_][\w \*]*?)\b((?:cuda|cudann)_\w+)\s*\(([^)]*)\)\s*;")
_DEFINE = re.compile(r"#define\s+(CUDANN_\w+)\s+(-?\d+)")


def c_type(spelling: str):
    """Maps one C type spelling (e.g. ``const float *``) to its ctypes type."""
    s = re.sub(r"\bconst\b", "", spelling)
    s = re.sub(r"\s*\*\s*", " *", " ".join(s.split())).strip().replace("* *", "**")
    if s in _SCALARS:
        return _SCALARS[s]
    if s in _POINTERS:
        return _POINTERS[s]
    raise ValueError(f"cudann.h: unmapped C type {spelling!r}")


def _param_type(param: str) -> str:
    # Drop the parameter name: the last identifier, unless the declaration is unnamed.
    m = re.match(r"^(.*?[\s\*])([A-Za-z_]\w*)$", param.strip())
    return param.strip() if m is None or m.group(2) in _SCALARS else m.group(1)


def _param_name(param: str) -> str:
    m = re.match(r"^(.*?[\s\*])([A-Za-z_]\w*)$", param.strip())
    return "" if m is None or m.group(2) in _SCALARS else m.group(2)


def parse_header(text: str):
    """Returns ``({name: (restype, [argtypes])}, {CUDANN_CODE: value})``."""
    protos, _, codes = parse_header_full(text)
    return protos, codes


def parse_header_full(text: str):
    """As :func:`parse_header`, plus ``{name: [parameter names]}``."""
    code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    code = re.sub(r"//[^\n]*", "", code)
    protos, names = {}, {}
    for ret, name, params in _DECL.findall(code):
        params = " ".join(params.split())
        plist = [] if params in ("", "void") else params.split(",")
        protos[name] = (c_type(ret), [c_type(_param_type(p)) for p in plist])
        names[name] = [_param_name(p) for p in plist]
    codes = {k: int(v) for k, v in _DEFINE.findall(code)}
    return protos, names, codes


PROTOTYPES, PARAM_NAMES, CODES = parse_header_full(HEADER.read_text(encoding="utf-8"))
