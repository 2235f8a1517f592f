#!/usr/bin/env python3
"""Time the PTX kernels at the sizes of their speed targets (H100: 3 TB/s copy).

    python3 kernels/bench_kernels.py        (from the repository root; needs CuPy and a GPU)

Launch configurations are the Rust runtime's (plus a few alternatives, marked).
Prints per kernel: registers, time per launch (median over 20 timings of 10
back-to-back launches), effective bandwidth, and the target.
"""

import os
import sys

import cupy as cp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {}


def kernel(module, name):
    if module not in MODULES:
        MODULES[module] = cp.RawModule(path=os.path.join(ROOT, "kernels", "ptx", module + ".ptx"))
    return MODULES[module].get_function(name)


def median_ms(fn, reps=20, batch=10):
    """Median over reps of the mean time of `batch` back-to-back launches: the
    launches queue up, so host launch latency is not counted."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        for _ in range(batch):
            fn()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b) / batch)
    return float(np.median(times))


def row(name, k, ms, nbytes, target=None):
    regs = "" if k is None else f"{k.num_regs:>3} regs"
    tgt = "" if target is None else f"target {target:.3f} ms {'OK' if ms <= target else 'SLOW'}"
    print(f"{name:<40} {regs:<8} {ms:8.4f} ms {nbytes / ms / 1e9:7.2f} TB/s  {tgt}")


def g1024(n):
    return min(-(-n // 1024), 65535)

def bench_attention_rope():
    import torch
    import torch.nn.functional as F
    f32, i32, i64 = np.float32, np.int32, np.int64
    br = lambda d: 64 if d <= 64 else 32 if d <= 128 else 16
    special = lambda d: "flash_attention_d64_f32" if 32 < d <= 64 else None
    for b, h, s, d, causal, kvh in ((8, 16, 2048, 64, 1, 16), (8, 16, 2048, 64, 0, 16), (8, 16, 2048, 32, 1, 16),
                                    (4, 16, 2048, 128, 1, 16), (8, 16, 2048, 64, 1, 1), (2, 8, 1024, 256, 1, 8)):
        q = cp.random.standard_normal((b, s, h, d), dtype=f32)
        k = cp.random.standard_normal((b, s, kvh, d), dtype=f32)
        v = cp.random.standard_normal((b, s, kvh, d), dtype=f32)
        o = cp.empty_like(q)
        args = (q, k, v, o, i32(b), i32(s), i32(h), i32(kvh), i32(d), f32(d ** -0.5), i32(causal), np.uint64(0))
        grid = -(-s // br(d)) * h * b
        name = special(d) or "flash_attention_f32"
        flash = kernel("attention", name)
        generic = kernel("attention", "flash_attention_f32")
        ms = median_ms(lambda: flash((grid,), (64,), args), reps=5, batch=3)
        gms = median_ms(lambda: generic((grid,), (64,), args), reps=5, batch=3)
        flash((grid,), (64,), args)
        flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
        # torch in its own layout [b, h, s, d] (contiguous), fp32, no TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        tq = torch.as_tensor(q, device="cuda").permute(0, 2, 1, 3).contiguous()
        tk = torch.as_tensor(k, device="cuda").permute(0, 2, 1, 3).contiguous()
        tv = torch.as_tensor(v, device="cuda").permute(0, 2, 1, 3).contiguous()
        if kvh == 1:
            tk, tv = tk.expand(b, h, s, d), tv.expand(b, h, s, d)

        def sdpa():
            F.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(causal))

        tms = median_ms(sdpa, reps=5, batch=3)
        ref = F.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(causal)).permute(0, 2, 1, 3)
        diff = float((torch.as_tensor(o, device="cuda") - ref).abs().max())
        print(f"{'flash %s b=%d h=%d s=%d d=%d c=%d kv=%d' % (name[len('flash_attention_'):-4] or 'all', b, h, s, d, causal, kvh):<40} "
              f"{flash.num_regs:>3} regs {ms:8.4f} ms {flops / ms / 1e9:7.2f} TFLOP/s   torch sdpa fp32 {tms:8.4f} ms "
              f"({'faster' if ms <= tms else 'SLOWER'}; max |diff| {diff:.1e}); all-d kernel {gms:.4f} ms")
        if d == 64:  # the TF32 tensor-core kernel (CUDANN_ALLOW_TF32=1): target 2x torch's fp32 SDPA
            tf = kernel("attention_tf32", "flash_attention_tf32_d64")
            tms32 = median_ms(lambda: tf((-(-s // 64) * h * b,), (128,), args), reps=5, batch=3)
            tf((-(-s // 64) * h * b,), (128,), args)
            diff = float((torch.as_tensor(o, device="cuda") - ref).abs().max())
            print(f"{'flash tf32 b=%d h=%d s=%d d=%d c=%d kv=%d' % (b, h, s, d, causal, kvh):<40} {tf.num_regs:>3} regs "
                  f"{tms32:8.4f} ms {flops / tms32 / 1e9:7.2f} TFLOP/s   {tms / tms32:.2f}x torch sdpa fp32 "
                  f"({'OK' if tms32 * 2 <= tms else 'SLOW'}: target 2x; max |diff| {diff:.1e})")
        del q, k, v, o, tq, tk, tv, ref
    b, h, s, d = 8, 16, 1024, 64
    q, kk, vv = (cp.random.standard_normal(sh, dtype=f32) for sh in ((b, s, h, d), (b, s, d), (b, s, d)))
    S = cp.empty((b, h, s, s), f32)
    O = cp.empty((b, s, h, d), f32)
    ks, ko = kernel("attention", "attention_scores_f32"), kernel("attention", "attention_output_f32")
    ms = median_ms(lambda: ks((s // 64, s // 64, b * h), (16, 16), (q, kk, S, i32(b), i32(h), i32(s), i32(d), f32(0.125))),
                   reps=5, batch=3)
    row("attention_scores b8 h16 s1024 d64", ks, ms, 4 * S.size)
    ms = median_ms(lambda: ko((1, s // 64, b * h), (16, 16), (S, vv, O, i32(b), i32(h), i32(s), i32(d))), reps=5, batch=3)
    row("attention_output b8 h16 s1024 d64", ko, ms, 4 * S.size)
    del S, O
    kf, kr = kernel("rope", "rope_freqs_f32"), kernel("rope", "rope_rotate_f32")
    fr = cp.empty((8192, 64), f32)
    row("rope_freqs 8192x128", kf, median_ms(lambda: kf((g1024(8192 * 64),), (256,), (fr, i32(8192), i32(128),
                                                                                      f32(10000), f32(1))), reps=5), 4 * fr.size)
    x = cp.random.standard_normal((8 * 2048, 32, 128), dtype=f32)
    n = x.size // 2
    row("rope_rotate 8x2048x32x128 in place", kr, median_ms(lambda: kr((g1024(n),), (256,), (
        x, fr, x, i64(8 * 2048), i32(2048), i32(32), i32(128), i32(0), f32(1.0)))), 8 * x.size)
    row("rope_rotate same, ntk alpha 4", kr, median_ms(lambda: kr((g1024(n),), (256,), (
        x, fr, x, i64(8 * 2048), i32(2048), i32(32), i32(128), i32(0), f32(4.0)))), 8 * x.size)


def bench_sample():
    import torch
    f32, i32 = np.float32, np.int32
    ks = kernel("sample", "sample_f32")
    kk = kernel("sample", "topk_sample_f32")
    kp = kernel("sample", "topp_sample_f32")
    vocab = 131072
    for batch, target in ((256, 0.10), (1, 0.03)):
        for scale in (1.0, 4.0):
            x = cp.random.standard_normal((batch, vocab), dtype=f32) * f32(scale)
            seeds = cp.arange(batch, dtype=cp.uint64)
            o = cp.zeros(batch, i32)
            tag = f"{batch}x{vocab} N(0,{scale:g})"
            row(f"sample {tag}", ks, median_ms(lambda: ks((batch,), (1024,), (x, o, seeds, i32(batch), i32(vocab),
                                                                              f32(1.0)))), 4 * x.size, target)
            if batch <= 32:
                kc = kernel("sample_cluster", "sample_cluster_f32")
                row(f"sample (cluster) {tag}", kc, median_ms(lambda: kc((4 * batch,), (1024,), (
                    x, o, seeds, i32(batch), i32(vocab), f32(1.0)))), 4 * x.size, target)
            row(f"topk k=50 {tag}", kk, median_ms(lambda: kk((batch,), (1024,), (
                x, o, seeds, i32(batch), i32(vocab), i32(50), f32(1.0)))), 4 * x.size, target)
            if batch <= 32:
                kkc = kernel("sample_cluster", "topk_cluster_f32")
                row(f"topk (cluster) k=50 {tag}", kkc, median_ms(lambda: kkc((4 * batch,), (1024,), (
                    x, o, seeds, i32(batch), i32(vocab), i32(50), f32(1.0)))), 4 * x.size, target)
            row(f"topp p=0.9 {tag}", kp, median_ms(lambda: kp((batch,), (1024,), (
                x, o, seeds, i32(batch), i32(vocab), f32(0.9), f32(1.0)))), 4 * x.size, target)
            row(f"topp p=0.9 T=0.7 {tag}", kp, median_ms(lambda: kp((batch,), (1024,), (
                x, o, seeds, i32(batch), i32(vocab), f32(0.9), f32(0.7)))), 4 * x.size, target)
            kpc = kernel("sample_cluster", "topp_cluster_f32")
            for T in ((1.0, 0.7) if batch <= 32 else ()):
                row(f"topp (cluster) p=0.9 T={T:g} {tag}", kpc, median_ms(lambda: kpc((4 * batch,), (1024,), (
                    x, o, seeds, i32(batch), i32(vocab), f32(0.9), f32(T)))), 4 * x.size, target)
            t = torch.as_tensor(x, device="cuda")

            def t_plain():
                torch.multinomial(torch.softmax(t, -1), 1)

            def t_topk():
                v, i = torch.topk(t, 50, dim=-1)
                torch.gather(i, -1, torch.multinomial(torch.softmax(v, -1), 1))

            def t_topp():
                sv, si = torch.sort(t, dim=-1, descending=True)
                pr = torch.softmax(sv, -1)
                cum = torch.cumsum(pr, -1)
                pr = pr.masked_fill(cum - pr > 0.9, 0.0)
                torch.gather(si, -1, torch.multinomial(pr, 1))

            row(f"  torch softmax+multinomial {tag}", None, median_ms(t_plain), 4 * x.size)
            row(f"  torch topk+softmax+multinomial {tag}", None, median_ms(t_topk), 4 * x.size)
            row(f"  torch sort+cumsum+multinomial {tag}", None, median_ms(t_topp), 4 * x.size)
            del x, t


def bench_switch():
    """One block per row against a cluster per row, by batch: the batch up to
    which the library launches the cluster kernels (src/gpu/ops.rs sample)."""
    f32, i32 = np.float32, np.int32
    vocab, most = 131072, 128
    seeds, o = cp.arange(most, dtype=cp.uint64), cp.zeros(most, i32)
    for scale in (3.0, 1.0):
        x = cp.random.standard_normal((most, vocab), dtype=f32) * f32(scale)
        for single, cluster, extra in (("sample_f32", "sample_cluster_f32", ()),
                                       ("topk_sample_f32", "topk_cluster_f32", (i32(50),)),
                                       ("topp_sample_f32", "topp_cluster_f32", (f32(0.9),)),
                                       ("topp_sample_f32", "topp_cluster_f32", (f32(0.5),))):
            ks, kc = kernel("sample", single), kernel("sample_cluster", cluster)
            cells = []
            for batch in (16, 32, 48, 64, 96, 128):
                args = (x, o, seeds, i32(batch), i32(vocab)) + extra + (f32(1.0),)
                one = median_ms(lambda: ks((batch,), (1024,), args))
                four = median_ms(lambda: kc((4 * batch,), (1024,), args))
                cells.append(f"b{batch} {one:.4f}/{four:.4f}")
            param = f" {float(extra[0]):g}" if extra else ""
            print(f"N(0,{scale:g}) {single}{param}, ms one block / cluster per row: " + "  ".join(cells))
        del x


def main():
    f32, i32, i64 = np.float32, np.int32, np.int64
    print(cp.cuda.runtime.getDeviceProperties(0)["name"].decode())
    only = sys.argv[1:]  # optional: "core", "attention", "sample", "switch"
    if "switch" in only:
        bench_switch()
    if not only or "attention" in only:
        bench_attention_rope()
    if not only or "sample" in only:
        bench_sample()
    if only and "core" not in only:
        return 0
    n = 1 << 27
    x, y, z = (cp.random.standard_normal(n, dtype=f32) for _ in range(3))
    row("copy (reference)", None, median_ms(lambda: cp.copyto(y, x)), 8 * n)
    k = kernel("elementwise", "silu_f32")
    row("silu 2^27", k, median_ms(lambda: k((g1024(n),), (256,), (x, y, i64(n)))), 8 * n)
    k = kernel("elementwise", "add_f32")
    row("add 2^27", k, median_ms(lambda: k((g1024(n),), (256,), (x, y, z, i64(n)))), 12 * n)
    k = kernel("elementwise", "scale_f32")
    row("scale 2^27 in place", k, median_ms(lambda: k((g1024(n),), (256,), (x, x, f32(1.0), i64(n)))), 8 * n)

    m, v = cp.zeros(n, f32), cp.zeros(n, f32)
    k = kernel("optim", "adamw_f32")
    args = (y, x, m, v, f32(1e-3), f32(0.9), f32(0.999), f32(1e-8), f32(0.01), f32(10.0), f32(1000.0), i64(n))
    row("adamw 2^27", k, median_ms(lambda: k((g1024(n),), (256,), args)), 28 * n, 1.33)
    parts = -(-n // 256)
    partial, total = cp.zeros(parts, f32), cp.zeros(1, f32)
    ks, kt, kc = kernel("optim", "sumsq_partial_f32"), kernel("optim", "norm_total_f32"), kernel("optim", "clip_scale_f32")
    row("sumsq_partial 2^27", ks, median_ms(lambda: ks((parts,), (256,), (x, partial, i64(n)))), 4 * n)
    row("sumsq_partial 2^27 grid n/2048 (alt)", ks, median_ms(lambda: ks((-(-n // 2048),), (256,), (x, partial, i64(n)))), 4 * n)
    row("norm_total 2^19 parts", kt, median_ms(lambda: kt((1,), (1024,), (partial, total, i64(parts)))), 4 * parts)
    kt((1,), (1024,), (partial, total, i64(parts)))
    row("clip_scale 2^27 (clipping)", kc, median_ms(lambda: kc((g1024(n),), (256,), (x, total, f32(1.0), i64(n)))), 8 * n)
    del x, y, z, m, v

    rows, cols = 4096, 32000
    a = cp.random.standard_normal((rows, cols), dtype=f32)
    b = cp.empty_like(a)
    k = kernel("softmax", "softmax_f32")
    row("softmax 4096x32000", k, median_ms(lambda: k((rows,), (1024,), (a, b, i32(rows), i32(cols)))), 8 * a.size, 0.40)
    k2 = kernel("softmax", "softmax_f32")
    row("softmax 4096x32001 (scalar)", k2, median_ms(
        lambda: k2((rows - 1,), (1024,), (a, b, i32(rows - 1), i32(cols + 1)))), 8 * (rows - 1) * (cols + 1))
    row("softmax 1024x65536 (looped)", k, median_ms(
        lambda: k((2000,), (1024,), (a, b, i32(2000), i32(65536)))), 12 * 2000 * 65536)
    del a, b

    rows, cols = 8192, 32000
    a = cp.random.standard_normal((rows, cols), dtype=f32)
    t = cp.random.randint(0, cols, rows, dtype=i32)
    loss = cp.zeros(1, f32)
    kl, kn = kernel("loss", "log_softmax_f32"), kernel("loss", "nll_mean_f32")

    def ce():
        kl((rows,), (1024,), (a, a, i32(rows), i32(cols)))
        kn((1,), (1024,), (a, t, loss, i32(rows), i32(cols)))

    row("log_softmax+nll 8192x32000", kl, median_ms(ce), 8 * a.size, 0.80)
    row("  nll_mean alone", kn, median_ms(lambda: kn((1,), (1024,), (a, t, loss, i32(rows), i32(cols)))), 4 * rows)
    kb = kernel("loss", "ce_backward_f32")
    row("ce_backward 8192x32000 in place", kb, median_ms(
        lambda: kb((g1024(a.size),), (256,), (a, t, a, i32(rows), i32(cols), f32(1.0)))), 8 * a.size)
    del a

    rows, hidden = 16384, 4096
    a = cp.random.standard_normal((rows, hidden), dtype=f32)
    w = cp.random.standard_normal(hidden, dtype=f32)
    out, s = cp.empty_like(a), cp.empty_like(a)
    k = kernel("norm", "rmsnorm_f32")
    row("rmsnorm 16384x4096", k, median_ms(
        lambda: k((rows,), (1024,), (a, w, out, i32(rows), i32(hidden), f32(1e-5)))), 8 * a.size, 0.20)
    row("rmsnorm 16384x4096 block 512 (alt)", k, median_ms(
        lambda: k((rows,), (512,), (a, w, out, i32(rows), i32(hidden), f32(1e-5)))), 8 * a.size, 0.20)
    kr = kernel("norm", "rmsnorm_residual_f32")
    row("rmsnorm_residual 16384x4096", kr, median_ms(
        lambda: kr((rows,), (1024,), (a, out, w, out, s, i32(rows), i32(hidden), f32(1e-5)))), 16 * a.size)
    row("rmsnorm 4096x16384 (looped)", k, median_ms(
        lambda: k((4096,), (1024,), (a, w, out, i32(4096), i32(16384), f32(1e-5)))), 8 * a.size)
    del a, out, s

    batch, vocab = 256, 131072
    a = cp.random.standard_normal((batch, vocab), dtype=f32)
    o = cp.zeros(batch, i32)
    k = kernel("decode", "argmax_f32")
    row("argmax 256x131072", k, median_ms(lambda: k((batch,), (1024,), (a, o, i32(batch), i32(vocab)))), 4 * a.size,
        0.055)
    row("argmax 256x131071 (scalar)", k, median_ms(
        lambda: k((batch,), (1024,), (a, o, i32(batch), i32(vocab - 1)))), 4 * a.size)
    del a

    rows, experts, topk = 16384, 64, 8
    a = cp.random.standard_normal((rows, experts), dtype=f32)
    w, idx = cp.empty((rows, topk), f32), cp.empty((rows, topk), i32)
    k = kernel("softmax", "softmax_topk_f32")
    row("softmax_topk 16384x64 k=8", k, median_ms(
        lambda: k((rows,), (32,), (a, w, idx, i32(rows), i32(experts), i32(topk)))), 4 * a.size)

    num, dim, vocab = 8192, 4096, 32000
    go = cp.random.standard_normal((num, dim), dtype=f32)
    ix = cp.random.randint(0, vocab, num, dtype=i32)
    gw = cp.zeros((vocab, dim), f32)
    k = kernel("optim", "scatter_add_f32")
    row("scatter_add 8192x4096", k, median_ms(
        lambda: k((-(-dim // 256),), (256,), (go, ix, gw, i32(num), i32(dim))), reps=3, batch=2), 12 * num * dim)
    for ys in (8, 32, 128):
        row(f"scatter_add 8192x4096 grid.y={ys} (alt)", k, median_ms(
            lambda: k((-(-dim // 256), ys), (256,), (go, ix, gw, i32(num), i32(dim))), reps=3, batch=2), 12 * num * dim)
    del go, gw

    M = N = K = 2048
    A, B, C = (cp.random.standard_normal((M, M), dtype=f32) for _ in range(3))
    k = kernel("gemm", "sgemm_tiled_f32")
    ms = median_ms(lambda: k((N // 64, M // 64, 1), (16, 16), (A, B, C, i32(M), i32(N), i32(K), f32(1), f32(0),
                                                               i64(0), i64(0), i64(0))), reps=5, batch=2)
    print(f"{'sgemm_tiled 2048^3':<40} {k.num_regs:>3} regs {ms:8.4f} ms {2 * M * N * K / ms / 1e9:7.2f} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
