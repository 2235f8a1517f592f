import os, sys, numpy as np, cupy as cp, torch, torch.nn.functional as F
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "kernels"))
from bench_kernels import median_ms, kernel
mod = cp.RawModule(path=os.path.join(ROOT, ".scratch", "variants.ptx"))
f32, i32 = np.float32, np.int32
torch.backends.cuda.matmul.allow_tf32 = False
def bench_cfg(b, h, s, d, causal, names):
    q = cp.random.standard_normal((b, s, h, d), dtype=f32); k = cp.random.standard_normal((b, s, h, d), dtype=f32)
    v = cp.random.standard_normal((b, s, h, d), dtype=f32)
    tq, tk, tv = (torch.as_tensor(a, device="cuda").permute(0, 2, 1, 3).contiguous() for a in (q, k, v))
    tms = median_ms(lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(causal)), reps=5, batch=3)
    ref = F.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(causal)).permute(0, 2, 1, 3)
    flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
    print(f"cfg b={b} h={h} s={s} d={d} causal={causal}: torch {tms:.4f} ms ({flops/tms/1e9:.1f} TFLOP/s)")
    for name in names:
        fn = mod.get_function(name) if name != "main" else kernel("attention", "flash_attention_f32")
        BR = 32 if name.startswith("v128") else 64
        o = cp.empty_like(q)
        args = (q, k, v, o, i32(b), i32(s), i32(h), i32(h), i32(d), f32(d ** -0.5), i32(causal), np.uint64(0))
        grid = -(-s // BR) * h * b
        ms = median_ms(lambda: fn((grid,), (64,), args), reps=5, batch=3)
        diff = float((torch.as_tensor(o, device="cuda") - ref).abs().max())
        print(f"   {name:<16} {fn.num_regs:>3} regs {ms:8.4f} ms {flops/ms/1e9:6.1f} TFLOP/s  {'faster' if ms < tms else 'slower'}  diff {diff:.1e}")
V64 = ["v_pf1", "v_pf1_skip", "v_pf1_s8", "v_pf1_s2", "v_pf1_p8", "v_pf1_s16", "v_pf2_skip", "v_pf1_b4"]
bench_cfg(8, 16, 2048, 64, 1, V64)
bench_cfg(8, 16, 2048, 64, 0, V64)
bench_cfg(8, 16, 2048, 32, 1, ["v32_pf2", "v32_pf1"])
bench_cfg(4, 16, 2048, 128, 1, ["v128_pf1", "v128_pf1_skip"])
import sys; sys.exit(0)
# torch's kernel names
from torch.profiler import profile, ProfilerActivity
tq = torch.randn(8, 16, 2048, 64, device="cuda")
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    F.scaled_dot_product_attention(tq, tq, tq, is_causal=True); torch.cuda.synchronize()
print("torch kernels:", sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"}))
# samplers: grid (rows in flight) vs L2
vocab = 131072
for scale in (1.0, 4.0):
    x = cp.random.standard_normal((256, vocab), dtype=f32) * f32(scale)
    seeds = cp.arange(256, dtype=cp.uint64); o = cp.zeros(256, i32)
    for name, extra in (("sample_f32", (f32(1.0),)), ("topk_sample_f32", (i32(50), f32(1.0))),
                        ("topp_sample_f32", (f32(0.9), f32(1.0)))):
        kf = kernel("sample", name)
        line = f"{name:<16} N(0,{scale:g}) 256x{vocab} regs {kf.num_regs}:"
        for grid in (256, 132, 96, 66):
            ms = median_ms(lambda: kf((grid,), (1024,), (x, o, seeds, i32(256), i32(vocab)) + extra))
            line += f"  grid {grid}: {ms:.4f}"
        ms1 = median_ms(lambda: kf((1,), (1024,), (x, o, seeds, i32(1), i32(vocab)) + extra))
        print(line + f"   | batch 1: {ms1:.4f} ms")
