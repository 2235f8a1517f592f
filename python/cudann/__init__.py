"""cudann: neural-network operators on the GPU and the CPU, over numpy arrays,
device memory, and any ``__cuda_array_interface__`` or DLPack object.

>>> import numpy as np, cudann
>>> y = cudann.silu(np.linspace(-3, 3, 8, dtype=np.float32))

Conventions, for every operator:

* Shapes are inferred from the arrays; outputs are allocated when not given
  (``out=``), like the first input: numpy for numpy, torch/CuPy for their
  tensors, :class:`DeviceArray` for other device memory (library memory, or a
  ``__cuda_array_interface__``/DLPack object of another library).
* Inputs must have exactly the dtype the C ABI takes (float32 for ``float *``,
  int32 for ``int *``/``int32_t *``, uint64 seeds): no silent conversion.
  Ops with half-precision entry points (``add``, ``mul``, ``scale``, ``softmax``,
  ``rmsnorm``, the decoding ops, ``gemm_ex``, ``swiglu``, ``embedding``,
  ``attention_forward``, ``kv_cache_write``, ``rope_qk``) also take float16 and bfloat16
  (``ml_dtypes.bfloat16`` arrays, torch bfloat16 tensors) and answer in the
  input's dtype; :func:`convert` converts among the three.
  A wrong dtype is a ``TypeError``; a wrong shape, a non-contiguous or read-only
  array a ``ValueError``; both before the library is called.
* The library's own refusals (bad parameters, overlapping buffers, no GPU) raise
  :class:`CudannError`, with ``.code`` and the message of ``cudann_last_error()``.
* ``stream=`` takes a :class:`Stream`, a raw handle, or a torch/CuPy stream; by
  default a call runs on the stream of its device inputs (torch's current stream,
  the ``stream`` of the CUDA array interface), else on the default stream.
  Device arrays are used in place, without copies.

``cudann.raw`` is the C ABI itself (every export with its header prototype,
returning the C code) for what the array API hides (NULL pointers, sizes).
"""
from __future__ import annotations

from ._core import (CODES, HEADER, LIBRARY, CudannError, as_pointer, backend, last_error, raw, version)
from ._header import PARAM_NAMES, PROTOTYPES, c_type, parse_header
from .checkpoint import SafetensorsFile, SafetensorsWriter, load_file, save_file
from .comm import Communicator, comm_id
from .memory import (DeviceArray, Stream, device_count, device_synchronize, free, get_device, malloc, malloc_host,
                     mem_info, memcpy, memset, set_device, stream_synchronize, to_device)
from .ops import *  # noqa: F401,F403  (the operators; see cudann.ops.__all__)
from .ops import __all__ as _ops_all

__version__ = version()

SUCCESS = CODES["CUDANN_SUCCESS"]
NOT_AVAILABLE = CODES["CUDANN_NOT_AVAILABLE"]
INVALID_VALUE = CODES["CUDANN_INVALID_VALUE"]
LAUNCH_FAILED = CODES["CUDANN_LAUNCH_FAILED"]
OUT_OF_MEMORY = CODES["CUDANN_OUT_OF_MEMORY"]
INTERNAL = CODES["CUDANN_INTERNAL"]

