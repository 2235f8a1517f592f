// Helpers shared by every kernel family. NVRTC supplies the CUDA builtins, so
// nothing here includes a CUDA header.
//
// Conventions: element indices are 64-bit (tensors may exceed 2^31 elements);
// loops stride by the launched grid, so any grid size is correct; reductions
// combine values in a fixed order (no atomics), so results are bitwise the same
// run after run.
#pragma once

#define INF __int_as_float(0x7f800000)

typedef long long i64;

// Index of this thread in the whole grid, and the number of threads in it.
__device__ __forceinline__ i64 grid_thread() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 grid_threads() { return (i64)gridDim.x * blockDim.x; }

__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15) == 0; }

struct Sum {
    template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
    // fmaxf ignores NaN, like the CPU backend's row max.
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
    __device__ __forceinline__ i64 operator()(i64 a, i64 b) const { return a > b ? a : b; }
    __device__ __forceinline__ int operator()(int a, int b) const { return a > b ? a : b; }
};

// XOR butterfly: every lane ends with the same, bitwise identical value
// (each step adds the same two operands in every lane; + is commutative).
template <class T, class Op> __device__ __forceinline__ T warp_allreduce(T v, Op op) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, d));
    return v;
}

// Every thread of the block gets op over all threads' v[i], for each i < N,
// combined in a fixed tree (lanes, then warps). blockDim.x must be a multiple
// of 32. One barrier pair for all N values. Safe to call repeatedly: the
// trailing barrier keeps the next call from overwriting the shared slots
// before every warp has read them.
template <int N, class T, class Op> __device__ void block_reduce(T (&v)[N], Op op, T identity) {
    __shared__ T per_warp[32][N];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = warp_allreduce(v[i], op);
    if (lane == 0)
        for (int i = 0; i < N; ++i) per_warp[warp][i] = v[i];
    __syncthreads();
#pragma unroll  // every warp reduces the same slots: same result
    for (int i = 0; i < N; ++i) v[i] = warp_allreduce(lane < (int)(blockDim.x >> 5) ? per_warp[lane][i] : identity, op);
    __syncthreads();
}

template <class T, class Op> __device__ T block_allreduce(T v, Op op, T identity) {
    T one[1] = {v};
    block_reduce(one, op, identity);
    return one[0];
}

// 2^x, ~2 ulp; -inf gives 0, subnormal results flush to 0.
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// This thread's rank among the block's threads whose keep is set, in thread
// order, and their count (blockDim.x a multiple of 32): the slot of a kept
// item in a compacted list. Ends with a barrier, so it may be called again
// at once.
__device__ __forceinline__ int block_keep_rank(bool keep, int& count) {
    __shared__ int per_warp[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned votes = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) per_warp[warp] = __popc(votes);
    __syncthreads();
    int rank = __popc(votes & ((1u << lane) - 1));
    count = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
        if (w < warp) rank += per_warp[w];
        count += per_warp[w];
    }
    __syncthreads();
    return rank;
}

// Moves V consecutive floats (V = 1, or 4 from a 16-byte aligned address).
template <int V> __device__ __forceinline__ void load_vec(const float* p, float* v);
template <> __device__ __forceinline__ void load_vec<1>(const float* p, float* v) { v[0] = *p; }
template <> __device__ __forceinline__ void load_vec<4>(const float* p, float* v) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
}
template <int V> __device__ __forceinline__ void store_vec(float* p, const float* v);
template <> __device__ __forceinline__ void store_vec<1>(float* p, const float* v) { *p = v[0]; }
template <> __device__ __forceinline__ void store_vec<4>(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}

// A float's rank in IEEE total order (Rust's f32::total_cmp) as a signed int:
// -NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN.
__device__ __forceinline__ int total_order_key(float v) {
    const int b = __float_as_int(v);
    return b ^ ((b >> 31) & 0x7fffffff);
}
__device__ __forceinline__ float from_total_order_key(int k) { return __int_as_float(k ^ ((k >> 31) & 0x7fffffff)); }

// (key, index) packed so that the larger i64 is the larger key, then the lower
// index: one max picks "largest value, first index wins ties". Indices are
// below 2^31 - 1, so every packed value exceeds NO_RANK.
#define NO_RANK (-9223372036854775807LL - 1)
__device__ __forceinline__ i64 pack_rank(int key, int index) {
    return (i64)key * 4294967296LL + (0x7fffffff - index);
}
__device__ __forceinline__ int rank_key(i64 r) { return (int)(r >> 32); }
__device__ __forceinline__ int rank_index(i64 r) { return 0x7fffffff - (int)(r & 0xffffffffLL); }

// Column groups of V floats a lane of warp_sum_rows loads from one row at
// once (8: a 4 KB row of float4s in flight together, not one round trip per
// 512 bytes).
#define SUM_ROWS_LOADS 8

// dst = the sum over j < n, in order from 0 (from dst's own value with
// from_dst), of w[j] src[rows[j]] (w NULL: src[rows[j]]) for a row of dim
// floats, by the 32 lanes of a warp, V floats a lane at a time; a negative
// rows[j] adds nothing. Each product and sum is rounded as the CPU backend's
// (no fused multiply-adds), so the sums equal its own bitwise: MoE combine and
// dispatch backward, the embedding backward (whose long sums go on from dst).
template <int V>
__device__ __forceinline__ void warp_sum_rows(const float* src, const float* w, const int* rows, int n, float* dst,
                                              int dim, int lane, bool from_dst = false) {
    constexpr int U = SUM_ROWS_LOADS;
    for (i64 c0 = 0; c0 < dim; c0 += 32 * V * U) {
        float acc[U][V] = {};
        if (from_dst)
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const i64 c = c0 + (i64)V * (32 * u + lane);
                if (c < dim) load_vec<V>(dst + c, acc[u]);
            }
        for (int j = 0; j < n; ++j) {
            const int p = rows[j];
            if (p < 0) continue;
            float v[U][V] = {};
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const i64 c = c0 + (i64)V * (32 * u + lane);
                if (c < dim) load_vec<V>(src + (i64)p * dim + c, v[u]);
            }
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int e = 0; e < V; ++e) acc[u][e] = __fadd_rn(acc[u][e], w ? __fmul_rn(w[j], v[u][e]) : v[u][e]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 c = c0 + (i64)V * (32 * u + lane);
            if (c < dim) store_vec<V>(dst + c, acc[u]);
        }
    }
}
