// What the fp32 (attention.cu) and TF32 (attention_tf32.cu) attention kernels
// share: the shape of a general attention call and the turn-taking by which
// the fused backwards sum dQ across key tiles in a fixed order.
#pragma once
#include "common.cuh"

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
