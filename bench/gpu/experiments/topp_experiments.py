#!/usr/bin/env python3
"""Top-p at batch 256: the experiments of 2026-11-23 (bench/RESULTS.md).

From the repository root, on an sm_90 GPU with CuPy. Each compares tokens with the
committed exact kernel (topp_sample_f32) where it draws, and prints ms per launch.

    python3 bench/gpu/experiments/topp_experiments.py binning   # cost of binning every token in the plain draw
    python3 bench/gpu/experiments/topp_experiments.py twokernel # topp_twokernel.cu: the second read by clusters, in a second kernel
    python3 bench/gpu/experiments/topp_experiments.py tries [SOURCE]  # how the cluster top-p ends its rows
    python3 bench/gpu/experiments/topp_experiments.py bins-floor  # kernels/sample_cluster.cu against the committed PTX
    python3 bench/gpu/experiments/topp_experiments.py occupancy  # the cluster top-p with fewer blocks per row, more per SM
    python3 bench/gpu/experiments/topp_experiments.py sketch     # cost of summing the row's masses in the plain draw

bins-floor measured the shipped floor of the bins against the PTX of commit 21f06b5
(before it; git checkout 21f06b5 -- kernels/ptx). The cluster that keeps its row in
shared memory (not shipped) is a patch on commit 21f06b5; CUDANN_ROOT points the
script at a checkout of it:

    git worktree add /tmp/cached 21f06b5 && git -C /tmp/cached apply "$PWD"/bench/gpu/experiments/topp-cached-cluster.patch
    CUDANN_ROOT=/tmp/cached python3 bench/gpu/experiments/topp_experiments.py floor   # load + max + one exp pass
    CUDANN_ROOT=/tmp/cached python3 bench/gpu/experiments/topp_experiments.py cached
"""

import os
import shutil
import sys
import tempfile

