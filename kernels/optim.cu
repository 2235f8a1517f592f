// AdamW, gradient-norm clipping, embedding scatter-add.
#include "common.cuh"

__device__ __forceinline__ void adamw_one(float& p, float g, float& m, float& v, float lr, float b1, float b2,
                                          float eps, float wd, float inv_bc1, float inv_bc2) {
    m = b1 * m + (1.0f - b1) * g;
    v = b2 * v + (1.0f - b2) * g * g;
    p -= lr * ((m * inv_bc1) / (sqrtf(v * inv_bc2) + eps) + wd * p);
}

// Launch: block 256, grid min(ceil(n / 1024), 65535), grid-stride; float4 when
// all four buffers are 16-byte aligned. inv_bc1 = 1 / (1 - b1^step),
// inv_bc2 = 1 / (1 - b2^step).
extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, float lr, float b1, float b2,
                                     float eps, float wd, float inv_bc1, float inv_bc2, i64 n) {
    const i64 t = grid_thread(), stride = grid_threads();
    i64 done = 0;
    if (aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v)) {
        const i64 nv = n >> 2;
        for (i64 i = t; i < nv; i += stride) {
            float4 pv = reinterpret_cast<float4*>(p)[i];
            const float4 gv = reinterpret_cast<const float4*>(g)[i];
            float4 mv = reinterpret_cast<float4*>(m)[i];
            float4 vv = reinterpret_cast<float4*>(v)[i];
            adamw_one(pv.x, gv.x, mv.x, vv.x, lr, b1, b2, eps, wd, inv_bc1, inv_bc2);
            adamw_one(pv.y, gv.y, mv.y, vv.y, lr, b1, b2, eps, wd, inv_bc1, inv_bc2);
            adamw_one(pv.z, gv.z, mv.z, vv.z, lr, b1, b2, eps, wd, inv_bc1, inv_bc2);
            adamw_one(pv.w, gv.w, mv.w, vv.w, lr, b1, b2, eps, wd, inv_bc1, inv_bc2);
            reinterpret_cast<float4*>(p)[i] = pv;
            reinterpret_cast<float4*>(m)[i] = mv;
            reinterpret_cast<float4*>(v)[i] = vv;
        }
        done = nv << 2;
    }
    for (i64 i = done + t; i < n; i += stride) adamw_one(p[i], g[i], m[i], v[i], lr, b1, b2, eps, wd, inv_bc1, inv_bc2);
}

// Elements per partial sum: fixed by the ABI (partial_norms has ceil(n / 256)
// entries), independent of the launch.
#define PART 256

// Launch: block 256, grid min(ceil(n / 256), 2^31 - 1). partial[b] = sum of
// g^2 over [256 b, 256 b + 256). One warp per part (warps stride over parts,
// so any grid works; a grid of ceil(n / 2048) keeps every warp busy): lane l
// sums elements 4l..4l+3 and 128+4l..128+4l+3 in that order, loaded as two
// float4 when it can, then a fixed butterfly. The order does not depend on
// alignment, so the result is the same bits either way.
extern "C" __global__ void sumsq_partial_f32(const float* g, float* partial, i64 n) {
    const i64 parts = (n + PART - 1) / PART;
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (i64 b = (i64)blockIdx.x * warps + (threadIdx.x >> 5); b < parts; b += (i64)gridDim.x * warps) {
        const float* gb = g + b * PART;
        const i64 len = min((i64)PART, n - b * PART);
        float s = 0.0f;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int k = half * 128 + 4 * lane;
            float v[4];
            if (len == PART && aligned16(gb)) {
                load_vec<4>(gb + k, v);
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e) v[e] = k + e < len ? gb[k + e] : 0.0f;
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) s += v[e] * v[e];
        }
        s = warp_allreduce(s, Sum());
        if (lane == 0) partial[b] = s;
    }
}

