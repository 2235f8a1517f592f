"""Device memory through ctypes: allocate, upload, run ops on the buffers,
download, check against numpy, free; misuse is -2. On a GPU machine, library
memory interoperates with PyTorch and CuPy (their pointers and streams passed
to the library, the library's pointers wrapped by them); skipped, visibly,
where they or a GPU are absent."""
import ctypes

import numpy as np
import pytest

from cudann_ctypes import CODES

OK, INVALID = CODES["CUDANN_SUCCESS"], CODES["CUDANN_INVALID_VALUE"]


def malloc(lib, nbytes):
    ptr = ctypes.c_void_p()
    assert lib.cudann_malloc(ctypes.byref(ptr), nbytes) == OK, lib.last_error()
    return ptr.value


def upload(lib, arr):
    ptr = malloc(lib, arr.nbytes)
    assert lib.cudann_memcpy(ptr, arr.ctypes.data, arr.nbytes, None) == OK, lib.last_error()
    return ptr


def download(lib, ptr, n, dtype=np.float32):
    out = np.full(n, np.nan, dtype=dtype)
    assert lib.cudann_memcpy(out.ctypes.data, ptr, out.nbytes, None) == OK, lib.last_error()
    return out


def test_allocate_upload_run_download_free(lib, rng):
    rows, cols = 13, 257
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    dx, dw, dy = upload(lib, x), upload(lib, w), malloc(lib, x.nbytes)
    stream = ctypes.c_void_p()
    assert lib.cudann_stream_create(ctypes.byref(stream)) == OK
    f32 = ctypes.POINTER(ctypes.c_float)
    as_f32 = lambda p: ctypes.cast(p, f32)
    assert lib.cuda_rmsnorm(as_f32(dx), as_f32(dw), as_f32(dy), rows, cols, 1e-5, stream) == OK, lib.last_error()
    assert lib.cudann_stream_synchronize(stream) == OK
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(download(lib, dy, x.size).reshape(rows, cols), want, rtol=1e-5, atol=1e-6)
    assert lib.cudann_stream_destroy(stream) == OK
    for p in (dx, dw, dy):
        assert lib.cudann_free(p) == OK
    assert lib.cudann_free(dx) == INVALID
    assert "already freed" in lib.last_error()


def test_misuse_is_refused_and_nothing_is_written(lib):
    buf = upload(lib, np.arange(16, dtype=np.float32))
    host = np.full(32, 7.0, dtype=np.float32)
    assert lib.cudann_memcpy(host.ctypes.data, buf, 128, None) == INVALID
    assert "pass the end of a 64-byte allocation" in lib.last_error()
    assert (host == 7.0).all()
    assert lib.cudann_memset(buf, 0, -1, None) == INVALID
    np.testing.assert_array_equal(download(lib, buf, 16), np.arange(16, dtype=np.float32))
    assert lib.cudann_free(buf) == OK


def test_devices_and_backend(lib):
    text = lib.cudann_backend().decode()
    assert text.startswith(("cpu: ", "cuda: ")), text
    count, free, total = ctypes.c_int(-1), ctypes.c_int64(), ctypes.c_int64()
    assert lib.cudann_device_count(ctypes.byref(count)) == OK
    assert (count.value == 0) == text.startswith("cpu: ")
    assert lib.cudann_set_device(0) == OK
    assert lib.cudann_mem_info(ctypes.byref(free), ctypes.byref(total)) == OK
    assert 0 < free.value <= total.value


def gpu_backend(lib):
    return lib.cudann_backend().decode().startswith("cuda: ")


def test_torch_tensors_and_library_memory_interoperate(lib):
    torch = pytest.importorskip("torch")
    if not (torch.cuda.is_available() and gpu_backend(lib)):
        pytest.skip("no GPU")
    x = torch.randn(4096, device="cuda")
    ours = malloc(lib, x.numel() * 4)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        # torch memory -> library memory -> torch memory, on torch's stream.
        assert lib.cudann_memcpy(ours, x.data_ptr(), x.numel() * 4, stream.cuda_stream) == OK
        y = torch.empty_like(x)
        f32 = ctypes.POINTER(ctypes.c_float)
        assert lib.cuda_silu(ctypes.cast(ours, f32), ctypes.cast(y.data_ptr(), f32), x.numel(), stream.cuda_stream) == OK
    stream.synchronize()
    torch.testing.assert_close(y, torch.nn.functional.silu(x), rtol=1e-6, atol=1e-7)
    assert lib.cudann_free(ours) == OK


def test_cupy_wraps_library_memory(lib):
    cupy = pytest.importorskip("cupy")
    if not gpu_backend(lib):
        pytest.skip("no GPU")
    x = np.linspace(-3, 3, 1000, dtype=np.float32)
    ours = upload(lib, x)
    memory = cupy.cuda.UnownedMemory(ours, x.nbytes, owner=None)
    view = cupy.ndarray(x.shape, dtype=cupy.float32, memptr=cupy.cuda.MemoryPointer(memory, 0))
    np.testing.assert_array_equal(cupy.asnumpy(view * 2), x * 2)
    stream = ctypes.c_void_p()
    assert lib.cudann_stream_create(ctypes.byref(stream)) == OK
    with cupy.cuda.ExternalStream(stream.value):
        view *= 3  # CuPy work enqueued on the library's stream
    assert lib.cudann_stream_synchronize(stream) == OK
    np.testing.assert_array_equal(download(lib, ours, 1000), x * 3)
    assert lib.cudann_stream_destroy(stream) == OK
    assert lib.cudann_free(ours) == OK
