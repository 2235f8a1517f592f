// Row softmax and the MoE router's top-k.
#include "rows.cuh"

// Row softmax for each_row (rows.cuh).
struct SoftmaxRow {
    // Softmax of a row held in registers; reads the whole row before writing, so y
    // may be x.
    template <int V, int N> __device__ static void cached(const float* x, float* y, int cols) {
        float v[N][V];
        const float m = row_load_max<V, N>(x, cols, v);
        // All -inf: every probability is 0 (and x - m would be NaN).
        const float shift = m == -INF ? 0.0f : m;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < N; ++j)
#pragma unroll
            for (int e = 0; e < V; ++e) s += v[j][e] = expf(v[j][e] - shift);
        s = block_allreduce(s, Sum(), 0.0f);
        const float inv = m == -INF ? 0.0f : 1.0f / s;
#pragma unroll
        for (int j = 0; j < N; ++j)
#pragma unroll
            for (int e = 0; e < V; ++e) v[j][e] *= inv;
        row_store<V, N>(y, cols, v);
    }

    // Rows too wide for registers: one pass for an online (max, sum of exp), one
    // pass to write. Each element is read before the same thread writes it.
    __device__ static void looped(const float* x, float* y, int cols) {
        const float2 ms = row_max_sumexp(x, cols);
        const float inv = ms.x == -INF ? 0.0f : 1.0f / ms.y;
        const float shift = ms.x == -INF ? 0.0f : ms.x;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) y[c] = expf(x[c] - shift) * inv;
    }
};

// Launch: block 1024, grid rows (any grid works: blocks stride over rows).
// Stable (the row max is subtracted); -inf gives 0; an all -inf row gives zeros.
extern "C" __global__ void __launch_bounds__(1024) softmax_f32(const float* x, float* y, int rows, int cols) {
    each_row<SoftmaxRow>(x, y, rows, cols);
}

// Launch: block 32 (one warp per row; a larger block runs one row per warp),
// grid rows. Per row the k best columns in rank order (larger value first,
// ties: lower index first; IEEE total order, as the CPU backend), and their
// softmax probabilities renormalised over the k:
// w = exp(x_j - max) / sum over the selected of exp(x_i - max). An all -inf
// row gives indices 0..k-1 and weights 0. w must not alias x.
//
// Selection: k rounds, each picking the best element ranked strictly after the
// previous pick (one scan of the row and a warp max per round, so O(k * cols);
// meant for router widths).
extern "C" __global__ void softmax_topk_f32(const float* x, float* w, int* idx, int rows, int cols, int k) {
    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    for (i64 row = (i64)blockIdx.x * warps + (threadIdx.x >> 5); row < rows; row += (i64)gridDim.x * warps) {
        const float* xr = x + row * cols;
        float* wr = w + row * k;
        int* ir = idx + row * k;
        i64 prev = 0x7fffffffffffffffLL;  // every element ranks after "nothing"
        float m = 0.0f, s = 0.0f;          // row max; this lane's sum of its weights
        for (int r = 0; r < k; ++r) {
            i64 best = NO_RANK;
            for (i64 c = lane; c < cols; c += 32) {
                const i64 rank = pack_rank(total_order_key(xr[c]), c);
                if (rank < prev && rank > best) best = rank;
            }
            best = warp_allreduce(best, Max());
            prev = best;
            const float v = from_total_order_key(rank_key(best));
            if (r == 0) m = v;
            // Lane r % 32 owns slot r: it writes it now and rescales it below,
            // so no lane reads another lane's writes.
            if ((r & 31) == lane) {
                const float e = m == -INF ? 0.0f : expf(v - m);
                ir[r] = rank_index(best);
                wr[r] = e;
                s += e;
            }
        }
        s = warp_allreduce(s, Sum());
        const float inv = m == -INF ? 0.0f : 1.0f / s;
        for (i64 r = lane; r < k; r += 32) wr[r] *= inv;
    }
}

// Launch: block 1024, grid rows (blocks stride over rows). Softmax backward
// from the forward's output y: dx = y (dy - sum over the row of dy y). dx may
// be dy or y: a thread reads its elements again after the row's reduction (a
// barrier) and writes only those.
extern "C" __global__ void __launch_bounds__(1024)
    softmax_backward_f32(const float* dy, const float* y, float* dx, int rows, int cols) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* dyr = dy + row * cols;
        const float* yr = y + row * cols;
        float* dxr = dx + row * cols;
        float s = 0.0f;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += dyr[c] * yr[c];
        s = block_allreduce(s, Sum(), 0.0f);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) dxr[c] = yr[c] * (dyr[c] - s);
    }
}

// Elements a thread of softmax_backward_cached_f32 loads before it stores:
// dx may alias dy or y, so the compiler cannot move a load above an earlier
// store by itself.
#define SB_BATCH 8

