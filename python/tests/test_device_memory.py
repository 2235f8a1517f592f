"""Device memory through the package: DeviceArray (cudann_malloc) allocated,
uploaded, used by ops, downloaded, checked against numpy, freed; Streams; the
raw memory calls and their misuse. Zero-copy interop: DLPack and
__cuda_array_interface__ objects, and on a GPU machine PyTorch and CuPy tensors
(their pointers and streams passed to the library, outputs allocated by them,
library memory wrapped by them); skipped, visibly, where they or a GPU are absent."""
import ctypes

import numpy as np
import pytest

import cudann
from checks import assert_close
from conftest import gpu_backend


def test_allocate_upload_run_download_free(rng):
    rows, cols = 13, 257
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    dx, dw = cudann.to_device(x), cudann.DeviceArray.from_numpy(w)
    assert (dx.shape, dx.dtype, dx.nbytes) == ((rows, cols), "float32", x.nbytes)
    with cudann.Stream() as stream:
        dy = cudann.rmsnorm(dx, dw, eps=1e-5, stream=stream)  # allocated like dx: a DeviceArray
        assert isinstance(dy, cudann.DeviceArray) and dy.shape == (rows, cols)
        stream.synchronize()
        got = dy.numpy(stream=stream)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    ptr = dx.ptr
    for d in (dx, dw, dy):
        d.free()
    d.free()  # idempotent
    with pytest.raises(ValueError):
        dx.ptr
    with pytest.raises(cudann.CudannError) as e:  # the library refuses a double free
        cudann.free(ptr)
    assert e.value.code == cudann.INVALID_VALUE and "already freed" in e.value.message


def test_ops_chain_on_device_memory(rng):
    a = rng.standard_normal((33, 17)).astype(np.float32)
    b = rng.standard_normal((17, 9)).astype(np.float32)
    with cudann.to_device(a) as da, cudann.to_device(b) as db, cudann.DeviceArray((33, 9)) as dc:
        cudann.gemm(da, db, out=dc)
        p = cudann.softmax(dc)
        assert_close(p.numpy(), np.asarray(_softmax(a.astype(np.float64) @ b)), rtol=1e-5, atol=1e-7)
        cudann.zero_grad(dc)
        assert (dc.numpy() == 0).all()
        dc.fill_bytes(0)
        p.free()


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_raw_memory_calls_and_misuse():
    buf = cudann.to_device(np.arange(16, dtype=np.float32))
    host = np.full(32, 7.0, dtype=np.float32)
    with pytest.raises(cudann.CudannError) as e:
        cudann.memcpy(host.ctypes.data, buf.ptr, 128)
    assert "pass the end of a 64-byte allocation" in e.value.message
    assert (host == 7.0).all()
    with pytest.raises(ValueError):  # sizes disagree: refused before the call
        cudann.memcpy(host, buf)
    with pytest.raises(cudann.CudannError):
        cudann.memset(buf.ptr, 0, -1)
    np.testing.assert_array_equal(buf.numpy(), np.arange(16, dtype=np.float32))
    cudann.memset(buf, 0x3F)  # every byte 0x3F
    assert (buf.numpy().view(np.uint8) == 0x3F).all()
    p = cudann.malloc(64)
    q = cudann.malloc_host(64)
    cudann.memcpy(p, buf.ptr, 64)
    cudann.memcpy(q, p, 64)
    back = np.empty(16, np.float32)
    cudann.memcpy(back, q, 64)
    assert (back.view(np.uint8) == 0x3F).all()
    cudann.free(p), cudann.free(q), buf.free()
    assert cudann.malloc(0) == 0
    pinned = cudann.DeviceArray.from_numpy(np.ones(4, np.float32), pinned=True)
    assert (cudann.silu(pinned) == cudann.silu(np.ones(4, np.float32))).all()  # host memory: numpy output
    pinned.free()


def test_streams():
    s = cudann.Stream()
    assert s.handle and int(s) == s.handle
    cudann.stream_synchronize(s)
    cudann.stream_synchronize(None)
    handle = s.handle
    s.destroy()
    s.destroy()  # idempotent
    with pytest.raises(ValueError):
        s.synchronize()
    with pytest.raises(cudann.CudannError):  # a destroyed stream is refused by the library
        cudann.stream_synchronize(handle)
    y = cudann.silu(np.ones(4, np.float32), stream=ctypes.c_void_p(None))
    assert y.shape == (4,)


def test_devices_and_backend():
    text = cudann.backend()
    assert text.startswith(("cpu: ", "cuda: ")), text
    assert (cudann.device_count() == 0) == text.startswith("cpu: ")
    cudann.set_device(0)
    assert cudann.get_device() == 0
    free, total = cudann.mem_info()
    assert 0 < free <= total
    cudann.device_synchronize()
    with pytest.raises(cudann.CudannError):
        cudann.set_device(1000)


