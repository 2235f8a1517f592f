// RMSNorm and its fused residual form. Launch: block 1024, grid rows (any
// grid works: blocks stride over rows).
#include "common.cuh"

// Floats of a row each thread keeps in registers: rows up to 8 * blockDim.x
// (8192 with 1024 threads) are read once. Kept small so that two 1024-thread
// blocks fit on an SM (__launch_bounds__ below, 32 registers): rows are short,
// so overlap between blocks is what hides memory latency. (-D overrides it
// for experiments; 16 spills at 32 registers.)
#ifndef NORM_ITEMS
#define NORM_ITEMS 8
#endif

// Thread chunk j of a row starts at float offset (j * blockDim.x + threadIdx.x) * V.
template <int V> __device__ __forceinline__ int chunk_offset(int j) { return (j * (int)blockDim.x + (int)threadIdx.x) * V; }

// 1 / sqrt(mean of squares + eps) over the whole block; ss is this thread's part.
__device__ __forceinline__ float inv_rms(float ss, int hidden, float eps) {
    ss = block_allreduce(ss, Sum(), 0.0f);
    return 1.0f / sqrtf(ss / (float)hidden + eps);
}

// y = x * r * w on a cached row. Reads x, w (and r) of every element before
// writing any: y == x (and s == x or s == r) are safe.
template <int V, int N, bool RESIDUAL>
__device__ void rmsnorm_row_cached(const float* x, const float* res, const float* w, float* y, float* s, int hidden,
                                   float eps) {
    float v[N][V], wv[N][V];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
        const int c = chunk_offset<V>(j);
        if (c < hidden) {
            load_vec<V>(x + c, v[j]);
            load_vec<V>(w + c, wv[j]);  // now, so its latency overlaps the reduction
            if (RESIDUAL) {
                float r[V];
                load_vec<V>(res + c, r);
#pragma unroll
                for (int e = 0; e < V; ++e) v[j][e] += r[e];
            }
        } else {
#pragma unroll
            for (int e = 0; e < V; ++e) v[j][e] = 0.0f;
        }
#pragma unroll
        for (int e = 0; e < V; ++e) ss += v[j][e] * v[j][e];
    }
    // s after all loads (it may alias x or r; storing early would also stop
    // the compiler from issuing later chunks' loads ahead of the store).
    if (RESIDUAL) {
#pragma unroll
        for (int j = 0; j < N; ++j)
            if (chunk_offset<V>(j) < hidden) store_vec<V>(s + chunk_offset<V>(j), v[j]);
    }
    const float inv = inv_rms(ss, hidden, eps);
#pragma unroll
    for (int j = 0; j < N; ++j) {
        const int c = chunk_offset<V>(j);
        if (c < hidden) {
#pragma unroll
            for (int e = 0; e < V; ++e) v[j][e] = v[j][e] * inv * wv[j][e];
            store_vec<V>(y + c, v[j]);
        }
    }
}

// Wider rows: pass 1 sums squares (and writes s), pass 2 re-reads the row
// (mostly from cache) and writes y. Each thread touches the same elements in
// both passes, so its own writes of s are what it reads back. A thread's sum
// runs over hidden / blockDim elements (16384 at 2^24 columns): in double, so
// the row's sum stays within float rounding at any width.
template <bool RESIDUAL>
__device__ void rmsnorm_row_looped(const float* x, const float* res, const float* w, float* y, float* s, int hidden,
                                   float eps) {
    double ss = 0.0;
    for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) {
        float v = x[c];
        if (RESIDUAL) {
            v += res[c];
            s[c] = v;
        }
        ss += v * v;
    }
    const float inv = inv_rms((float)ss, hidden, eps);
    const float* src = RESIDUAL ? s : x;
    for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) y[c] = src[c] * inv * w[c];
}

template <bool RESIDUAL>
__device__ void rmsnorm_rows(const float* x, const float* res, const float* w, float* y, float* s, int rows,
                             int hidden, float eps) {
    const int fit = NORM_ITEMS * (int)blockDim.x;
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const i64 o = row * hidden;
        const bool vec = hidden % 4 == 0 && aligned16(x + o) && aligned16(y + o) && aligned16(w) &&
                         (!RESIDUAL || (aligned16(res + o) && aligned16(s + o)));
        if (vec && hidden <= fit)
            rmsnorm_row_cached<4, NORM_ITEMS / 4, RESIDUAL>(x + o, res + o, w, y + o, s + o, hidden, eps);
        else if (hidden <= fit)
            rmsnorm_row_cached<1, NORM_ITEMS, RESIDUAL>(x + o, res + o, w, y + o, s + o, hidden, eps);
        else
            rmsnorm_row_looped<RESIDUAL>(x + o, res + o, w, y + o, s + o, hidden, eps);
    }
}

// y = x / sqrt(mean(x^2) + eps) * w; y may be x.
extern "C" __global__ void __launch_bounds__(1024, 2)
    rmsnorm_f32(const float* x, const float* w, float* y, int rows, int hidden, float eps) {
    rmsnorm_rows<false>(x, nullptr, w, y, nullptr, rows, hidden, eps);
}

// s = x + r; y = rmsnorm(s) * w. y and s may each be x or r (not each other).
extern "C" __global__ void __launch_bounds__(1024, 2) rmsnorm_residual_f32(
    const float* x, const float* r, const float* w, float* y, float* s, int rows, int hidden, float eps) {
    rmsnorm_rows<true>(x, r, w, y, s, rows, hidden, eps);
}
