"""GPU benchmark: cudann (device pointers, via ctypes) vs PyTorch on the same
GPU in the same run. CUDA-event timing, median of many runs after warm-up.

    python3 bench/gpu/gpu_bench.py [path/to/libcudann.so]
    CUDANN_ALLOW_TF32=1 python3 bench/gpu/gpu_bench.py [lib] attention training  # the TF32 kernels

An optional last argument names the benches to run (elementwise, rows, adamw,
gemm, attention, sampling, training, backward, decode). torch's side stays fp32 (TF32 off) either way.

Prints: op, size, ours ms, torch ms, torch/ours, % of the measured copy
bandwidth (bytes each op must move / time), and the issue's target.
"""
import ctypes
import os
import statistics
import sys

import torch

LIB = ctypes.CDLL(sys.argv[1] if len(sys.argv) > 1 else "target/release/libcudann.so")
ONLY = sys.argv[2:]
F, I, L, P = ctypes.c_float, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DEV = "cuda"


def ptr(t):
    return P(t.data_ptr())


def stream():
    return P(torch.cuda.current_stream().cuda_stream)


def call(name, *args):
    rc = getattr(LIB, name)(*args)
    if rc != 0:
        raise RuntimeError(f"{name} -> {rc}: {LIB.cudann_last_error()}")


LIB.cudann_last_error.restype = ctypes.c_char_p


def timed(fn, warmup=5, reps=30, inner=10):
    """Median device milliseconds per fn(): CUDA events around `inner`
    back-to-back calls, so the host's call overhead (Python, ctypes) overlaps
    the GPU work instead of being counted as idle GPU time."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return statistics.median(samples)


def copy_bandwidth():
    x = torch.randn(1 << 28, device=DEV)
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3)


def graphed(fn, calls=20, reps=20):
    """Median device milliseconds per fn() replayed from a CUDA graph of
    `calls` captured calls: the GPU's time alone, for ops shorter than the
    host's call overhead (a decoding loop is captured once and replayed)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    return statistics.median(samples)


ROWS = []


def row(op, size, ours, theirs, bytes_moved, target):
    ROWS.append((op, size, ours, theirs, bytes_moved, target))


def bench_elementwise():
    n = 1 << 26
    x, b = torch.randn(n, device=DEV), torch.randn(n, device=DEV)
    y = torch.empty_like(x)
    row("silu", "2^26", timed(lambda: call("cuda_silu", ptr(x), ptr(y), L(n), stream())),
        timed(lambda: torch.nn.functional.silu(x, inplace=False)), 8 * n, "93% copy")
    row("add", "2^26", timed(lambda: call("cuda_add", ptr(x), ptr(b), ptr(y), L(n), stream())),
        timed(lambda: torch.add(x, b, out=y)), 12 * n, "93% copy")
    row("mul", "2^26", timed(lambda: call("cuda_mul", ptr(x), ptr(b), ptr(y), L(n), stream())),
        timed(lambda: torch.mul(x, b, out=y)), 12 * n, "93% copy")
    row("scale", "2^26", timed(lambda: call("cuda_scale", ptr(x), ptr(y), F(0.5), L(n), stream())),
        timed(lambda: torch.mul(x, 0.5, out=y)), 8 * n, "93% copy")