// Launch: block 1024, grid at most the blocks resident at once (blocks
// stride over rows), cols * 4 bytes of dynamic shared memory. As
// softmax_backward_f32, the same arithmetic, for long rows: the blocks
// resident on the GPU hold more rows than L2 does, so that kernel's second
// pass reads y and dy from memory again, and its block does nothing else
// meanwhile. Here a block keeps its row of y in shared memory and, in one
// loop, finishes row r (dy again, from L2) while it reads row r + grid (y
// into the same slots, and dy) and sums its dot product: memory is read
// without pauses but the row reductions. Each thread touches only its own
// elements of the shared row, so no barrier guards it; its stores go to
// elements it has read already, so batching its loads ahead of them is safe.
// sb_pass: dx of the row in ys (dxr non-null) and, with yn non-null, the next
// row's y into ys and its sum of dy y (returned).
__device__ __forceinline__ float sb_pass(float* ys, const float* dyr, float* dxr, float s, const float* yn,
                                         const float* dyn, int cols) {
    const int step = blockDim.x;
    float t = 0.0f;
    for (int c0 = threadIdx.x; c0 < cols; c0 += SB_BATCH * step) {
        float d[SB_BATCH], yv[SB_BATCH], dv[SB_BATCH];
#pragma unroll
        for (int u = 0; u < SB_BATCH; ++u) {
            const int c = c0 + u * step;
            d[u] = dxr != nullptr && c < cols ? dyr[c] : 0.0f;
            yv[u] = yn != nullptr && c < cols ? yn[c] : 0.0f;
            dv[u] = yn != nullptr && c < cols ? dyn[c] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < SB_BATCH; ++u) {
            const int c = c0 + u * step;
            if (c >= cols) break;
            if (dxr != nullptr) dxr[c] = ys[c] * (d[u] - s);
            if (yn != nullptr) {
                ys[c] = yv[u];
                t += dv[u] * yv[u];
            }
        }
    }
    return yn != nullptr ? block_allreduce(t, Sum(), 0.0f) : 0.0f;
}

// The row loop of the two kernels below: the first row's pass, then each
// row's dx while the row a grid later loads. pass(dyr, dxr, s, yn, dyn) is
// sb_pass or sr_pass without their row state.
template <class Pass>
__device__ __forceinline__ void softmax_backward_rows(const float* dy, const float* y, float* dx, int rows, int cols,
                                                      Pass pass) {
    i64 row = blockIdx.x;  // the row whose y is in shared memory, and its sum of dy y in s
    if (row >= rows) return;
    float s = pass(nullptr, nullptr, 0.0f, y + row * cols, dy + row * cols);
    for (;; row += gridDim.x) {
        const i64 next = row + gridDim.x;
        const bool more = next < rows;
        s = pass(dy + row * cols, dx + row * cols, s, more ? y + next * cols : nullptr, more ? dy + next * cols : nullptr);
        if (!more) break;
    }
}

extern "C" __global__ void __launch_bounds__(1024)
    softmax_backward_cached_f32(const float* dy, const float* y, float* dx, int rows, int cols) {
    extern __shared__ float ys[];
    softmax_backward_rows(dy, y, dx, rows, cols, [&](const float* dyr, float* dxr, float s, const float* yn, const float* dyn) {
        return sb_pass(ys, dyr, dxr, s, yn, dyn, cols);
    });
}

// Columns a thread of softmax_backward_regs_f32 holds: rows up to 1024 *
// SR_ITEMS = 32768 wide.
#define SR_ITEMS 32

// A load and a store marked streaming (evict first) in plain asm: the
// __ldcs/__stcs intrinsics also keep the compiler from moving loads across
// the stores, which costs more than the hint gains (softmax backward 84% ->
// 75% of the copy bandwidth, not 90%). For data no later load of the kernel
// reads back.
__device__ __forceinline__ float load_streaming(const float* p) {
    float v;
    asm("ld.global.cs.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ void store_streaming(float* p, float v) { asm volatile("st.global.cs.f32 [%0], %1;" ::"l"(p), "f"(v)); }

// As sb_pass, with this thread's dy of the row in ys kept in registers (dyr,
// its element i at column threadIdx.x + 1024 i) instead of read again: dx of
// that row (dxr non-null) and, with yn non-null, the next row's y into ys and
// its dy into dyr, returning its sum of dy y. Every element is read or written
// once, so the loads and stores are marked streaming (evict first): 84% -> 93%
// of the copy bandwidth at 8192 x 32000 on an H100, 84% -> 88% on an H200.
__device__ __forceinline__ float sr_pass(float* ys, float (&dyr)[SR_ITEMS], float* dxr, float s, const float* yn,
                                         const float* dyn, int cols) {
    float t = 0.0f;
#pragma unroll
    for (int i0 = 0; i0 < SR_ITEMS; i0 += SB_BATCH) {
        float yv[SB_BATCH], dv[SB_BATCH];
#pragma unroll
        for (int u = 0; u < SB_BATCH; ++u) {
            const int c = threadIdx.x + (i0 + u) * 1024;
            yv[u] = yn != nullptr && c < cols ? load_streaming(yn + c) : 0.0f;
            dv[u] = yn != nullptr && c < cols ? load_streaming(dyn + c) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < SB_BATCH; ++u) {
            const int c = threadIdx.x + (i0 + u) * 1024;
            if (c < cols) {
                if (dxr != nullptr) store_streaming(dxr + c, ys[c] * (dyr[i0 + u] - s));
                if (yn != nullptr) ys[c] = yv[u];
            }
            dyr[i0 + u] = dv[u];
            t += dv[u] * yv[u];
        }
    }
    return yn != nullptr ? block_allreduce(t, Sum(), 0.0f) : 0.0f;
}

// Launch: block 1024, grid at most the blocks resident at once (blocks stride
// over rows), cols * 4 bytes of dynamic shared memory, cols <= 1024 *
// SR_ITEMS. As softmax_backward_cached_f32, with each thread's dy of its row
// in registers rather than read from L2 again: dy and y are read from memory
// once, dx written once.
extern "C" __global__ void __launch_bounds__(1024)
    softmax_backward_regs_f32(const float* dy, const float* y, float* dx, int rows, int cols) {
    extern __shared__ float ys[];
    float dyr[SR_ITEMS];  // this thread's dy of the row whose y is in ys
    softmax_backward_rows(dy, y, dx, rows, cols, [&](const float*, float* dxr, float s, const float* yn, const float* dyn) {
        return sr_pass(ys, dyr, dxr, s, yn, dyn, cols);
    });
}
