"""ABI.md conventions across all entry points: a size of 0 is a successful no-op
whose pointers may be NULL (through cudann.raw, the header-typed C ABI), and
the array API passes empty arrays through."""
import numpy as np
import pytest

import cudann
from cudann import PROTOTYPES

f32 = np.float32
N = None
ZERO_SIZE = {
    "cuda_silu": (N, N, 0, N),
    "cuda_add": (N, N, N, 0, N),
    "cuda_mul": (N, N, N, 0, N),
    "cuda_scale": (N, N, f32(2), 0, N),
    "cuda_softmax": (N, N, 0, 5, N),
    "cuda_softmax_topk": (N, N, N, 0, 5, 2, N),
    "cuda_rmsnorm": (N, N, N, 0, 8, f32(1e-5), N),
    "cuda_rmsnorm_residual": (N, N, N, N, N, 0, 8, f32(1e-5), N),
    "cuda_gemm": (N, N, N, 0, 4, 4, f32(1), f32(0), N),
    "cuda_gemm_batched": (N, N, N, 0, 4, 4, 4, f32(1), f32(0), N),
    "cuda_rope_freqs": (N, 0, 8, f32(1e4), f32(1), N),
    "cuda_rope_forward": (N, N, N, 0, 4, 2, 8, 0, N),
    "cuda_rope_qk": (N, N, N, N, N, 0, 4, 2, 2, 8, 0, N),
    "cuda_rope": (N, N, N, 0, 4, 2, 8, N),
    "cuda_rope_ntk": (N, N, N, 0, 4, 2, 8, f32(2), 4, N),
    "cuda_attention_scores": (N, N, N, 0, 2, 4, 8, f32(1), N),
    "cuda_attention_output": (N, N, N, 0, 2, 4, 8, N),
    "cuda_flash_attention": (N, N, N, N, 0, 4, 2, 8, f32(1), 1, N),
    "cuda_mqa_attention": (N, N, N, N, N, 0, 4, 2, 8, f32(1), N),
    "cuda_cross_entropy_forward": (N, N, N, N, 0, 8, N),
    "cuda_cross_entropy_backward": (N, N, N, 0, 8, f32(1), N),
    "cuda_aux_loss_forward": (N, N, N, N, N, 0, 4, 2, f32(0.01), N),
    "cuda_adamw_step": (N, N, N, N, f32(1e-3), f32(0.9), f32(0.999), f32(1e-8), f32(0), 1, 0, N),
    "cuda_zero_grad": (N, 0, N),
    "cuda_grad_clip": (N, N, N, f32(1), 0, N),
    "cuda_scatter_add": (N, N, N, 0, 8, N),
    "cuda_argmax": (N, N, 0, 8, N),
    "cuda_sample": (N, N, N, 0, 8, f32(1), N),
    "cuda_topk_sample": (N, N, N, 0, 8, 2, f32(1), N),
    "cuda_topp_sample": (N, N, N, 0, 8, f32(0.5), f32(1), N),
}


def test_table_covers_every_entry_point():
    assert set(ZERO_SIZE) == {n for n in PROTOTYPES if n.startswith("cuda_")}


@pytest.mark.parametrize("name", sorted(ZERO_SIZE))
def test_zero_size_is_a_noop_with_null_pointers(raw, name):
    assert getattr(raw, name)(*ZERO_SIZE[name]) == 0, raw.last_error()
    assert raw.last_error() == ""


def test_empty_arrays_through_the_array_api():
    e = np.zeros((0, 8), np.float32)
    assert cudann.silu(e).shape == (0, 8)
    assert cudann.softmax(e).shape == (0, 8)
    assert cudann.rmsnorm(e, np.ones(8, np.float32)).shape == (0, 8)
    assert cudann.argmax(e).shape == (0,)
    assert cudann.gemm(np.zeros((0, 4), np.float32), np.zeros((4, 3), np.float32)).shape == (0, 3)
    assert cudann.rope_freqs(0, 8).shape == (0, 4)
    cudann.zero_grad(np.zeros(0, np.float32))
    assert cudann.last_error() == ""