// 4-element group q of partial as floats (one float4 when it can), zeros past the end.
__device__ __forceinline__ void load_group(const float* partial, i64 parts, i64 q, bool vec, float (&v)[4]) {
    if (vec && q * 4 + 4 <= parts) {
        load_vec<4>(partial + q * 4, v);
    } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = q * 4 + e < parts ? partial[q * 4 + e] : 0.0f;
    }
}

// Launch: block 1024, grid 1 (other blocks return). total[0] = sqrt(sum of
// partial), summed in double: thread t adds groups t, t + B, t + 2B, ... in
// that order (element by element), then a fixed tree. Groups are loaded four
// at a time first, so one block keeps enough reads in flight.
extern "C" __global__ void norm_total_f32(const float* partial, float* total, i64 parts) {
    if (blockIdx.x != 0) return;
    const bool vec = aligned16(partial);
    const i64 B = blockDim.x, groups = (parts + 3) / 4;
    double s = 0.0;
    i64 q = threadIdx.x;
    for (; q + 3 * B < groups; q += 4 * B) {
        float v[4][4];
#pragma unroll
        for (int u = 0; u < 4; ++u) load_group(partial, parts, q + u * B, vec, v[u]);
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int e = 0; e < 4; ++e) s += v[u][e];
    }
    for (; q < groups; q += B) {
        float v[4];
        load_group(partial, parts, q, vec, v);
#pragma unroll
        for (int e = 0; e < 4; ++e) s += v[e];
    }
    s = block_allreduce(s, Sum(), 0.0);
    if (threadIdx.x == 0) total[0] = (float)sqrt(s);
}

// Launch: block 256, grid min(ceil(n / 1024), 65535), grid-stride.
// g *= clip / total[0] when total[0] > clip; decided here, no host read-back
// (total was written by norm_total_f32 earlier on the same stream).
extern "C" __global__ void clip_scale_f32(float* g, const float* total, float clip, i64 n) {
    const float norm = total[0];
    if (!(norm > clip)) return;  // NaN norm: leave g alone, as the CPU backend does
    const float s = clip / norm;
    const i64 t = grid_thread(), stride = grid_threads();
    i64 done = 0;
    if (aligned16(g)) {
        const i64 nv = n >> 2;
        float4* g4 = reinterpret_cast<float4*>(g);
        for (i64 i = t; i < nv; i += stride) {
            float4 v = g4[i];
            v.x *= s, v.y *= s, v.z *= s, v.w *= s;
            g4[i] = v;
        }
        done = nv << 2;
    }
    for (i64 i = done + t; i < n; i += stride) g[i] *= s;
}

// Rows of go handled per step of scatter_add_f32.
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

// Launch: block 256 (any multiple of 32 up to 1024), grid ceil(dim / 256)
// (threads stride over columns). gw[idx[i], c] += go[i, c] for i = 0..num-1 in
// order; negative idx skipped. One thread owns a (destination row, column)
// element for the whole loop, so duplicates accumulate in index order with no
// atomics: deterministic, and the same sums as the CPU backend.
//
// Optional: grid.y = Y > 1 splits the destination rows among Y blocks per
// column range (row r goes to blockIdx.y == r % Y), for Y times the
// parallelism; each block still keeps its rows' updates in index order.
extern "C" __global__ void scatter_add_f32(const float* go, const int* idx, float* gw, int num, int dim) {
    // This block's (index, row) pairs of one batch of idx, in index order.
    __shared__ int s_i[1024], s_r[1024];
    __shared__ int s_warp[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned ys = gridDim.y, yi = blockIdx.y;
    for (i64 base = 0; base < num; base += blockDim.x) {
        // Compact the batch: keep i whose row is this block's, preserving order.
        const i64 i = base + threadIdx.x;
        const int r = i < num ? idx[i] : -1;
        const bool keep = r >= 0 && (ys == 1 || (unsigned)r % ys == yi);
        const unsigned votes = __ballot_sync(0xffffffffu, keep);
        if (lane == 0) s_warp[warp] = __popc(votes);
        __syncthreads();
        int pos = __popc(votes & ((1u << lane) - 1)), count = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
            if (w < warp) pos += s_warp[w];
            count += s_warp[w];
        }
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
