// RMSNorm and its fused residual form; LayerNorm; the backward passes of both.
// Launch: block 1024, grid rows (any grid works: blocks stride over rows).
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


// ----------------------------------------------------------------------------- LayerNorm, backward passes
// Rows are read from global memory in each pass (the second and later reads
// mostly hit cache). Every pass reads a thread's own elements only, and the
// block reductions between passes are barriers, so a row's output may be its
// input (y == x) wherever the last pass writes.

// Per row: {mean, 1 / sqrt(mean((x - mean)^2) + eps)} for LayerNorm
// (CENTER), {0, 1 / sqrt(mean(x^2) + eps)} for RMSNorm. Two passes, as the CPU
// backend: the variance from the centred values.
template <bool CENTER> __device__ float2 row_stats(const float* x, int hidden, float eps) {
    float mean = 0.0f;
    if (CENTER) {
        float s = 0.0f;
        for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) s += x[c];
        mean = block_allreduce(s, Sum(), 0.0f) / (float)hidden;
    }
    float ss = 0.0f;
    for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) {
        const float d = x[c] - mean;
        ss += d * d;
    }
    ss = block_allreduce(ss, Sum(), 0.0f);
    return make_float2(mean, 1.0f / sqrtf(ss / (float)hidden + eps));
}

// y = (x - mean) / sqrt(var + eps) * w + b (biased variance); y may be x.
extern "C" __global__ void __launch_bounds__(1024)
    layernorm_f32(const float* x, const float* w, const float* b, float* y, int rows, int hidden, float eps) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * hidden;
        float* yr = y + row * hidden;
        const float2 st = row_stats<true>(xr, hidden, eps);
        for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) yr[c] = (xr[c] - st.x) * st.y * w[c] + b[c];
    }
}

// xhat = (x - mean) * rstd, the normalised rows (center = 1: LayerNorm; 0:
// RMSNorm, x * rstd). The backward passes write it into d_input, whose space
// is free until their last kernel, for column_sums_f32 to read: xhat must not
// alias x.
extern "C" __global__ void __launch_bounds__(1024)
    norm_xhat_f32(const float* x, float* xhat, int rows, int hidden, float eps, int center) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * hidden;
        float* hr = xhat + row * hidden;
        const float2 st = center ? row_stats<true>(xr, hidden, eps) : row_stats<false>(xr, hidden, eps);
        for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) hr[c] = (xr[c] - st.x) * st.y;
    }
}

// RMSNorm backward of one row: {r, k} with r = 1 / rms(x) and k = r^2 mean(g
// x), g = dy * w, so that dx = r (g - x k) (the CPU backend's order of
// operations). Every thread of the block calls it; it reads only the thread's
// own columns.
__device__ __forceinline__ float2 rms_backward_stats(const float* dyr, const float* xr, const float* w, int hidden,
                                                     float eps) {
    float v[2] = {0.0f, 0.0f};  // sum of x^2, sum of g x
    for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) {
        const float xv = xr[c];
        v[0] += xv * xv;
        v[1] += dyr[c] * w[c] * xv;
    }
    block_reduce(v, Sum(), 0.0f);
    const float r = 1.0f / sqrtf(v[0] / (float)hidden + eps);
    return make_float2(r, v[1] / (float)hidden * r * r);
}

// RMSNorm backward into dx: dx = r (dy w - x k) (rms_backward_stats). dx may
// be dy or x.
extern "C" __global__ void __launch_bounds__(1024) rmsnorm_backward_f32(const float* dy, const float* x,
                                                                        const float* w, float* dx, int rows,
                                                                        int hidden, float eps) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* dyr = dy + row * hidden;
        const float* xr = x + row * hidden;
        float* dxr = dx + row * hidden;
        const float2 st = rms_backward_stats(dyr, xr, w, hidden, eps);
        for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) dxr[c] = st.x * (dyr[c] * w[c] - xr[c] * st.y);
    }
}

// The widest row rmsnorm_backward_chunks_f32 takes (its per-column sums live
// in shared memory).
#define CHUNK_MAX_HIDDEN 8192

// Launch: block 256, grid ceil(rows / chunk) (blocks stride over chunks of
// `chunk` rows), hidden <= CHUNK_MAX_HIDDEN. RMSNorm backward in one pass over
// dy and x: each row's dx as rmsnorm_backward_f32, and the chunk's share of
// d_weight, part[b][c] = sum over its rows, in order, of dy * (x r) (float),
// for column_sums_f32 over the chunks: no normalised copy of x is written and
// read back. Each thread reads and writes only its own columns, so dx may be
// dy or x.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_backward_chunks_f32(const float* dy, const float* x,
                                                                              const float* w, float* dx, float* part,
                                                                              int rows, int hidden, float eps, int chunk) {
    __shared__ float acc[CHUNK_MAX_HIDDEN];  // this chunk's column sums, a thread's own columns
    for (i64 b = blockIdx.x; b * chunk < rows; b += gridDim.x) {
        for (int c = threadIdx.x; c < hidden; c += blockDim.x) acc[c] = 0.0f;
        const i64 end = min((i64)rows, (b + 1) * chunk);
        for (i64 row = b * chunk; row < end; ++row) {
            const float* dyr = dy + row * hidden;
            const float* xr = x + row * hidden;
            float* dxr = dx + row * hidden;
            const float2 st = rms_backward_stats(dyr, xr, w, hidden, eps);
            for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
                const float xv = xr[c], g = dyr[c];
                dxr[c] = st.x * (g * w[c] - xv * st.y);
                acc[c] += g * (xv * st.x);
            }
        }
        for (int c = threadIdx.x; c < hidden; c += blockDim.x) part[b * hidden + c] = acc[c];
    }
}

