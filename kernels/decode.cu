// Greedy decoding: row argmax.
#include "common.cuh"

// float4 loads per thread per step. 2 measured best on an H100 (4 is ~4%
// slower): with two 1024-thread blocks per SM there are already enough loads
// in flight, and fewer live registers leave room for the compare logic.
#ifndef ARGMAX_UNROLL
#define ARGMAX_UNROLL 2
#endif

// A thread's running answer over the elements it has seen, in increasing index
// order: the first NaN if any (numpy: NaN is maximal, the first one wins),
// else the first maximal element (-0 == +0).
struct Best {
    float value = 0.0f;
    int index = -1;  // -1: nothing seen yet
    int nan = -1;    // index of the first NaN, -1: none

    __device__ __forceinline__ void see(float v, int j) {
        if (nan >= 0) return;
        if (v != v)
            nan = j;
        else if (index < 0 || v > value)  // strictly: an earlier index keeps ties
            value = v, index = j;
    }

    // For the block reduction: larger key, then lower index.
    __device__ __forceinline__ i64 rank() const {
        if (nan >= 0) return pack_rank(0x7fffffff, nan);
        if (index < 0) return NO_RANK;
        return pack_rank(total_order_key(value == 0.0f ? 0.0f : value), index);
    }
};

// Launch: block 1024, grid batch (blocks stride over rows). out[row] = first
// index of the row maximum, or of the first NaN if there is one. Two blocks
// per SM (32 registers) so that 256 rows fill an H100 in one wave.
//
// Each row is read with 16-byte loads whatever its alignment: up to 3 head
// elements bring the rest to a 16-byte boundary, then float4 chunks, then up to
// 3 tail elements. Per step a thread holds ARGMAX_UNROLL chunks; usually one
// max and one sum over them (NaN-sticky) show there is nothing new, and only
// otherwise are the values looked at one by one.
extern "C" __global__ void __launch_bounds__(1024, 2) argmax_f32(const float* x, int* out, int batch, int vocab) {
    const int t = threadIdx.x;
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x) {
        const float* xr = x + row * vocab;
        const int head = min((int)((16 - ((unsigned long long)xr & 15)) & 15) / 4, vocab);
        const i64 chunks = (vocab - head) / 4;
        const int body_end = head + (int)(chunks * 4);
        const float4* x4 = reinterpret_cast<const float4*>(xr + head);
        Best best;
        if (t < head) best.see(xr[t], t);
        for (i64 i0 = t; i0 < chunks; i0 += ARGMAX_UNROLL * blockDim.x) {
            float4 v[ARGMAX_UNROLL];
#pragma unroll
            for (int u = 0; u < ARGMAX_UNROLL; ++u) {
                const i64 i = i0 + u * blockDim.x;
                v[u] = i < chunks ? x4[i] : make_float4(-INF, -INF, -INF, -INF);
            }
            float m = -INF, s = 0.0f;
#pragma unroll
            for (int u = 0; u < ARGMAX_UNROLL; ++u) {
                m = fmaxf(fmaxf(m, fmaxf(v[u].x, v[u].y)), fmaxf(v[u].z, v[u].w));
                s += (v[u].x + v[u].y) + (v[u].z + v[u].w);
            }
            // s is NaN for any NaN (and, harmlessly, for inf + -inf).
            if (best.index < 0 || m > best.value || s != s) {
#pragma unroll
                for (int u = 0; u < ARGMAX_UNROLL; ++u) {
                    const i64 i = i0 + u * blockDim.x;
                    if (i < chunks) {
                        const int j = head + (int)(i * 4);
                        best.see(v[u].x, j);
                        best.see(v[u].y, j + 1);
                        best.see(v[u].z, j + 2);
                        best.see(v[u].w, j + 3);
                    }
                }
            }
        }
        if (body_end + t < vocab) best.see(xr[body_end + t], body_end + t);
        const i64 r = block_allreduce(best.rank(), Max(), NO_RANK);
        if (t == 0) out[row] = rank_index(r);
    }
}
