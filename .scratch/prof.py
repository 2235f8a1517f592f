import os, sys, numpy as np, cupy as cp
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "kernels"))
from bench_kernels import kernel
f32, i32 = np.float32, np.int32
b, h, s, d = 8, 16, 2048, 64
q, k, v = (cp.random.standard_normal((b, s, h, d), dtype=f32) for _ in range(3)); o = cp.empty_like(q)
kernel("attention", "flash_attention_f32")((32 * h * b,), (64,), (q, k, v, o, i32(b), i32(s), i32(h), i32(h), i32(d), f32(0.125), i32(1), np.uint64(0)))
x = cp.random.standard_normal((256, 131072), dtype=f32); seeds = cp.arange(256, dtype=cp.uint64); out = cp.zeros(256, i32)
kernel("sample", "sample_f32")((256,), (1024,), (x, out, seeds, i32(256), i32(131072), f32(1.0)))
kernel("sample", "topk_sample_f32")((256,), (1024,), (x, out, seeds, i32(256), i32(131072), i32(50), f32(1.0)))
kernel("sample", "topp_sample_f32")((256,), (1024,), (x, out, seeds, i32(256), i32(131072), f32(0.9), f32(1.0)))
cp.cuda.Device().synchronize()