// Launch: block 256, grid ceil(rows / chunk) (blocks stride over chunks of
// `chunk` rows), hidden % 4 == 0, hidden <= 1024 N; dy, x, w, dx 16-byte
// aligned. As rmsnorm_backward_chunks_f32, with each row's x and dy held in
// registers from the reduction to dx, and the column sums in registers too:
// x and dy are read from memory once, the next row's while this row is
// reduced. Thread t owns float4 columns t + 256 i and reads row r + 1 only
// before it writes row r, so dx may be dy or x.
template <int N>
__device__ void rms_backward_regs(const float4* dy, const float4* x, const float4* w, float4* dx, float4* part, int rows,
                                  int hidden, float eps, int chunk) {
    const int h4 = hidden / 4;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (i64 b = blockIdx.x; b * chunk < rows; b += gridDim.x) {
        float4 acc[N];
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] = zero;
        const i64 end = min((i64)rows, (b + 1) * chunk);
        float4 xv[N], gv[N];  // this row's x and dy; the next row's are loaded during its reduction
        const auto load = [&](i64 row, float4* xo, float4* go) {
#pragma unroll
            for (int i = 0; i < N; ++i) {
                const int c = threadIdx.x + 256 * i;
                const bool in = row < end && c < h4;
                xo[i] = in ? x[row * h4 + c] : zero;
                go[i] = in ? dy[row * h4 + c] : zero;
            }
        };
        load(b * chunk, xv, gv);
        for (i64 row = b * chunk; row < end; ++row) {
            float v[2] = {0.0f, 0.0f};  // sum of x^2, sum of g x (as rms_backward_stats)
#pragma unroll
            for (int i = 0; i < N; ++i) {
                const int c = threadIdx.x + 256 * i;
                const float4 wv = c < h4 ? __ldg(w + c) : zero;
                v[0] += xv[i].x * xv[i].x, v[1] += gv[i].x * wv.x * xv[i].x;
                v[0] += xv[i].y * xv[i].y, v[1] += gv[i].y * wv.y * xv[i].y;
                v[0] += xv[i].z * xv[i].z, v[1] += gv[i].z * wv.z * xv[i].z;
                v[0] += xv[i].w * xv[i].w, v[1] += gv[i].w * wv.w * xv[i].w;
            }
            float4 xn[N], gn[N];
            load(row + 1, xn, gn);
            block_reduce(v, Sum(), 0.0f);
            const float r = 1.0f / sqrtf(v[0] / (float)hidden + eps), k = v[1] / (float)hidden * r * r;
#pragma unroll
            for (int i = 0; i < N; ++i) {
                const int c = threadIdx.x + 256 * i;
                if (c >= h4) continue;
                const float4 wv = __ldg(w + c), xs = xv[i], g = gv[i];
                dx[row * h4 + c] = make_float4(r * (g.x * wv.x - xs.x * k), r * (g.y * wv.y - xs.y * k),
                                               r * (g.z * wv.z - xs.z * k), r * (g.w * wv.w - xs.w * k));
                acc[i].x += g.x * (xs.x * r), acc[i].y += g.y * (xs.y * r);
                acc[i].z += g.z * (xs.z * r), acc[i].w += g.w * (xs.w * r);
            }
#pragma unroll
            for (int i = 0; i < N; ++i) xv[i] = xn[i], gv[i] = gn[i];
        }
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const int c = threadIdx.x + 256 * i;
            if (c < h4) part[b * h4 + c] = acc[i];
        }
    }
}

#define RMS_BACKWARD_REGS(N)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) rmsnorm_backward_regs##N##_f32(                                \
        const float4* dy, const float4* x, const float4* w, float4* dx, float4* part, int rows, int hidden, float eps, \
        int chunk) {                                                                                                  \
        rms_backward_regs<N>(dy, x, w, dx, part, rows, hidden, eps, chunk);                                          \
    }
RMS_BACKWARD_REGS(1)
RMS_BACKWARD_REGS(2)
RMS_BACKWARD_REGS(4)
RMS_BACKWARD_REGS(8)

// LayerNorm backward into dx: dx = rstd (g - mean(g) - xhat mean(g xhat)),
// g = dy * w, xhat = (x - mean) rstd, mean(g xhat) = rstd (mean(g x) - mean
// mean(g)) (the CPU backend's order of operations). dx may be dy or x.
extern "C" __global__ void __launch_bounds__(1024) layernorm_backward_f32(const float* dy, const float* x,
                                                                          const float* w, float* dx, int rows,
                                                                          int hidden, float eps) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* dyr = dy + row * hidden;
        const float* xr = x + row * hidden;
        float* dxr = dx + row * hidden;
        const float2 st = row_stats<true>(xr, hidden, eps);
        float v[2] = {0.0f, 0.0f};  // sum of g, sum of g x
        for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) {
            const float g = dyr[c] * w[c];
            v[0] += g;
            v[1] += g * xr[c];
        }
        block_reduce(v, Sum(), 0.0f);
        const float g_mean = v[0] / (float)hidden;
        const float gx_mean = st.y * (v[1] / (float)hidden - st.x * g_mean);
        for (i64 c = threadIdx.x; c < hidden; c += blockDim.x) {
            const float xhat = (xr[c] - st.x) * st.y;
            dxr[c] = st.y * (dyr[c] * w[c] - g_mean - xhat * gx_mean);
        }
    }
}
