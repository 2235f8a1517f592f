// AdamW, gradient-norm clipping, embedding scatter-add.
#include "scatter.cuh"

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

// Launch: block 256 (any multiple of 32 up to 1024), grid ceil(dim / 256)
// (threads stride over columns); grid.y = Y > 1 optional (see scatter.cuh).
// gw[idx[i], c] += go[i, c] for i = 0..num-1 in order; negative idx skipped.
extern "C" __global__ void scatter_add_f32(const float* go, const int* idx, float* gw, int num, int dim) {
    scatter_rows(go, idx, gw, num, dim, 0x7fffffff);
}