def bench_rows():
    r, c = 4096, 32000
    x = torch.randn(r, c, device=DEV)
    y = torch.empty_like(x)
    row("softmax", f"{r}x{c}", timed(lambda: call("cuda_softmax", ptr(x), ptr(y), I(r), I(c), stream())),
        timed(lambda: torch.softmax(x, dim=-1)), 8 * r * c, "<=0.40ms")
    r, h = 16384, 4096
    x, w = torch.randn(r, h, device=DEV), torch.randn(h, device=DEV)
    y = torch.empty_like(x)
    row("rmsnorm", f"{r}x{h}", timed(lambda: call("cuda_rmsnorm", ptr(x), ptr(w), ptr(y), I(r), I(h), F(1e-6), stream())),
        timed(lambda: torch.nn.functional.rms_norm(x, (h,), w, 1e-6)), 8 * r * h, "<=0.20ms")
    r, v = 8192, 32000
    x = torch.randn(r, v, device=DEV)
    t = torch.randint(0, v, (r,), device=DEV, dtype=torch.int32)
    lp, loss = torch.empty_like(x), torch.empty(1, device=DEV)

    def torch_ce():
        logp = torch.log_softmax(x, dim=-1)
        return torch.nn.functional.nll_loss(logp, t.long())
    row("cross_entropy_fwd", f"{r}x{v}", timed(lambda: call("cuda_cross_entropy_forward", ptr(x), ptr(t), ptr(loss), ptr(lp), I(r), I(v), stream())),
        timed(torch_ce), 8 * r * v, "<=0.80ms")
    b, v = 256, 131072
    x = torch.randn(b, v, device=DEV)
    out = torch.empty(b, device=DEV, dtype=torch.int32)
    row("argmax", f"{b}x{v}", timed(lambda: call("cuda_argmax", ptr(x), ptr(out), I(b), I(v), stream())),
        timed(lambda: torch.argmax(x, dim=-1)), 4 * b * v, "<=0.055ms")


def bench_adamw():
    n = 1 << 27
    p, g = torch.randn(n, device=DEV), torch.randn(n, device=DEV) * 0.01
    m, v = torch.zeros(n, device=DEV), torch.zeros(n, device=DEV)
    tp = torch.nn.Parameter(p.clone())
    tp.grad = g.clone()
    opt = torch.optim.AdamW([tp], lr=1e-3, fused=True)
    row("adamw", "2^27", timed(lambda: call("cuda_adamw_step", ptr(p), ptr(g), ptr(m), ptr(v), F(1e-3), F(0.9), F(0.999), F(1e-8), F(0.01), I(10), L(n), stream())),
        timed(opt.step), 28 * n, "<=1.33ms")


def bench_gemm():
    for (m, n, k, batch) in [(4096, 4096, 4096, 1), (1024, 1024, 1024, 8), (16, 4096, 4096, 1)]:
        a, b = torch.randn(batch, m, k, device=DEV), torch.randn(batch, k, n, device=DEV)
        c = torch.empty(batch, m, n, device=DEV)
        ours = timed(lambda: call("cuda_gemm_batched", ptr(a), ptr(b), ptr(c), I(batch), I(m), I(n), I(k), F(1.0), F(0.0), stream()))
        theirs = timed(lambda: torch.bmm(a, b, out=c))
        row("sgemm", f"{batch}x{m}x{n}x{k}", ours, theirs, 4 * batch * (m * k + k * n + m * n), ">=0.97x cuBLAS")


def bench_attention():
    b, s, h, d = 8, 2048, 16, 64
    q, k, v = (torch.randn(b, s, h, d, device=DEV) for _ in range(3))
    o = torch.empty_like(q)
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # torch wants [b, h, s, d]
    ours = timed(lambda: call("cuda_flash_attention", ptr(q), ptr(k), ptr(v), ptr(o), I(b), I(s), I(h), I(d), F(d ** -0.5), I(1), stream()), reps=10, inner=3)
    theirs = timed(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True), reps=10, inner=3)
    if os.environ.get("CUDANN_ALLOW_TF32") == "1":
        row("flash_attention tf32", f"{b}x{s}x{h}x{d} causal", ours, theirs, 4 * 4 * b * s * h * d, ">=2x torch SDPA fp32")
    else:
        row("flash_attention", f"{b}x{s}x{h}x{d} causal", ours, theirs, 4 * 4 * b * s * h * d, "<= torch SDPA fp32")


