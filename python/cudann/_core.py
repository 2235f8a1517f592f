"""The loaded library, its errors, and the adaptation of array arguments.

Everything that reaches the C ABI passes through :func:`call`, which converts
each argument to the ctypes type the header declares: an array's dtype must be
the pointee's (``const float *`` wants float32, ``int32_t *`` int32, ...), an
integer must fit its C type. Violations are ``TypeError``/``ValueError`` raised
before the library is entered; a non-zero return code is a :class:`CudannError`.
"""
from __future__ import annotations

import ctypes
import math
import operator
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ._header import CODES, HEADER, PARAM_NAMES, PROTOTYPES

LIBRARY = Path(__file__).with_name("libcudann.so")

_lib = ctypes.CDLL(str(LIBRARY))
for _name, (_restype, _argtypes) in PROTOTYPES.items():
    _fn = getattr(_lib, _name)
    _fn.restype, _fn.argtypes = _restype, _argtypes

_DATA_TYPES = ("CUDANN_F32", "CUDANN_F16", "CUDANN_BF16", "CUDANN_I32", "CUDANN_I64", "CUDANN_F64", "CUDANN_U8")
CODE_NAMES = {v: k for k, v in CODES.items() if k not in _DATA_TYPES}  # return code -> CUDANN_* name

# dtype name <-> CUDANN_* data-type code (the `void *` tensors and checkpoints).
DTYPE_CODES = {
    "float32": CODES["CUDANN_F32"], "float16": CODES["CUDANN_F16"], "bfloat16": CODES["CUDANN_BF16"],
    "int32": CODES["CUDANN_I32"], "int64": CODES["CUDANN_I64"], "float64": CODES["CUDANN_F64"],
    "uint8": CODES["CUDANN_U8"],
}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}

# The dtype each typed pointer must point at.
_POINTEE = {
    ctypes.c_float: "float32", ctypes.c_int: "int32", ctypes.c_int32: "int32",
    ctypes.c_int64: "int64", ctypes.c_uint64: "uint64",
}
_INT_RANGE = {
    ctypes.c_int: (-2**31, 2**31 - 1), ctypes.c_int32: (-2**31, 2**31 - 1),
    ctypes.c_int64: (-2**63, 2**63 - 1), ctypes.c_uint64: (0, 2**64 - 1),
}