# Every export of cudann.h -> the Python name that calls it.
C_FUNCTIONS = {
    "cuda_silu": "silu", "cudann_silu_backward": "silu_backward", "cuda_add": "add", "cuda_mul": "mul",
    "cuda_scale": "scale", "cudann_gelu": "gelu", "cudann_gelu_backward": "gelu_backward",
    "cudann_swiglu": "swiglu", "cudann_swiglu_backward": "swiglu_backward", "cudann_bias_add": "bias_add",
    "cudann_bias_backward": "bias_backward", "cuda_softmax": "softmax",
    "cudann_softmax_backward": "softmax_backward", "cuda_softmax_topk": "softmax_topk",
    "cuda_rmsnorm": "rmsnorm", "cuda_rmsnorm_residual": "rmsnorm_residual",
    "cudann_rmsnorm_backward": "rmsnorm_backward", "cudann_layernorm": "layernorm",
    "cudann_layernorm_backward": "layernorm_backward", "cuda_gemm": "gemm", "cuda_gemm_batched": "gemm_batched",
    "cudann_gemm_ex": "gemm_ex", "cudann_gemm_grouped": "gemm_grouped", "cuda_rope_freqs": "rope_freqs", "cuda_rope_forward": "rope_forward",
    "cuda_rope_qk": "rope_qk", "cudann_rope_backward": "rope_backward", "cuda_rope": "rope_inplace",
    "cuda_rope_ntk": "rope_ntk_inplace", "cuda_attention_scores": "attention_scores",
    "cuda_attention_output": "attention_output", "cuda_flash_attention": "flash_attention",
    "cuda_mqa_attention": "mqa_attention", "cudann_attention_forward": "attention_forward",
    "cudann_attention_backward": "attention_backward", "cudann_kv_cache_write": "kv_cache_write",
    "cuda_cross_entropy_forward": "cross_entropy", "cuda_cross_entropy_backward": "cross_entropy_backward",
    "cuda_aux_loss_forward": "aux_loss", "cudann_aux_loss_backward": "aux_loss_backward",
    "cuda_adamw_step": "adamw_step", "cuda_zero_grad": "zero_grad", "cuda_grad_clip": "grad_clip",
    "cuda_scatter_add": "scatter_add", "cuda_argmax": "argmax", "cuda_sample": "sample",
    "cuda_topk_sample": "topk_sample", "cuda_topp_sample": "topp_sample", "cudann_embedding": "embedding",
    "cudann_embedding_backward": "embedding_backward", "cudann_moe_router_backward": "moe_router_backward",
    "cudann_moe_dispatch": "moe_dispatch", "cudann_moe_dispatch_backward": "moe_dispatch_backward",
    "cudann_moe_combine": "moe_combine", "cudann_moe_combine_backward": "moe_combine_backward",
    "cudann_last_error": "last_error", "cudann_version": "version", "cudann_backend": "backend",
    "cudann_malloc": "malloc", "cudann_malloc_host": "malloc_host", "cudann_free": "free",
    "cudann_memcpy": "memcpy", "cudann_memset": "memset", "cudann_stream_create": "Stream",
    "cudann_stream_destroy": "Stream.destroy", "cudann_stream_synchronize": "stream_synchronize",
    "cudann_device_synchronize": "device_synchronize", "cudann_device_count": "device_count",
    "cudann_set_device": "set_device", "cudann_get_device": "get_device", "cudann_mem_info": "mem_info",
    "cudann_safetensors_open": "SafetensorsFile", "cudann_safetensors_close": "SafetensorsFile.close",
    "cudann_safetensors_count": "SafetensorsFile.__len__", "cudann_safetensors_name": "SafetensorsFile.name",
    "cudann_safetensors_info": "SafetensorsFile.info", "cudann_safetensors_read": "SafetensorsFile.read",
    "cudann_safetensors_writer_create": "SafetensorsWriter", "cudann_safetensors_writer_add": "SafetensorsWriter.add",
    "cudann_safetensors_writer_save": "SafetensorsWriter.save",
    "cudann_safetensors_writer_free": "SafetensorsWriter.free",
    # Half precision: the dtype of the arrays picks the `_ex` entry point.
    "cudann_convert": "convert", "cudann_add_ex": "add", "cudann_mul_ex": "mul", "cudann_scale_ex": "scale",
    "cudann_softmax_ex": "softmax", "cudann_rmsnorm_ex": "rmsnorm", "cudann_argmax_ex": "argmax",
    "cudann_sample_ex": "sample", "cudann_topk_sample_ex": "topk_sample", "cudann_topp_sample_ex": "topp_sample",
    "cudann_rope_qk_ex": "rope_qk",
    "cudann_comm_id": "comm_id", "cudann_comm_init": "Communicator", "cudann_comm_destroy": "Communicator.destroy",
    "cudann_all_reduce": "Communicator.all_reduce", "cudann_broadcast": "Communicator.broadcast",
}

__all__ = [
    *_ops_all, "CudannError", "backend", "version", "last_error", "raw", "as_pointer", "DeviceArray", "Stream",
    "to_device", "malloc", "malloc_host", "free", "memcpy", "memset", "stream_synchronize", "device_synchronize",
    "device_count", "set_device", "get_device", "mem_info", "SafetensorsFile", "SafetensorsWriter", "load_file",
    "save_file", "Communicator", "comm_id", "C_FUNCTIONS", "CODES", "PROTOTYPES", "PARAM_NAMES", "HEADER", "LIBRARY", "SUCCESS",
    "NOT_AVAILABLE", "INVALID_VALUE", "LAUNCH_FAILED", "OUT_OF_MEMORY", "INTERNAL",
]