import cupy as cp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("CUDANN_ROOT", os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
sys.path.insert(0, os.path.join(ROOT, "kernels"))
from bench_kernels import median_ms  # noqa: E402

f32, i32 = np.float32, np.int32
OPTS = ("-I" + os.path.join(ROOT, "kernels"), "--std=c++17", "-arch=sm_90")
VOCAB, ROWS = 131072, 256


def source(name):
    return open(os.path.join(ROOT, "kernels", name)).read()


def committed(module, name):
    return cp.RawModule(path=os.path.join(ROOT, "kernels", "ptx", module + ".ptx")).get_function(name)


def rows_of(scale, rows=ROWS, vocab=VOCAB):
    return cp.random.standard_normal((rows, vocab), dtype=f32) * f32(scale)


BINNING = r'''
#include "sampling.cuh"
extern "C" __global__ void __launch_bounds__(S_THREADS, 2)
    k1(const float* logits, int* out, const u64* seeds, int batch, int vocab, float temperature, float* sink) {
    extern __shared__ unsigned cnt[];
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x) {
        const float* xr = logits + row * vocab;
        for (int b = threadIdx.x; b < NB; b += S_THREADS) cnt[b] = 0;
        __syncthreads();
        const float ref = xr[0], k2 = 1.44269504f / temperature;
        Draw d(row_key(seeds[row], row), temperature, false);
        stream_pass(xr, vocab, d, [&](float x, int) {
            const float t = fminf(fmaxf(__fmul_rn(__fsub_rn(x, ref), k2 * SCALE) + NB / 2, 0.0f), NB - 1.0f);
            if (NB > 1) atomicAdd(&cnt[(int)t], 1u);
            return true;
        });
        finish(d, out, row, 0);
        __syncthreads();
        if (threadIdx.x == 0) sink[row] = (float)cnt[NB / 2];
    }
}
'''


def binning():
    """The plain streaming draw (sample_f32's) with a count per bin of (x - x_0) / T for every token."""
    seeds, out, sink = cp.arange(ROWS, dtype=cp.uint64), cp.empty(ROWS, i32), cp.empty(ROWS, f32)
    data = {s: rows_of(s) for s in (1.0, 3.0)}
    for nb, scale in ((1, 1), (4096, 64), (16384, 256), (32768, 512)):
        k = cp.RawKernel(BINNING.replace("NB", str(nb)).replace("SCALE", f"{scale}.0f"), "k1", options=OPTS)
        k.max_dynamic_shared_size_bytes = 4 * nb
        cells = [f"N(0,{s:g}) {median_ms(lambda: k((ROWS,), (1024,), (x, out, seeds, i32(ROWS), i32(VOCAB), f32(1.0), sink), shared_mem=4 * nb)):.4f}"
                 for s, x in data.items()]
        print(f"bins {nb:6d} (1/{scale} log2 unit): " + " ".join(cells), flush=True)


FLOOR = r'''
#define S_THREADS NT
#include "cluster.cuh"
__shared__ float bmax;
extern "C" __global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(S_THREADS, 1)
    lf(const float* logits, int* out, int batch, int vocab) {
    extern __shared__ float4 c4[];
    const unsigned rank = cluster_rank();
    for (i64 row = blockIdx.x / CL; row < batch; row += gridDim.x / CL) {
        const int seg = vocab / CL / 4;  // float4s per block
        const float4* x4 = reinterpret_cast<const float4*>(logits + row * vocab) + rank * seg;
        float m = -INF;
        for (int i0 = threadIdx.x; i0 < seg; i0 += S_THREADS * 8) {
            float4 v[8];
#pragma unroll
            for (int q = 0; q < 8; ++q) v[q] = i0 + q * S_THREADS < seg ? x4[i0 + q * S_THREADS] : make_float4(0, 0, 0, 0);
#pragma unroll
            for (int q = 0; q < 8; ++q)
                if (i0 + q * S_THREADS < seg) c4[i0 + q * S_THREADS] = v[q], m = fmaxf(m, fmaxf(fmaxf(v[q].x, v[q].y), fmaxf(v[q].z, v[q].w)));
        }
        m = block_allreduce(m, Max(), -INF);
        if (threadIdx.x == 0) bmax = m;
        cluster_sync();
        float g = -INF;
        for (unsigned r = 0; r < CL; ++r) g = fmaxf(g, *cluster_map(&bmax, r));
        float s = 0.0f;
        for (int i = threadIdx.x; i < seg; i += S_THREADS) {
            const float4 v = c4[i];
            s += exp2_approx(v.x - g) + exp2_approx(v.y - g) + exp2_approx(v.z - g) + exp2_approx(v.w - g);
        }
        s = block_allreduce(s, Sum(), 0.0f);
        cluster_sync();
        if (rank == 0 && threadIdx.x == 0) out[row] = (int)s;
    }
}
'''


def floor():
    """The least a cluster per row that keeps its row in shared memory costs: read, max, one exp pass.
    Needs kernels/cluster.cuh (topp-cached-cluster.patch, CUDANN_ROOT)."""
    x, out = rows_of(1.0), cp.empty(ROWS, i32)
    for cl, nt in ((4, 512), (4, 1024), (8, 512), (8, 1024)):
        k = cp.RawKernel(FLOOR.replace("NT", str(nt)).replace("CL", str(cl)), "lf", options=OPTS)
        smem = VOCAB // cl * 4
        k.max_dynamic_shared_size_bytes = smem
        t = median_ms(lambda: k((ROWS * cl,), (nt,), (x, out, i32(ROWS), i32(VOCAB)), shared_mem=smem))
        print(f"cluster {cl} x {nt} threads, {smem // 1024} KB of the row per block: {t:.4f} ms", flush=True)


def cached():
    """topp_cached_f32 (topp-cached-cluster.patch, CUDANN_ROOT) against the exact and the shipped cluster kernel."""
    k = cp.RawKernel(source("topp_cluster.cu"), "topp_cached_f32", options=OPTS)
    exact, shipped = committed("sample", "topp_sample_f32"), committed("sample_cluster", "topp_cluster_f32")
    smem = lambda vocab: -(-(-(-vocab // 1024)) // 8) * 4096
    for vocab in (131072, 1000, 50257, 262144):
        k.max_dynamic_shared_size_bytes = smem(vocab)
        for s in (1.0, 3.0):
            for p, t in ((0.9, 1.0), (0.5, 0.7), (0.05, 1.0)):
                rows = 512 if vocab <= VOCAB else 64
                x, seeds = rows_of(s, rows, vocab), cp.random.randint(0, 2**62, rows, dtype=cp.uint64)
                a, b = cp.full(rows, -7, i32), cp.full(rows, -7, i32)
                exact((rows,), (1024,), (x, a, seeds, i32(rows), i32(vocab), f32(p), f32(t)))
                k((rows * 8,), (512,), (x, b, seeds, i32(rows), i32(vocab), f32(p), f32(t)), shared_mem=smem(vocab))
                print(f"vocab {vocab} N(0,{s:g}) p{p} T{t}: {int((a != b).sum().get())} of {rows} differ", flush=True)
    k.max_dynamic_shared_size_bytes = smem(VOCAB)
    for s in (1.0, 3.0):
        for p in (0.9, 0.5):
            for rows in (1, 8, 64, 256):
                x, seeds, out = rows_of(s, rows), cp.arange(rows, dtype=cp.uint64), cp.empty(rows, i32)
                args = (x, out, seeds, i32(rows), i32(VOCAB), f32(p), f32(1.0))
                tc = median_ms(lambda: k((rows * 8,), (512,), args, shared_mem=smem(VOCAB)))
                ts = median_ms(lambda: shipped((rows * 4,), (1024,), args))
                te = median_ms(lambda: exact((rows,), (1024,), args))
                print(f"N(0,{s:g}) p{p} rows {rows}: cached {tc:.4f} shipped cluster {ts:.4f} exact {te:.4f} ms", flush=True)


def bins_floor():
    """topp_cluster_f32 from source against the committed PTX."""
    k = cp.RawKernel(source("sample_cluster.cu"), "topp_cluster_f32", options=OPTS)
    exact, shipped = committed("sample", "topp_sample_f32"), committed("sample_cluster", "topp_cluster_f32")
    for vocab in (131072, 1500, 50257, 262144):
        for s in (1.0, 3.0):
            for p, t in ((0.9, 1.0), (0.5, 0.7), (0.2, 1.0), (0.05, 1.0)):
                rows = 256 if vocab <= VOCAB else 64
                x, seeds = rows_of(s, rows, vocab), cp.random.randint(0, 2**62, rows, dtype=cp.uint64)
                a, b = cp.full(rows, -7, i32), cp.full(rows, -7, i32)
                exact((rows,), (1024,), (x, a, seeds, i32(rows), i32(vocab), f32(p), f32(t)))
                k((rows * 4,), (1024,), (x, b, seeds, i32(rows), i32(vocab), f32(p), f32(t)))
                print(f"vocab {vocab} N(0,{s:g}) p{p} T{t}: {int((a != b).sum().get())} of {rows} differ", flush=True)
    rows = 64
    for s in (1.0, 3.0):
        x, seeds, out = rows_of(s, rows), cp.random.randint(0, 2**62, rows, dtype=cp.uint64), cp.empty(rows, i32)
        for p in (0.9, 0.5, 0.2):
            cells = []
            for name, kern in (("shipped", shipped), ("bins floor", k)):
                one = [median_ms(lambda: kern((4,), (1024,), (x[i], out[i:i + 1], seeds[i:i + 1], i32(1), i32(VOCAB), f32(p), f32(1.0))), reps=11, batch=5)
                       for i in range(32)]
                t64 = median_ms(lambda: kern((rows * 4,), (1024,), (x, out, seeds, i32(rows), i32(VOCAB), f32(p), f32(1.0))))
                cells.append(f"{name}: one row mean {np.mean(one):.4f} p90 {np.percentile(one, 90):.4f} max {max(one):.4f}, 64 rows {t64:.4f}")
            print(f"N(0,{s:g}) p{p}: " + " | ".join(cells), flush=True)


def twokernel():
    """topp_twokernel.cu: k1 (one block per row: draw, counts, decide) then k2 (a cluster per
    row left undecided: draw above the floor); stat 2: decided by k2, 3: k1 could not
    decide, 4: k2 could not (both would need the exact algorithm)."""
    src = open(os.path.join(HERE, "topp_twokernel.cu")).read()
    exact = committed("sample", "topp_sample_f32")
    data = {s: rows_of(s) for s in (3.0, 1.0)}
    seeds = cp.random.randint(0, 2**62, ROWS, dtype=cp.uint64)
    for nb, res, minb in ((8192, 128, 2), (32768, 512, 1), (16384, 256, 1)):
        src_n = src.replace("NBINS", str(nb)).replace("RESF", f"{res}.0").replace("MINB", str(minb))
        k1, k2 = (cp.RawKernel(src_n, name, options=OPTS) for name in ("k1", "k2"))
        k1.max_dynamic_shared_size_bytes = 4 * nb
        print(f"bins {nb} 1/{res} minb {minb}: k1 regs {k1.num_regs} local {k1.local_size_bytes}, k2 regs {k2.num_regs} local {k2.local_size_bytes}", flush=True)
        for s, x in data.items():
            for p, t in ((0.9, 1.0), (0.5, 1.0), (0.9, 0.5)):
                a, b, st = cp.full(ROWS, -7, i32), cp.full(ROWS, -7, i32), cp.zeros(ROWS, i32)
                exact((ROWS,), (1024,), (x, a, seeds, i32(ROWS), i32(VOCAB), f32(p), f32(t)))
                args1 = (x, b, seeds, i32(ROWS), i32(VOCAB), f32(p), f32(t))
                args2 = args1 + (st,)
                k1((ROWS,), (1024,), args1, shared_mem=4 * nb)
                n1 = int((b >= 0).sum().get())
                k2((ROWS * 4,), (1024,), args2)
                wrong = int(((a != b) & (b >= 0)).sum().get())
                v, c = np.unique(st.get(), return_counts=True)
                t1 = median_ms(lambda: k1((ROWS,), (1024,), args1, shared_mem=4 * nb))

                def both():
                    k1((ROWS,), (1024,), args1, shared_mem=4 * nb)
                    k2((ROWS * 4,), (1024,), args2)
                print(f"  N(0,{s * s:g}) p{p} T{t}: k1 {t1:.4f} k1+k2 {median_ms(both):.4f} ms; in after k1 {n1}, "
                      f"wrong {wrong}, k2 stats {dict(zip(v.tolist(), c.tolist()))}", flush=True)


def tries(path=os.path.join(ROOT, "kernels", "sample_cluster.cu")):
    """How topp_cluster_f32 (source at `path`) ends each row: decided at try 1, 2 or 3, too
    close to call (1), or every try's candidates out (2); both of the last go to the
    exact algorithm."""
    src = open(path).read().replace(
        "            if (verdict >= 0) {",
        "            if (rank == 0 && tid == 0) topp_trace[row] = tries * 10 + (verdict >= 0 ? 0 : verdict == -1 ? 1 : 2);\n"
        "            if (verdict >= 0) {", 1)
    src = src.replace("#define TOPP_TRIES", "__device__ int topp_trace[1024];\n#define TOPP_TRIES", 1)
    module = cp.RawModule(code=src, options=OPTS)
    k, trace = module.get_function("topp_cluster_f32"), module.get_global("topp_trace")
    rows, out = 512, cp.empty(512, i32)
    for s in (1.0, 3.0):
        x, seeds = rows_of(s, rows), cp.random.randint(0, 2**62, rows, dtype=cp.uint64)
        for p in (0.9, 0.5, 0.2):
            k((rows * 4,), (1024,), (x, out, seeds, i32(rows), i32(VOCAB), f32(p), f32(1.0)))
            v, c = np.unique(cp.ndarray((rows,), i32, trace).get(), return_counts=True)
            print(f"N(0,{s:g}) p{p}: " + ", ".join(f"try {e // 10} {['in', 'close', 'out'][e % 10]}: {n}" for e, n in zip(v, c)), flush=True)


def occupancy():
    """topp_cluster_f32 rebuilt with 1 or 2 blocks per row, 256 to 1024 threads and 1 to 8 blocks
    per SM (sampling.cuh's S_THREADS and the launch bounds edited in a copy of kernels/)."""
    seeds = cp.arange(ROWS, dtype=cp.uint64) * 7919 + 11
    exact = committed("sample", "topp_sample_f32")
    data = {s: rows_of(s) for s in (1.0, 3.0)}
    runs = [(s, p, x) for s, x in data.items() for p in (0.9, 0.5)]
    want = {}
    for s, p, x in runs:
        want[s, p] = cp.empty(ROWS, i32)
        launch = lambda: exact((ROWS,), (1024,), (x, want[s, p], seeds, i32(ROWS), i32(VOCAB), f32(p), f32(1.0)))
        print(f"topp_sample_f32 N(0,{s:g}) p{p} b{ROWS}: {median_ms(launch):.4f}", flush=True)
    for cl, threads, per_sm in ((4, 1024, 1), (1, 1024, 1), (1, 1024, 2), (1, 512, 2), (1, 512, 3), (1, 512, 4),
                                (2, 512, 2), (2, 512, 4), (1, 256, 4), (1, 256, 8)):
        inc = tempfile.mkdtemp()
        shutil.copytree(os.path.join(ROOT, "kernels"), inc, dirs_exist_ok=True)
        with open(os.path.join(inc, "sampling.cuh"), "w") as f:
            f.write(source("sampling.cuh").replace("#define S_THREADS 1024", f"#define S_THREADS {threads}"))
        src = source("sample_cluster.cu").replace("#define SAMPLE_CLUSTER 4", f"#define SAMPLE_CLUSTER {cl}")
        src = src.replace("#define TOPP_BINS 1024", f"#define TOPP_BINS {threads}")  # one bin per thread
        at = src.rindex("__launch_bounds__(S_THREADS, 1)", 0, src.index("topp_cluster_f32(const float* logits"))
        src = src[:at] + src[at:].replace("__launch_bounds__(S_THREADS, 1)", f"__launch_bounds__(S_THREADS, {per_sm})", 1)
        k = cp.RawKernel(src, "topp_cluster_f32", options=("-I" + inc,) + OPTS[1:])
        cells, differ = [], 0
        for s, p, x in runs:
            out = cp.empty(ROWS, i32)
            k((cl * ROWS,), (threads,), (x, out, seeds, i32(ROWS), i32(VOCAB), f32(p), f32(1.0)))
            differ += int((out != want[s, p]).sum())
            for rows in (64, ROWS):
                launch = lambda: k((cl * rows,), (threads,), (x, out, seeds, i32(rows), i32(VOCAB), f32(p), f32(1.0)))
                cells.append(f"N{s:g} p{p} b{rows} {median_ms(launch):.4f}")
        print(f"{cl} blocks/row, {threads} threads, {per_sm} blocks/SM ({k.num_regs} registers), "
              f"tokens differing {differ}/{len(runs) * ROWS}: " + "  ".join(cells), flush=True)
        shutil.rmtree(inc)


SKETCH = r'''
#include "sampling.cuh"
// MODE 0: the plain draw; 1: and every token's approximate p summed; 2: and p added to one of
// 8 bins of (x - 0) / T kept per thread in shared memory; 3: and to 8 sums in registers, one
// per threshold.
template <int MODE> __device__ void sketch(const float* logits, int* out, const u64* seeds, int batch, int vocab,
                                           float temperature, float* sink) {
    __shared__ float col[MODE == 2 ? 8 : 1][S_THREADS];
    const float k2 = 1.44269504f / temperature;
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x) {
        float z = 0.0f, acc[8] = {};
        if (MODE == 2)
            for (int b = 0; b < 8; ++b) col[b][threadIdx.x] = 0.0f;
        Draw d(row_key(seeds[row], row), temperature, false);
        stream_pass(logits + row * vocab, vocab, d, [&](float x, int) {
            if (MODE >= 1) {
                const float y = x * k2, p = exp2_approx(y);
                z += p;
                if (MODE == 2) col[min(max((int)(8.0f - y * 2.0f), 0), 7)][threadIdx.x] += p;
                if (MODE == 3)
#pragma unroll
                    for (int b = 0; b < 8; ++b) acc[b] += y > 4.0f - b * 0.5f ? p : 0.0f;
            }
            return true;
        });
        finish(d, out, row, 0);
        for (int b = 0; b < 8; ++b) z += (MODE == 2 ? col[b][threadIdx.x] : acc[b]) * (b + 1);
        if (z == 1234.5f) sink[0] = z;  // keeps the sums
    }
}
#define SKETCH_KERNEL(M) extern "C" __global__ void __launch_bounds__(S_THREADS, 2) \
    sketch##M(const float* l, int* o, const u64* s, int b, int v, float t, float* k) { sketch<M>(l, o, s, b, v, t, k); }
SKETCH_KERNEL(0)
SKETCH_KERNEL(1)
SKETCH_KERNEL(2)
SKETCH_KERNEL(3)
'''


def sketch():
    """What summarising the row's masses costs in the plain streaming draw (SKETCH's modes)."""
    seeds, out, sink = cp.arange(ROWS, dtype=cp.uint64), cp.empty(ROWS, i32), cp.empty(1, f32)
    plain = committed("sample", "sample_f32")
    mod = cp.RawModule(code=SKETCH, options=OPTS)
    for s in (1.0, 3.0):
        x = rows_of(s)
        cells = [f"sample_f32 {median_ms(lambda: plain((ROWS,), (1024,), (x, out, seeds, i32(ROWS), i32(VOCAB), f32(1.0)))):.4f}"]
        for m in range(4):
            f = mod.get_function(f"sketch{m}")
            cells.append(f"mode {m} {median_ms(lambda: f((ROWS,), (1024,), (x, out, seeds, i32(ROWS), i32(VOCAB), f32(1.0), sink))):.4f}")
        cells.append(f"x.sum(1) {median_ms(lambda: x.sum(1)):.4f}")
        print(f"N(0,{s:g}) b{ROWS}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    cp.random.seed(7)
    {"binning": binning, "floor": floor, "cached": cached, "bins-floor": bins_floor, "tries": tries, "twokernel": twokernel,
     "occupancy": occupancy, "sketch": sketch}[sys.argv[1]](*sys.argv[2:])
