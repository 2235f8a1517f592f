// Pieces shared by the row kernels (softmax.cu, loss.cu): a row held in
// registers, and the online (max, sum of exp) pass for rows too wide for them.
#pragma once
#include "common.cuh"

// Floats of a row each thread keeps in registers: rows up to 32 * blockDim.x
// (32768 with 1024 threads) are read once and written once.
#define ROW_ITEMS 32

// Loads a row into registers: N chunks of V consecutive floats per thread,
// chunk j at float offset (j * blockDim.x + threadIdx.x) * V, -inf past the
// end; V == 4 needs cols % 4 == 0 and 16-byte aligned rows. Returns the row's
// max over the block (NaN ignored).
template <int V, int N> __device__ float row_load_max(const float* x, int cols, float (&v)[N][V]) {
    float m = -INF;
#pragma unroll
    for (int j = 0; j < N; ++j) {
        const int c = (j * (int)blockDim.x + (int)threadIdx.x) * V;
        if (c < cols) {
            load_vec<V>(x + c, v[j]);
        } else {
#pragma unroll
            for (int e = 0; e < V; ++e) v[j][e] = -INF;
        }
#pragma unroll
        for (int e = 0; e < V; ++e) m = fmaxf(m, v[j][e]);
    }
    return block_allreduce(m, Max(), -INF);
}

// Writes the chunks of row_load_max back (those inside the row).
template <int V, int N> __device__ void row_store(float* y, int cols, float (&v)[N][V]) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
        const int c = (j * (int)blockDim.x + (int)threadIdx.x) * V;
        if (c < cols) store_vec<V>(y + c, v[j]);
    }
}

// One pass of an online (max, sum of exp(x - max)) over a row, then both over
// the block: {max, sum}; the sum is 0 for an all -inf row, NaN if x has a NaN.
// Each thread's sum runs over cols / blockDim terms (16384 at 2^24 columns):
// in double, so the row's sum stays within float rounding at any width.
__device__ float2 row_max_sumexp(const float* x, int cols) {
    float m = -INF;
    double s = 0.0;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = x[c];
        if (v > m) {
            s = s * expf(m - v) + 1.0;  // expf(-inf) = 0 on the first element
            m = v;
        } else if (v != -INF) {
            s += expf(v - m);
        }
    }
    const float bm = block_allreduce(m, Max(), -INF);
    const float ts = m == -INF ? 0.0f : (float)(s * expf(m - bm));
    return make_float2(bm, block_allreduce(ts, Sum(), 0.0f));
}

// Op applied to every row of x[rows, cols], writing y (blocks stride over rows):
// Op::cached with 16-byte loads when the row fits in registers and both rows
// are 16-byte aligned, with scalar loads when it only fits, else Op::looped.
template <class Op> __device__ void each_row(const float* x, float* y, int rows, int cols) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * cols;
        float* yr = y + row * cols;
        const int fit = ROW_ITEMS * (int)blockDim.x;
        if (cols % 4 == 0 && aligned16(xr) && aligned16(yr) && cols <= fit)
            Op::template cached<4, ROW_ITEMS / 4>(xr, yr, cols);
        else if (cols <= fit)
            Op::template cached<1, ROW_ITEMS>(xr, yr, cols);
        else
            Op::looped(xr, yr, cols);
    }
}
