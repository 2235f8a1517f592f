// Deterministic row scatter-add (embedding gradients): the body of optim.cu's
// scatter_add_f32.
#pragma once
#include "common.cuh"

// Rows of go handled per step of scatter_rows.
#define SCATTER_BATCH 8

// gw[r[j], c] += add[j] for j in order, r[j] < 0 skipped. When the rows are
// distinct (the same for every thread: no divergence) all loads go first so
// their latencies overlap; a repeated row must see the earlier sum.
__device__ __forceinline__ void scatter_batch(float* gw, i64 c, int dim, const int (&r)[SCATTER_BATCH],
                                              const float (&add)[SCATTER_BATCH]) {
    bool distinct = true;
#pragma unroll
    for (int j = 1; j < SCATTER_BATCH; ++j)
#pragma unroll
        for (int k = 0; k < j; ++k) distinct &= r[j] < 0 || r[j] != r[k];
    if (distinct) {
        float cur[SCATTER_BATCH];
#pragma unroll
        for (int j = 0; j < SCATTER_BATCH; ++j) cur[j] = r[j] >= 0 ? gw[(i64)r[j] * dim + c] : 0.0f;
#pragma unroll
        for (int j = 0; j < SCATTER_BATCH; ++j)
            if (r[j] >= 0) gw[(i64)r[j] * dim + c] = cur[j] + add[j];
    } else {
#pragma unroll
        for (int j = 0; j < SCATTER_BATCH; ++j)
            if (r[j] >= 0) gw[(i64)r[j] * dim + c] += add[j];
    }
}

// The body of scatter_add_f32 (its launch: block
// 256, any multiple of 32 up to 1024; grid ceil(dim / 256), threads stride over
// columns). gw[idx[i], c] += go[i, c] for i = 0..num-1 in order; idx outside
// [0, bound) skipped. One thread owns a (destination row, column)
// element for the whole loop, so duplicates accumulate in index order with no
// atomics: deterministic, and the same sums as the CPU backend.
//
// Optional: grid.y = Y > 1 splits the destination rows among Y blocks per
// column range (row r goes to blockIdx.y == r % Y), for Y times the
// parallelism; each block still keeps its rows' updates in index order.
__device__ void scatter_rows(const float* go, const int* idx, float* gw, int num, int dim, int bound) {
    // This block's (index, row) pairs of one batch of idx, in index order.
    __shared__ int s_i[1024], s_r[1024];
    const unsigned ys = gridDim.y, yi = blockIdx.y;
    for (i64 base = 0; base < num; base += blockDim.x) {
        // Compact the batch: keep i whose row is this block's, preserving order.
        const i64 i = base + threadIdx.x;
        const int r = i < num ? idx[i] : -1;
        const bool keep = r >= 0 && r < bound && (ys == 1 || (unsigned)r % ys == yi);
        int count;
        const int pos = block_keep_rank(keep, count);
        if (keep) s_i[pos] = (int)i, s_r[pos] = r;
        __syncthreads();
        for (i64 c = grid_thread(); c < dim; c += grid_threads()) {
            for (int k0 = 0; k0 < count; k0 += SCATTER_BATCH) {
                int rows[SCATTER_BATCH];
                float add[SCATTER_BATCH];
#pragma unroll
                for (int j = 0; j < SCATTER_BATCH; ++j) {
                    const bool ok = k0 + j < count;
                    rows[j] = ok ? s_r[k0 + j] : -1;
                    add[j] = ok ? go[(i64)s_i[k0 + j] * dim + c] : 0.0f;
                }
                scatter_batch(gw, c, dim, rows, add);
            }
        }
        __syncthreads();  // before the next batch overwrites the lists
    }
}
