// What the attention kernels (attention.cu, attention_tf32.cu,
// attention_sm80.cu) share: the shape of a general attention call, the base-2
// constants, and the turn-taking by which the fused backwards sum dQ across
// key tiles in a fixed order.
#pragma once
#include "common.cuh"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// One attention call's shape: query i of Q [batch, q_len, heads, d] sits at
// position pos0 + i and (causal) sees keys j <= pos0 + i of K, V [batch,
// kv_cap, kv_heads, d], of which rows 0..kv_len are used; query head h reads
// KV head h / (heads / kv_heads). mask: NULL or additive [q_len, kv_len];
// lse: NULL or [batch, q_len, heads], ln of each row's softmax denominator.
struct FlashShape {
    int batch, q_len, kv_len, kv_cap, heads, kv_heads, d, pos0, causal;
    float scale;
    const float* mask;
    float* lse;
};

__device__ __forceinline__ int ld_acquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release(int* p, int v) {
    asm volatile("st.release.gpu.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// The block waits until `turn` key tiles have added to this query tile's dQ
// (its counter reaches turn), then may add its own share.
__device__ __forceinline__ void dq_wait_turn(const int* counter, int turn) {
    if (threadIdx.x == 0)
        while (ld_acquire(counter) < turn) {
        }
    __syncthreads();
}

// After the block's dQ stores: makes them visible, then passes the turn on.
__device__ __forceinline__ void dq_pass_turn(int* counter, int turn) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) st_release(counter, turn + 1);
}

// The key tile [j0, j0 + T) of KV head g in batch b that one fused-backward
// block owns (blocks run from the last key tile to the first, so the tile that
// adds to a query tile's dQ first starts first), and where its rows start.
template <int T>
struct KeyTile {
    i64 b, kv0;
    int g, jt, j0, k_tiles, q_tiles;
    __device__ __forceinline__ explicit KeyTile(const FlashShape& sh) {
        k_tiles = (sh.kv_len + T - 1) / T;
        q_tiles = (sh.q_len + T - 1) / T;
        const i64 item = blockIdx.x;
        b = item / ((i64)sh.kv_heads * k_tiles);
        g = (int)(item / k_tiles % sh.kv_heads);
        jt = k_tiles - 1 - (int)(item % k_tiles);
        j0 = jt * T;
        kv0 = ((b * sh.kv_len + j0) * sh.kv_heads + g) * sh.d;
    }

    // Calls work(i0, valid, row0, turn, counter) for each query tile [i0, i0 +
    // valid) of each query head reading KV head g that sees this key tile:
    // row0 is its first row of [batch * q_len, heads], turn the number of key
    // tiles that add to its dQ before this one, counter its dQ turn counter
    // among sem's batch * heads * q_tiles.
    template <class Work>
    __device__ __forceinline__ void for_each_query_tile(const FlashShape& sh, int* sem, Work work) const {
        const int group = sh.heads / sh.kv_heads;
        // Causal: queries before j0 - pos0 see none of these keys.
        const int first = sh.causal ? max(0, j0 - sh.pos0) / T : 0;
        for (int h = g * group; h < (g + 1) * group; ++h)
            for (int it = first; it < q_tiles; ++it) {
                const int i0 = it * T, valid = min(T, sh.q_len - i0);
                // The last key tile these queries see: it adds to their dQ first.
                const int last = sh.causal ? min(k_tiles - 1, (sh.pos0 + i0 + valid - 1) / T) : k_tiles - 1;
                if (jt > last) continue;
                work(i0, valid, (b * sh.q_len + i0) * sh.heads + h, last - jt, sem + (b * sh.heads + h) * q_tiles + it);
            }
    }
};