class Owned:
    """A library object (a file, a writer, a stream, memory) released by
    ``_release``: on leaving a ``with`` block and when garbage-collected."""

    def _release(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def __del__(self):
        try:
            self._release()
        except Exception:
            pass


class Handle(Owned):
    """An :class:`Owned` library handle (``void *``, set by the subclass's create
    call): :attr:`handle` while it lives, released once by ``_destroy_fn``."""

    _handle: Optional[int] = None
    _destroy_fn: str  # the C function that releases it
    _gone: str  # the ValueError message once it is released, e.g. "stream is destroyed"

    @property
    def handle(self) -> int:
        """The raw ``void *`` handle."""
        if self._handle is None:
            raise ValueError(self._gone)
        return self._handle

    def _release(self) -> None:
        if self._handle is not None:
            h, self._handle = self._handle, None
            call(self._destroy_fn, h)


class CudannError(RuntimeError):
    """A call the library refused or could not complete.

    ``code`` is the ``CUDANN_*`` return code (e.g. -2, ``CUDANN_INVALID_VALUE``),
    ``name`` its name, ``function`` the C function, and the message is
    ``cudann_last_error()`` for that call (it names the function and argument).
    """

    def __init__(self, code: int, message: str, function: str = ""):
        self.code = int(code)
        self.name = CODE_NAMES.get(self.code, "CUDANN_UNKNOWN")
        self.function = function
        self.message = message
        super().__init__(f"{message or function} [{self.name} ({self.code})]")


def last_error() -> str:
    """``cudann_last_error()``: why the most recent call on this thread failed ("" if it succeeded)."""
    return _lib.cudann_last_error().decode("utf-8", "replace")


def version() -> str:
    """The library version, e.g. ``"0.1.0"``."""
    return _lib.cudann_version().decode()


def backend() -> str:
    """Which backend serves calls on this thread, and why (``"cpu: ..."`` or ``"cuda: ..."``)."""
    return _lib.cudann_backend().decode("utf-8", "replace")


# --------------------------------------------------------------------------- arrays

def dtype_name(dt: Any) -> str:
    return np.dtype(dt).name if not isinstance(dt, str) else dt


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a dtype name; ``"bfloat16"`` is ``ml_dtypes.bfloat16``
    (a TypeError when that package is not installed: numpy itself has none)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("numpy has no bfloat16: install ml_dtypes, or pass out=") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class Arr:
    """An array argument seen through its raw pointer: numpy, device memory,
    ``__cuda_array_interface__`` or DLPack."""

    __slots__ = ("obj", "ptr", "shape", "dtype", "strides", "device", "kind", "stream", "readonly", "keep")

    def __init__(self, obj, ptr, shape, dtype, strides, device, kind, stream=None, readonly=False, keep=None):
        self.obj, self.ptr, self.shape, self.dtype = obj, int(ptr or 0), tuple(int(s) for s in shape), dtype
        self.strides = None if strides is None else tuple(int(s) for s in strides)
        self.device, self.kind, self.stream, self.readonly, self.keep = device, kind, stream, readonly, keep

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    def contiguous(self) -> bool:
        if self.strides is None or self.size == 0:
            return True
        want = 1
        for dim, stride in zip(reversed(self.shape), reversed(self.strides)):
            if dim != 1 and stride != want:
                return False
            want *= dim
        return True

    def elem_strides(self):
        if self.strides is not None:
            return self.strides
        out, acc = [], 1
        for dim in reversed(self.shape):
            out.append(acc)
            acc *= dim
        return tuple(reversed(out))


def _numpy(obj: np.ndarray) -> Arr:
    item = obj.dtype.itemsize
    if any(s % item for s in obj.strides):
        raise ValueError("array strides are not a multiple of its item size")
    return Arr(obj, obj.ctypes.data, obj.shape, obj.dtype.name, [s // item for s in obj.strides],
               False, "numpy", readonly=not obj.flags.writeable)


def _cai(obj, cai: dict) -> Arr:
    module = type(obj).__module__.split(".")[0]
    kind = module if module in ("torch", "cupy") else "cai"
    dt = np.dtype(cai["typestr"])
    ptr, readonly = cai["data"]
    strides = cai.get("strides")
    if strides is not None:
        strides = [s // dt.itemsize for s in strides]
    return Arr(obj, ptr, cai["shape"], dt.name, strides, True, kind, stream=cai.get("stream"), readonly=readonly)


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_DL_CODES = {(0, 8): "int8", (0, 16): "int16", (0, 32): "int32", (0, 64): "int64", (1, 8): "uint8",
             (1, 16): "uint16", (1, 32): "uint32", (1, 64): "uint64", (2, 16): "float16",
             (2, 32): "float32", (2, 64): "float64", (4, 16): "bfloat16", (6, 8): "bool"}
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13


def _dlpack(obj, stream) -> Arr:
    dev_type, _ = obj.__dlpack_device__()
    device = int(dev_type) in (_DL_CUDA, _DL_CUDA_MANAGED)
    if device:
        try:
            capsule = obj.__dlpack__(stream=stream if stream else None)
        except TypeError:
            capsule = obj.__dlpack__()
    else:
        capsule = obj.__dlpack__()
    # DLManagedTensor starts with its DLTensor; the capsule (not consumed) stays alive in `keep`.
    t = _DLTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    if t.dtype.lanes != 1 or (t.dtype.code, t.dtype.bits) not in _DL_CODES:
        raise TypeError(f"unsupported DLPack data type (code {t.dtype.code}, {t.dtype.bits} bits)")
    shape = [t.shape[i] for i in range(t.ndim)]
    strides = [t.strides[i] for i in range(t.ndim)] if t.strides else None
    module = type(obj).__module__.split(".")[0]  # torch bfloat16 tensors come this way
    kind = module if device and module in ("torch", "cupy") else "dlpack"
    return Arr(obj, (t.data or 0) + t.byte_offset, shape, _DL_CODES[(t.dtype.code, t.dtype.bits)], strides,
               device, kind, keep=capsule)


def adapt(obj, name: str = "array", stream: Optional[int] = None) -> Optional[Arr]:
    """The raw view of one array argument (``None`` stays ``None``)."""
    if obj is None or isinstance(obj, Arr):
        return obj
    if isinstance(obj, np.ndarray):
        return _numpy(obj)
    own = getattr(obj, "_cudann_arr", None)  # DeviceArray
    if own is not None:
        return own()
    try:
        cai = obj.__cuda_array_interface__
    except (AttributeError, TypeError):  # absent, or a dtype the producer cannot express (torch bf16)
        cai = None
    # A raw-bytes typestr ("<V2": newer torch's bfloat16) names no element type: DLPack does.
    if cai is not None and np.dtype(cai["typestr"]).kind == "V" and hasattr(obj, "__dlpack__"):
        cai = None
    if cai is not None:
        return _cai(obj, cai)
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        return _dlpack(obj, stream)
    if isinstance(obj, (list, tuple, int, float, np.generic)):
        raise TypeError(f"{name}: expected an array, got {type(obj).__name__} (use numpy.asarray(..., dtype=...))")
    raise TypeError(f"{name}: expected a numpy array, device array, __cuda_array_interface__ or DLPack "
                    f"object, got {type(obj).__name__}")


def require(a: Optional[Arr], name: str, dtypes: Sequence[str] = (), ndim: Optional[int] = None,
            min_ndim: int = 0, contiguous: bool = True, writable: bool = False) -> Optional[Arr]:
    """Checks one adapted argument: dtype (TypeError), rank, contiguity, writability (ValueError)."""
    if a is None:
        return None
    if dtypes and a.dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(dtypes)}, got {a.dtype}")
    if ndim is not None and len(a.shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if len(a.shape) < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {a.shape}")
    if contiguous and not a.contiguous():
        raise ValueError(f"{name} is not C-contiguous")
    if writable and a.readonly:
        raise ValueError(f"{name} is read-only")
    return a


# ------------------------------------------------------------------ output allocation

def _torch_empty(t: Arr, shape, dtype):
    import torch
    return torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=t.obj.device)


def _cupy_empty(t: Arr, shape, dtype):
    import cupy
    with cupy.cuda.Device(t.obj.device.id):
        return cupy.empty(tuple(shape), dtype=dtype)


def empty_like(template: Optional[Arr], shape, dtype: str):
    """A fresh output of `shape`/`dtype` allocated like `template`: numpy for
    host arrays (and when there is none), torch/CuPy for their tensors,
    :class:`cudann.DeviceArray` for other device memory."""
    if template is None or not template.device:
        return np.empty(tuple(shape), dtype=numpy_dtype(dtype))
    if template.kind == "torch":
        return _torch_empty(template, shape, dtype)
    if template.kind == "cupy":
        return _cupy_empty(template, shape, dtype)
    from .memory import DeviceArray
    return DeviceArray(shape, dtype)


def host_to_like(template: Optional[Arr], host: np.ndarray):
    """`host` moved next to `template` (the same allocation rules as `empty_like`)."""
    if template is None or not template.device:
        return host
    if template.kind == "torch":
        import torch
        return torch.from_numpy(host).to(template.obj.device)
    if template.kind == "cupy":
        import cupy
        with cupy.cuda.Device(template.obj.device.id):
            return cupy.asarray(host)
    from .memory import DeviceArray
    return DeviceArray.from_numpy(host)


def output(out, template: Optional[Arr], name: str, shape, dtype: str, stream=None):
    """`(object, Arr)` for an output: `out` checked (dtype, exact shape,
    contiguity, writability), or a fresh allocation when `out` is None."""
    shape = tuple(int(s) for s in shape)
    if out is None:
        obj = empty_like(template, shape, dtype)
        return obj, adapt(obj, name, stream)
    a = require(adapt(out, name, stream), name, (dtype,), writable=True)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return out, a


def same_shape(a: Arr, b: Arr, an: str, bn: str):
    if a.shape != b.shape:
        raise ValueError(f"{bn} must have the shape of {an} {a.shape}, got {b.shape}")


def dim(value, name: str) -> int:
    """A size argument (an `int` of the C ABI): an integer (TypeError otherwise) that fits."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not -2**31 <= v < 2**31:
        raise ValueError(f"{name} = {v} does not fit a C int")
    return v


# ------------------------------------------------------------------------ streams

def stream_handle(stream) -> Optional[int]:
    """A `void *` stream from a :class:`cudann.Stream`, an int, a torch stream
    (``.cuda_stream``), a CuPy stream (``.ptr``) or a ctypes pointer."""
    if stream is None:
        return None
    for attr in ("handle", "cuda_stream", "ptr", "value"):
        v = getattr(stream, attr, None)
        if isinstance(v, int) or (attr == "value" and v is None and isinstance(stream, ctypes.c_void_p)):
            return v or None
    if isinstance(stream, int):
        return stream or None
    raise TypeError(f"stream: expected a cudann.Stream, an int handle, or a torch/CuPy stream, got {type(stream).__name__}")


def infer_stream(stream, arrays: Sequence[Optional[Arr]]) -> Optional[int]:
    """The stream a call runs on: `stream` when given, otherwise the stream of
    the first device array (torch's current stream, the CUDA array interface's
    ``stream``), otherwise NULL (the default stream)."""
    if stream is not None:
        return stream_handle(stream)
    for a in arrays:
        if a is None or not a.device:
            continue
        if a.kind == "torch":
            import torch
            return torch.cuda.current_stream(a.obj.device).cuda_stream or None
        if a.stream not in (None, 0, 1):
            return int(a.stream)  # 2 is CUDA's per-thread default stream handle
        return None
    return None


# --------------------------------------------------------------------------- calls

def _convert(fn_name: str, pname: str, value, ptype):
    if isinstance(value, Arr):
        if ptype is ctypes.c_void_p:
            return value.ptr or None
        want = _POINTEE.get(getattr(ptype, "_type_", None))
        if want is None:
            raise TypeError(f"{fn_name}: {pname} is not an array parameter")
        if value.dtype != want:
            raise TypeError(f"{pname} must be {want}, got {value.dtype}")
        return ctypes.cast(value.ptr or None, ptype)
    if value is None:
        return None
    rng = _INT_RANGE.get(ptype)
    if rng is not None:
        if isinstance(value, float) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{pname} must be an integer, got {type(value).__name__}")
        if not rng[0] <= int(value) <= rng[1]:
            raise ValueError(f"{pname} = {int(value)} does not fit {ptype.__name__}")
        return int(value)
    if ptype is ctypes.c_float:
        return float(value)
    return value


def call(fn_name: str, *args) -> None:
    """Calls `fn_name` with header-typed arguments; raises CudannError on a non-zero code."""
    _, argtypes = PROTOTYPES[fn_name]
    names = PARAM_NAMES[fn_name]
    if len(args) != len(argtypes):
        raise TypeError(f"{fn_name} takes {len(argtypes)} arguments, got {len(args)}")
    conv = [_convert(fn_name, n, a, t) for a, n, t in zip(args, names, argtypes)]
    code = getattr(_lib, fn_name)(*conv)
    if code != 0:
        raise CudannError(code, last_error(), fn_name)


# ------------------------------------------------------------------ the raw layer

def as_pointer(arr, ptype):
    """A typed pointer to numpy `arr`'s data, or an error if the layout or dtype is wrong."""
    if arr is None:
        return None
    if ptype is ctypes.c_void_p:  # typed by a separate dtype argument (CUDANN_F32, ...)
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"expected a numpy array, got {type(arr).__name__}")
        if not arr.flags.c_contiguous:
            raise ValueError("array is not C-contiguous")
        return arr.ctypes.data_as(ctypes.c_void_p)
    want = _POINTEE.get(getattr(ptype, "_type_", None))
    if want is None:
        raise TypeError(f"no numpy dtype for pointer type {ptype!r}")
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected a numpy array of {want}, got {type(arr).__name__}")
    if arr.dtype != np.dtype(want):
        raise TypeError(f"expected dtype {want}, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError("array is not C-contiguous")
    return arr.ctypes.data_as(ptype)


class RawLibrary:
    """Every export of ``cudann.h`` as declared there, returning the C code.

    ``raw.cuda_silu(x, y, n, None)``: numpy arguments become typed pointers
    (dtype and C-contiguity checked), everything else is passed to ctypes as is.
    For ABI-level work (NULL pointers, explicit sizes) that the array API hides.
    """

    def __init__(self):
        self.cdll = _lib

    def __getattr__(self, name):
        if name not in PROTOTYPES:
            raise AttributeError(f"{name} is not declared in cudann.h")
        fn = getattr(_lib, name)

        def raw_call(*args):
            conv = [as_pointer(a, t) if isinstance(a, np.ndarray) else a for a, t in zip(args, fn.argtypes)]
            return fn(*conv)

        raw_call.__name__ = name
        return raw_call

    def last_error(self) -> str:
        return last_error()

    def version(self) -> str:
        return version()


raw = RawLibrary()
