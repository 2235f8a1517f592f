"""The package itself: what it bundles, header parsing, pointer conversion,
every export wrapped, old-style callers of the bundled library."""
import ctypes
import inspect
import os
import re
from pathlib import Path

import numpy as np
import pytest

import cudann
import reference as ref
from checks import assert_ulp, assert_close
from cudann import CODES, HEADER, LIBRARY, PROTOTYPES, as_pointer, c_type

REPO_HEADER = Path(__file__).resolve().parents[2] / "include" / "cudann.h"

F32P = ctypes.POINTER(ctypes.c_float)


def test_the_installed_package_bundles_the_library_and_the_header():
    pkg = Path(cudann.__file__).parent
    assert LIBRARY == pkg / "libcudann.so" and LIBRARY.is_file()
    assert HEADER == pkg / "cudann.h" and HEADER.is_file()
    # Run from a checkout (bindings-test/run.sh), the bundled header is the repository's.
    if REPO_HEADER.is_file():
        assert HEADER.read_bytes() == REPO_HEADER.read_bytes()
    # bindings-test/run.sh names the directory it installed the package into.
    installed = os.environ.get("CUDANN_TEST_SITE")
    if installed:
        assert pkg.parent == Path(installed).resolve(), f"imported {pkg}, not the package installed in {installed}"


def test_every_export_has_a_python_function():
    assert set(cudann.C_FUNCTIONS) == set(PROTOTYPES)
    for c_name, py_name in cudann.C_FUNCTIONS.items():
        obj = cudann
        for part in py_name.split("."):
            obj = getattr(obj, part)
        assert callable(obj), c_name
        assert obj.__doc__, f"{py_name} has no docstring"
    for name in cudann.ops.__all__:  # the operators carry type hints
        assert "return" in inspect.get_annotations(getattr(cudann, name)), name


def test_header_declares_the_30_ops_and_3_string_services():
    names = set(PROTOTYPES)
    assert len([n for n in names if n.startswith("cuda_")]) == 30
    services = {"cudann_last_error", "cudann_version", "cudann_backend"}  # the const char* returns
    assert services <= names
    plain = ctypes.CDLL(str(LIBRARY))
    for name in names:  # every declared name is exported with that exact symbol
        assert hasattr(plain, name)
    for name, (restype, _) in PROTOTYPES.items():
        assert restype is (ctypes.c_char_p if name in services else ctypes.c_int32)


def test_header_signatures_parsed_exactly():
    i, f, i64, vp = ctypes.c_int, ctypes.c_float, ctypes.c_int64, ctypes.c_void_p
    assert PROTOTYPES["cuda_scale"][1] == [F32P, F32P, f, i64, vp]
    assert PROTOTYPES["cuda_gemm"][1] == [F32P, F32P, F32P, i, i, i, f, f, vp]
    assert PROTOTYPES["cuda_sample"][1] == [
        F32P, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_uint64), i, i, f, vp]
    # Every parameter of every prototype was mapped (none silently dropped).
    text = re.sub(r"//[^\n]*", "", HEADER.read_text())
    for name, (_, args) in PROTOTYPES.items():
        params = re.search(name + r"\s*\(([^)]*)\)", text).group(1).strip()
        assert len(args) == (0 if params == "void" else params.count(",") + 1), name


def test_type_mapping_and_codes():
    assert c_type("const float *") is F32P and c_type("float*") is F32P
    assert c_type("const int *") is ctypes.POINTER(ctypes.c_int)
    assert c_type("const uint64_t *") is ctypes.POINTER(ctypes.c_uint64)
    assert c_type("const char *") is ctypes.c_char_p
    with pytest.raises(ValueError):
        c_type("double")
    assert CODES == {"CUDANN_SUCCESS": 0, "CUDANN_NOT_AVAILABLE": -1, "CUDANN_INVALID_VALUE": -2,
                     "CUDANN_LAUNCH_FAILED": -3, "CUDANN_OUT_OF_MEMORY": -4, "CUDANN_INTERNAL": -5,
                     "CUDANN_F32": 0, "CUDANN_F16": 1, "CUDANN_BF16": 2, "CUDANN_I32": 3, "CUDANN_I64": 4,
                     "CUDANN_F64": 5, "CUDANN_U8": 6, "CUDANN_COMM_ID_BYTES": 128, "CUDANN_SUM": 0, "CUDANN_AVG": 1}


def test_as_pointer_refuses_wrong_dtype_and_strided_arrays(raw):
    good = np.zeros(8, np.float32)
    assert as_pointer(good, F32P) is not None
    with pytest.raises(TypeError):
        as_pointer(np.zeros(8, np.float64), F32P)
    with pytest.raises(TypeError):
        as_pointer(np.zeros(8, np.int64), ctypes.POINTER(ctypes.c_int32))
    with pytest.raises(ValueError):
        as_pointer(np.zeros(16, np.float32)[::2], F32P)
    with pytest.raises(ValueError):
        as_pointer(np.zeros((4, 4), np.float32).T, F32P)
    with pytest.raises(TypeError):
        as_pointer([1.0, 2.0], F32P)
    # Through the wrapper: the refused call never reaches the library.
    out = np.full(8, 3.0, np.float32)
    with pytest.raises(ValueError):
        raw.cuda_silu(np.zeros(16, np.float32)[::2], out, 8, None)
    with pytest.raises(TypeError):
        raw.cuda_silu(np.zeros(8, np.float64), out, 8, None)
    assert (out == 3.0).all()


def test_version_and_backend():
    assert re.fullmatch(r"\d+\.\d+\.\d+", cudann.version())
    assert cudann.__version__ == cudann.version()
    assert cudann.backend().startswith(("cpu: ", "cuda: "))


def test_old_style_cdll_without_argtypes(rng):
    """A legacy caller: no argtypes, default int restype, explicit ctypes scalars."""
    old = ctypes.CDLL(str(LIBRARY))
    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, np.float32)
    rc = old.cuda_silu(x.ctypes.data_as(F32P), y.ctypes.data_as(F32P), ctypes.c_int64(n), None)
    assert rc == 0
    assert_ulp(y, ref.silu(x))

    m, nn, k = 33, 31, 17
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, nn)).astype(np.float32)
    c = rng.standard_normal((m, nn)).astype(np.float32)
    want = 1.5 * ref.f64(a) @ ref.f64(b) - 0.5 * ref.f64(c)
    bound = 1.5 * np.abs(a) @ np.abs(b) + 0.5 * np.abs(c)  # c is overwritten below
    rc = old.cuda_gemm(a.ctypes.data_as(F32P), b.ctypes.data_as(F32P), c.ctypes.data_as(F32P),
                       m, nn, k, ctypes.c_float(1.5), ctypes.c_float(-0.5), None)
    assert rc == 0
    assert_close(c, want, rtol=1e-5, scale=bound)

    # The default int return carries the negative error code intact.
    rc = old.cuda_silu(x.ctypes.data_as(F32P), y.ctypes.data_as(F32P), ctypes.c_int64(-1), None)
    assert rc == -2