class _DLPackOnly:
    """An object that offers only DLPack (as JAX, TensorFlow, ... do)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_dlpack_objects_are_used_in_place(rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    y = cudann.softmax(_DLPackOnly(x))  # host DLPack: a numpy output
    assert isinstance(y, np.ndarray)
    assert_close(y, _softmax(x.astype(np.float64)), rtol=1e-5)
    out = np.zeros_like(x)
    cudann.silu(_DLPackOnly(x), out=_DLPackOnly(out))  # written through the DLPack view
    assert_close(out, x / (1 + np.exp(-x.astype(np.float64))), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        cudann.silu(_DLPackOnly(x[:, ::2]))  # strides come through DLPack too
    with pytest.raises(TypeError):
        cudann.silu(_DLPackOnly(x.astype(np.float64)))


def test_jax_arrays_through_dlpack(rng):
    jnp = pytest.importorskip("jax.numpy")
    x = rng.standard_normal((3, 8)).astype(np.float32)
    y = cudann.rmsnorm(jnp.asarray(x), jnp.ones(8, jnp.float32), eps=1e-5)
    y = y.numpy() if isinstance(y, cudann.DeviceArray) else y  # JAX's GPU arrays give library memory back
    assert_close(y, x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5), rtol=1e-5)


class _FakeCAI:
    """Host memory presented through __cuda_array_interface__ (valid on the CPU backend only)."""

    def __init__(self, a, stream=1):
        self.a = a
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (a.ctypes.data, False),
                                         "strides": None, "version": 3, "stream": stream}


def test_cuda_array_interface_adapter_on_the_cpu_backend(rng):
    if gpu_backend():
        pytest.skip("host memory posing as device memory only works on the CPU backend")
    x = rng.standard_normal(100).astype(np.float32)
    y = cudann.silu(_FakeCAI(x))
    assert isinstance(y, cudann.DeviceArray)  # a foreign device input: library memory out
    assert_close(y.numpy(), x / (1 + np.exp(-x.astype(np.float64))), rtol=1e-5, atol=1e-7)
    ro = _FakeCAI(np.zeros(100, np.float32))
    ro.__cuda_array_interface__["data"] = (ro.a.ctypes.data, True)
    with pytest.raises(ValueError):
        cudann.silu(x, out=ro)  # read-only per the interface


def test_device_array_exposes_cuda_array_interface_only_on_the_gpu():
    d = cudann.DeviceArray((2, 3))
    assert hasattr(d, "__cuda_array_interface__") == gpu_backend()
    d.free()


# ------------------------------------------------------------------ GPU interop

def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not (torch.cuda.is_available() and gpu_backend()):
        pytest.skip("no GPU")
    return torch


def test_torch_tensors_in_and_out(rng):
    torch = _torch_cuda()
    x = torch.randn(64, 129, device="cuda")
    w = torch.rand(129, device="cuda") + 0.5
    y = cudann.rmsnorm(x, w, eps=1e-5)  # allocated by torch, on x's device, on torch's current stream
    assert isinstance(y, torch.Tensor) and y.device == x.device and y.shape == x.shape
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = torch.empty_like(x)
        cudann.silu(x, out=out)  # runs on `stream`, torch's current one
    stream.synchronize()
    torch.testing.assert_close(out, torch.nn.functional.silu(x), rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError):
        cudann.silu(x.double())
    with pytest.raises(ValueError):
        cudann.silu(x.t())


def test_torch_tensors_and_library_memory_interoperate():
    torch = _torch_cuda()
    x = torch.randn(4096, device="cuda")
    ours = cudann.DeviceArray(4096)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        # torch memory -> library memory -> torch memory, on torch's stream.
        cudann.memcpy(ours, x, stream=stream)
        y = torch.empty_like(x)
        cudann.silu(ours, out=y, stream=stream)
    stream.synchronize()
    torch.testing.assert_close(y, torch.nn.functional.silu(x), rtol=1e-6, atol=1e-7)
    view = torch.as_tensor(ours, device="cuda")  # zero-copy through __cuda_array_interface__
    torch.testing.assert_close(view, x)
    ours.free()


def test_torch_bfloat16_goes_through_dlpack():
    torch = _torch_cuda()
    g, u = (torch.randn(4096, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    y = cudann.swiglu(g, u)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16 and y.device == g.device
    # The float32 op on the widened inputs, rounded once (float32 SiLU within float32 rounding).
    want = (torch.nn.functional.silu(g.double()) * u.double()).to(torch.bfloat16)
    torch.testing.assert_close(y, want, rtol=1e-2, atol=1e-6)


def test_cupy_arrays_and_library_memory():
    cupy = pytest.importorskip("cupy")
    if not gpu_backend():
        pytest.skip("no GPU")
    x = cupy.linspace(-3, 3, 1000, dtype=cupy.float32)
    y = cudann.silu(x)  # allocated by CuPy, on CuPy's current stream
    assert isinstance(y, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(y), cupy.asnumpy(x / (1 + cupy.exp(-x))), rtol=1e-6, atol=1e-7)
    ours = cudann.to_device(cupy.asnumpy(x))
    view = cupy.asarray(ours)  # zero-copy through __cuda_array_interface__
    with cudann.Stream() as stream:
        with cupy.cuda.ExternalStream(stream.handle):
            view *= 3  # CuPy work enqueued on the library's stream
        stream.synchronize()
    np.testing.assert_array_equal(ours.numpy(), cupy.asnumpy(x) * 3)
    ours.free()