def bench_sampling():
    for batch in (256, 1):
        v = 131072
        x = torch.randn(batch, v, device=DEV) * 3
        seeds = torch.arange(batch, device=DEV, dtype=torch.int64)
        out = torch.empty(batch, device=DEV, dtype=torch.int32)
        target = "<=0.10ms" if batch > 1 else "<=0.03ms"

        def torch_topk():
            vals, idx = torch.topk(x, 50, dim=-1)
            return idx.gather(-1, torch.multinomial(torch.softmax(vals, -1), 1))

        def torch_topp():
            sorted_x, idx = torch.sort(x, dim=-1, descending=True)
            probs = torch.softmax(sorted_x, -1)
            drop = probs.cumsum(-1) - probs > 0.9
            probs = probs.masked_fill(drop, 0)
            return idx.gather(-1, torch.multinomial(probs, 1))
        row("sample", f"{batch}x{v}", timed(lambda: call("cuda_sample", ptr(x), ptr(out), ptr(seeds), I(batch), I(v), F(1.0), stream())),
            timed(lambda: torch.multinomial(torch.softmax(x, -1), 1)), 4 * batch * v, target)
        row("topk_sample k=50", f"{batch}x{v}", timed(lambda: call("cuda_topk_sample", ptr(x), ptr(out), ptr(seeds), I(batch), I(v), I(50), F(1.0), stream())),
            timed(torch_topk), 4 * batch * v, target)
        row("topp_sample p=0.9", f"{batch}x{v}", timed(lambda: call("cuda_topp_sample", ptr(x), ptr(out), ptr(seeds), I(batch), I(v), F(0.9), F(1.0), stream())),
            timed(torch_topp), 4 * batch * v, target)


def bench_training():
    """General attention forward/backward (GQA-capable, with lse) against torch
    SDPA fp32 on [b, h, s, d] copies; half conversion and bf16 GEMM."""
    b, s, h, d = 8, 2048, 16, 64
    q, k, v, do = (torch.randn(b, s, h, d, device=DEV) for _ in range(4))
    o, dq, dk, dv = (torch.empty_like(q) for _ in range(4))
    lse = torch.empty(b, s, h, device=DEV)
    scale = F(d ** -0.5)
    shape = (I(b), I(s), I(s), I(h), I(h), I(d), I(0), I(1), scale)
    fwd = lambda: call("cudann_attention_forward", ptr(q), ptr(k), ptr(v), None, ptr(o), ptr(lse), I(b), I(s), I(s), I(s), I(h), I(h), I(d), I(0), I(1), scale, I(0), stream())
    bwd = lambda: call("cudann_attention_backward", ptr(do), ptr(q), ptr(k), ptr(v), None, ptr(o), ptr(lse), ptr(dq), ptr(dk), ptr(dv), *shape, stream())
    qt, kt, vt = (t.transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    dot = do.transpose(1, 2).contiguous()
    size = f"{b}x{s}x{h}x{d} causal"
    row("attention_forward", size, timed(fwd, reps=10, inner=3),
        timed(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True), reps=10, inner=3), 4 * 4 * b * s * h * d, "<= torch SDPA fp32")
    tf32 = os.environ.get("CUDANN_ALLOW_TF32") == "1"  # the tensor-core backward
    row("attention_backward tf32" if tf32 else "attention_backward", size, timed(bwd, reps=10, inner=3),
        timed(lambda: torch.autograd.grad(out, (qt, kt, vt), dot, retain_graph=True), reps=10, inner=3), 4 * 8 * b * s * h * d,
        ">=2x torch SDPA fp32 backward" if tf32 else "<= torch SDPA fp32 backward")
    n = 1 << 28
    x = torch.randn(n, device=DEV)
    y = torch.empty(n, device=DEV, dtype=torch.bfloat16)
    row("convert f32->bf16", f"{n}", timed(lambda: call("cudann_convert", ptr(x), I(0), ptr(y), I(2), L(n), stream())),
        timed(lambda: y.copy_(x)), 6 * n, ">=90% copy bw")
    m = 8192
    a, bb = torch.randn(m, m, device=DEV, dtype=torch.bfloat16), torch.randn(m, m, device=DEV, dtype=torch.bfloat16)
    c = torch.empty(m, m, device=DEV, dtype=torch.bfloat16)
    gemm = lambda: call("cudann_gemm_ex", I(0), I(0), I(m), I(m), I(m), F(1.0), ptr(a), I(2), L(m), L(0), ptr(bb), I(2), L(m), L(0), F(0.0), ptr(c), I(2), L(m), L(0), I(1), stream())
    row("gemm_ex bf16", f"{m}^3", timed(gemm, reps=10, inner=3), timed(lambda: torch.matmul(a, bb, out=c), reps=10, inner=3), 2 * 3 * m * m, ">=0.95x cuBLAS")


def bench_backward():
    """The memory-bound training ops (issue 17's >= 90% copy bandwidth rows):
    bytes each must move over the measured copy bandwidth; torch eager doing
    the same computation alongside."""
    n = 1 << 26
    dy, gate, up = (torch.randn(n, device=DEV) for _ in range(3))
    dg, du = torch.empty_like(dy), torch.empty_like(dy)

    def torch_swiglu_backward():
        sig = torch.sigmoid(gate)
        silu = gate * sig
        return dy * up * sig * (1 + gate * (1 - sig)), dy * silu
    row("swiglu_backward", "2^26", timed(lambda: call("cudann_swiglu_backward", ptr(dy), ptr(gate), ptr(up), ptr(dg), ptr(du), L(n), stream())),
        timed(torch_swiglu_backward), 5 * 4 * n, ">=90% copy bw")
    del dy, gate, up, dg, du
    r, h = 16384, 4096
    x, g = torch.randn(r, h, device=DEV), torch.randn(r, h, device=DEV)
    w, dx, dw = torch.randn(h, device=DEV), torch.empty(r, h, device=DEV), torch.empty(h, device=DEV)

    def torch_rmsnorm_backward():
        inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        gw = g * w
        return inv * (gw - x * inv.pow(2) * (gw * x).mean(-1, keepdim=True)), (g * x * inv).sum(0)
    row("rmsnorm_backward", f"{r}x{h}", timed(lambda: call("cudann_rmsnorm_backward", ptr(g), ptr(x), ptr(w), ptr(dx), ptr(dw), I(r), I(h), F(1e-6), stream())),
        timed(torch_rmsnorm_backward), 3 * 4 * r * h, ">=90% copy bw")
    r, c = 8192, 32000
    y = torch.softmax(torch.randn(r, c, device=DEV), -1)
    dys, dxs = torch.randn(r, c, device=DEV), torch.empty(r, c, device=DEV)
    row("softmax_backward", f"{r}x{c}", timed(lambda: call("cudann_softmax_backward", ptr(dys), ptr(y), ptr(dxs), I(r), I(c), stream())),
        timed(lambda: torch._softmax_backward_data(dys, y, -1, torch.float32)), 3 * 4 * r * c, ">=90% copy bw")
    del x, g, dx, y, dys, dxs
    n_ids, vocab, dim = 65536, 32000, 1024
    ids = torch.randint(0, vocab, (n_ids,), device=DEV, dtype=torch.int32)
    dout, dtable = torch.randn(n_ids, dim, device=DEV), torch.empty(vocab, dim, device=DEV)
    ids64 = ids.long()
    row("embedding_backward", f"{n_ids} of {vocab}x{dim}", timed(lambda: call("cudann_embedding_backward", ptr(ids), ptr(dout), ptr(dtable), I(n_ids), I(vocab), I(dim), stream())),
        timed(lambda: torch.ops.aten.embedding_dense_backward(dout, ids64, vocab, -1, False)), 4 * (n_ids + vocab) * dim, ">=90% copy bw")
    del dout, dtable
    tokens, dim, experts, k = 65536, 1024, 8, 2
    x = torch.randn(tokens, dim, device=DEV)
    idx = torch.stack([torch.randperm(experts, device=DEV)[:k] for _ in range(64)]).repeat(tokens // 64, 1).int().contiguous()
    xs, order, offsets = torch.empty(tokens * k, dim, device=DEV), torch.empty(tokens * k, device=DEV, dtype=torch.int32), torch.empty(experts + 1, device=DEV, dtype=torch.int32)
    wts, out, dwts = torch.rand(tokens, k, device=DEV), torch.empty(tokens, dim, device=DEV), torch.empty(tokens, k, device=DEV)
    dxs = torch.empty_like(xs)
    flat = idx.flatten().long()
    size = f"{tokens}x{dim} top{k}/{experts}"
    row("moe_dispatch", size, timed(lambda: call("cudann_moe_dispatch", ptr(x), ptr(idx), ptr(xs), ptr(order), ptr(offsets), I(tokens), I(dim), I(experts), I(k), stream())),
        timed(lambda: x.index_select(0, torch.argsort(flat, stable=True) // k)), 4 * tokens * dim * (1 + k), ">=90% copy bw")
    rows = order.long()
    inverse = torch.empty_like(rows)
    inverse[rows] = torch.arange(tokens * k, device=DEV)
    row("moe_combine", size, timed(lambda: call("cudann_moe_combine", ptr(xs), ptr(wts), ptr(order), ptr(out), I(tokens), I(dim), I(k), stream())),
        timed(lambda: (xs[inverse].view(tokens, k, dim) * wts[..., None]).sum(1)), 4 * tokens * dim * (1 + k), ">=90% copy bw")
    row("moe_combine_bwd", size, timed(lambda: call("cudann_moe_combine_backward", ptr(out), ptr(xs), ptr(wts), ptr(order), ptr(dxs), ptr(dwts), I(tokens), I(dim), I(k), stream())),
        timed(lambda: ((out[:, None, :] * wts[..., None]).view(-1, dim)[rows], (xs[inverse].view(tokens, k, dim) * out[:, None, :]).sum(-1))),
        4 * tokens * dim * (1 + 2 * k), ">=90% copy bw")
    row("moe_dispatch_bwd", size, timed(lambda: call("cudann_moe_dispatch_backward", ptr(xs), ptr(order), ptr(out), I(tokens), I(dim), I(k), stream())),
        timed(lambda: xs[inverse].view(tokens, k, dim).sum(1)), 4 * tokens * dim * (1 + k), ">=90% copy bw")


def bench_decode():
    """Decode attention (one new token per sequence) against a float32 KV
    cache, Llama-style GQA (32 query heads, 8 KV heads, d 128, and narrow
    heads of d 64): bound by reading the cache once; torch SDPA (enable_gqa)
    on the same data. Both sides replayed from CUDA graphs: at batch 1 a
    call's GPU time (16 us for the 4k cache) is shorter than the host's call
    overhead from Python."""
    h, kvh = 32, 8
    # 1x8192 and 2x4096: the shapes furthest from the target in a sweep of split lengths (RESULTS).
    shapes = ((1, 4096), (1, 8192), (2, 4096), (1, 32768), (16, 8192), (64, 4096), (8, 32768))
    for b, length, d in [(b, n, 128) for b, n in shapes] + [(1, 8192, 64), (1, 32768, 64), (16, 8192, 64)]:
        q, out = torch.randn(b, 1, h, d, device=DEV), torch.empty(b, 1, h, d, device=DEV)
        k, v = torch.randn(b, length, kvh, d, device=DEV), torch.randn(b, length, kvh, d, device=DEV)
        scale = F(d ** -0.5)
        ours = lambda: call("cudann_attention_forward", ptr(q), ptr(k), ptr(v), None, ptr(out), None, I(b), I(1), I(length), I(length),
                            I(h), I(kvh), I(d), I(length - 1), I(1), scale, I(0), stream())
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        theirs = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
        row("attention decode", f"{b}x{length} gqa32/8" + (f" d{d}" if d != 128 else ""), graphed(ours), graphed(theirs, calls=3, reps=10),
            2 * 4 * b * length * kvh * d, ">=80% copy bw")
        del q, out, k, v, qt, kt, vt
        torch.cuda.empty_cache()


def main():
    tf32 = "cudann TF32 on" if os.environ.get("CUDANN_ALLOW_TF32") == "1" else "TF32 off"
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | torch TF32 off, {tf32}")
    bw = copy_bandwidth()
    print(f"# device copy bandwidth: {bw / 1e12:.2f} TB/s (read + write)")
    for bench in (bench_elementwise, bench_rows, bench_adamw, bench_gemm, bench_attention, bench_sampling, bench_training, bench_backward, bench_decode):
        if not ONLY or bench.__name__[len("bench_"):] in ONLY:
            bench()
    print(f"{'op':<18} {'size':<16} {'ours ms':>9} {'torch ms':>9} {'torch/ours':>10} {'% copy bw':>9}  target")
    for op, size, ours, theirs, moved, target in ROWS:
        pct = 100 * moved / (ours * 1e-3) / bw
        print(f"{op:<18} {size:<16} {ours:>9.4f} {theirs:>9.4f} {theirs / ours:>9.2f}x {pct:>8.1f}%  {target}")


if __name__ == "__main__":
    main()
