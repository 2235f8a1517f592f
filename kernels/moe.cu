// Mixture-of-experts routing: the router's backward, the aux-loss backward,
// dispatch of token rows to experts (the grouping by expert and the gather),
// and the weighted combination, each with its backward.
//
// A token-expert pair is t * k + j (token t's j-th choice); the dispatched
// layout lists the pairs grouped by expert, order[p] being the pair at row p.
// The grouping is integer work and so exact; every float result is computed in
// the CPU backend's order of operations (src/cpu/moe.rs, no fused
// multiply-adds), so all of them equal the CPU's bitwise.
#include "common.cuh"

#define NAN_F __int_as_float(0x7fc00000)

// Elements of each input a lane of cpu_dot loads before adding them: in
// flight at once, not one round trip each.
#define DOT_LOADS 8

// The CPU backend's dot product (reduce.rs triple_sum), bitwise, on a group of
// 16 lanes (lane = 0..15, mask = the group's lanes, all of which call it):
// per block of 1024 elements, lane i sums elements i, i + 16, ... in order in
// float, the 16 lanes are added in the fixed tree of lane_total (v[i] +=
// v[i + 8], then 4, 2, 1), and past one block the blocks' sums are added in
// double, in order. Every lane of the group returns the result.
__device__ float cpu_dot(const float* a, const float* b, i64 n, int lane, unsigned mask) {
    double total = -0.0;  // Rust's f64 Sum starts from -0.0
    for (i64 b0 = 0; b0 == 0 || b0 < n; b0 += 1024) {
        const i64 end = min(n, b0 + 1024);
        float acc = 0.0f;
        for (i64 e0 = b0 + lane; e0 < end; e0 += 16 * DOT_LOADS) {
            float va[DOT_LOADS], vb[DOT_LOADS];  // loaded at once, added in order
#pragma unroll
            for (int u = 0; u < DOT_LOADS; ++u) {
                const i64 e = e0 + 16 * u;
                va[u] = e < end ? a[e] : 0.0f;
                vb[u] = e < end ? b[e] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < DOT_LOADS; ++u)
                if (e0 + 16 * u < end) acc = __fadd_rn(acc, __fmul_rn(va[u], vb[u]));
        }
#pragma unroll
        for (int d = 8; d > 0; d >>= 1) acc = __fadd_rn(acc, __shfl_down_sync(mask, acc, d, 16));
        acc = __shfl_sync(mask, acc, 0, 16);
        if (n <= 1024) return acc;
        total += (double)acc;
    }
    return (float)total;
}

// The lanes of this thread's 16-lane group, for cpu_dot.
__device__ __forceinline__ unsigned group16_mask() { return 0xffffu << (threadIdx.x & 16); }

// Launch: block 256 (16 lanes per token), grid min(ceil(tokens / 16), 65535)
// (groups stride over tokens). d_logits[t, e] = sum over the j with
// indices[t, j] == e of w_j (dw_j - sum_i w_i dw_i), in j order from 0; 0 for
// the experts not chosen. An index outside [0, n_experts) (device memory, not
// checked by the host) matches no expert. d_logits must not alias the inputs.
extern "C" __global__ void moe_router_backward_f32(const float* w, const int* idx, const float* dw, float* d,
                                                   int tokens, int n_experts, int k) {
    const int lane = threadIdx.x & 15, groups = blockDim.x >> 4;
    const unsigned mask = group16_mask();
    for (i64 t = (i64)blockIdx.x * groups + (threadIdx.x >> 4); t < tokens; t += (i64)gridDim.x * groups) {
        const float* wt = w + t * k;
        const float* dwt = dw + t * k;
        const int* it = idx + t * k;
        const float mean = cpu_dot(wt, dwt, k, lane, mask);
        for (i64 e = lane; e < n_experts; e += 16) {
            float acc = 0.0f;
            for (int j = 0; j < k; ++j)
                if (it[j] == e) acc = __fadd_rn(acc, __fmul_rn(wt[j], __fsub_rn(dwt[j], mean)));
            d[t * n_experts + e] = acc;
        }
    }
}

// Launch: block 256, grid n1024(tokens * n_experts), grid-stride.
// d_probs[t, e] = (float)(factor * (double)f_counts[e]) with factor = scale *
// alpha * n_experts / tokens computed in double by the caller and passed as
// its bits (the CPU backend's arithmetic: bitwise equal). d_probs may be
// f_counts when tokens == 1 (element e is read and written by one thread).
extern "C" __global__ void aux_loss_backward_f32(const float* f_counts, float* d_probs, int tokens, int n_experts,
                                                 i64 factor_bits) {
    const double factor = __longlong_as_double(factor_bits);
    const i64 n = (i64)tokens * n_experts;
    for (i64 i = grid_thread(); i < n; i += grid_threads()) d_probs[i] = (float)(factor * (double)f_counts[i % n_experts]);
}

// ----------------------------------------------------------------------------- dispatch
// The pairs are grouped by expert with the stable counting sort of sort.cu
// (integers only), which also gives each pair's row, and moe_scatter_f32
// copies each token's row to its pairs' rows. Indices outside [0, n_experts)
// (device memory, unchecked) belong to no expert: offsets[n_experts] counts
// only the others, and the rows past it get order -1 and NaN.

// Vectors a lane of warp_row_to loads before it stores any.
#define ROW_BATCH 4

// Row rows[j] of dst = src for j = 0 .. n-1 and rows[j] >= 0, by the 32
// lanes of a warp, V floats a lane at a time: src (a row of dim floats) is
// read once for all n copies. The loads of a batch go before its stores: dst
// never aliases src here, but the compiler cannot know that.
template <int V>
__device__ __forceinline__ void warp_row_to(const float* src, float* dst, const int* rows, int n, i64 dim, int lane) {
    for (i64 c0 = V * lane; c0 < dim; c0 += 32 * V * ROW_BATCH) {
        float v[ROW_BATCH][V];
#pragma unroll
        for (int b = 0; b < ROW_BATCH; ++b)
            if (c0 + 32 * V * b < dim) load_vec<V>(src + c0 + 32 * V * b, v[b]);
        for (int j = 0; j < n; ++j) {
            const int p = rows[j];
            if (p < 0) continue;
#pragma unroll
            for (int b = 0; b < ROW_BATCH; ++b) {
                if (c0 + 32 * V * b >= dim) break;
                float* at = dst + (i64)p * dim + c0 + 32 * V * b;
                // Written plainly, NVRTC splits this 16-byte store into four
                // (4% of the copy bandwidth on MoE dispatch, H100).
                if constexpr (V == 4)
                    __stwb(reinterpret_cast<float4*>(at), make_float4(v[b][0], v[b][1], v[b][2], v[b][3]));
                else
                    store_vec<V>(at, v[b]);
            }
        }
    }
}

// Launch: block 256 (a warp per token), grid min(ceil(tokens / 8), 65535)
// (warps stride over tokens, then over the unplaced rows). Row inv[t k + j]
// of y = row t of x for each pair a row holds (inv -1: none), so each token's
// row is read once; rows from offsets[n_experts] on (unplaced pairs) get NaN.
// y must not alias x.
extern "C" __global__ void moe_scatter_f32(const float* x, const int* inv, const int* offsets, float* y, int tokens,
                                           int dim, int k, int n_experts) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const i64 warp = (i64)blockIdx.x * warps + (threadIdx.x >> 5), all = (i64)gridDim.x * warps;
    const bool vec = dim % 4 == 0 && aligned16(x) && aligned16(y);
    for (i64 t = warp; t < tokens; t += all) {
        if (vec)
            warp_row_to<4>(x + t * dim, y, inv + t * k, k, dim, lane);
        else
            warp_row_to<1>(x + t * dim, y, inv + t * k, k, dim, lane);
    }
    for (i64 p = offsets[n_experts] + warp; p < (i64)tokens * k; p += all)
        for (i64 c = lane; c < dim; c += 32) y[p * dim + c] = NAN_F;
}

// ----------------------------------------------------------------------------- combine, backwards

// Launch: block 256, grid min(ceil(pairs / 1024), 65535) (grid-stride), on an
// inv the caller has filled with -1. inv[order[p]] = p: the row of each pair.
// Entries of order outside [0, pairs) are skipped.
extern "C" __global__ void moe_rows_of_pairs_i32(const int* order, int* inv, int pairs) {
    for (i64 p = grid_thread(); p < pairs; p += grid_threads()) {
        const int pair = order[p];
        if (pair >= 0 && pair < pairs) inv[pair] = (int)p;
    }
}

// Launch: block 256 (a warp per token), grid min(ceil(tokens / 8), 65535)
// (warps stride over tokens). dst[t] = sum over j = 0 .. k-1, in order from 0,
// of w[t k + j] * src[inv[t k + j]] (w NULL: of src[...]), each product and sum
// rounded as the CPU backend's: combine (w) and dispatch backward (no w). A
// pair no row holds (inv -1) adds nothing. Each token's k rows are read once
// and its sum written once, 16 bytes at a time where dim and the pointers
// allow (warp_sum_rows). dst must not alias the inputs.
extern "C" __global__ void moe_gather_sum_f32(const float* src, const float* w, const int* inv, float* dst, int tokens,
                                              int dim, int k) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const bool vec = dim % 4 == 0 && aligned16(src) && aligned16(dst);
    for (i64 t = (i64)blockIdx.x * warps + (threadIdx.x >> 5); t < tokens; t += (i64)gridDim.x * warps) {
        const float* wt = w ? w + t * k : nullptr;
        if (vec)
            warp_sum_rows<4>(src, wt, inv + t * k, k, dst + t * dim, dim, lane);
        else
            warp_sum_rows<1>(src, wt, inv + t * k, k, dst + t * dim, dim, lane);
    }
}

// Elements a lane of moe_combine_backward_f32 loads from each row at once.
#define CB_LOADS 16

// Launch: block 256 (a warp per token), grid min(ceil(tokens / 8), 65535)
// (warps stride over tokens). For each pair = t * k + j a row p = inv[pair]
// holds (inv -1: none, skipped), in j order: d_expert_output[p] = w[pair] *
// d_output[t] and d_weights[pair] = d_output[t] . expert_output[p], cpu_dot's
// sums on a whole warp: the lanes load elements lane + 32 i of both rows,
// CB_LOADS at a time (coalesced, and in flight together: not one round trip
// per 16 elements), write the d_expert_output row from the same registers,
// and lane l < 16 adds the products of elements l, l + 16, l + 32, ... of each
// block of 1024 in order, every second one lane l + 16's. The outputs must not
// alias the inputs.
extern "C" __global__ void moe_combine_backward_f32(const float* dy, const float* e, const float* w, const int* inv,
                                                    float* de, float* dw, int tokens, int dim, int k) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (i64 t = (i64)blockIdx.x * warps + (threadIdx.x >> 5); t < tokens; t += (i64)gridDim.x * warps) {
        const float* dyr = dy + t * dim;
        for (int j0 = 0; j0 < k; j0 += 32) {  // 32 pairs' rows and weights in one load
            const int lane_row = j0 + lane < k ? inv[t * k + j0 + lane] : -1;
            const float lane_weight = j0 + lane < k ? w[t * k + j0 + lane] : 0.0f;
            for (int j = j0; j < min(k, j0 + 32); ++j) {
                const int p = __shfl_sync(0xffffffffu, lane_row, j - j0);
                const float s = __shfl_sync(0xffffffffu, lane_weight, j - j0);
                if (p < 0) continue;
                const float* er = e + (i64)p * dim;
                float* der = de + (i64)p * dim;
                double total = -0.0;  // Rust's f64 Sum starts from -0.0
                float dot = 0.0f;
                for (i64 b0 = 0; b0 == 0 || b0 < dim; b0 += 1024) {
                    const i64 end = min((i64)dim, b0 + 1024);
                    float acc = 0.0f;
                    for (i64 base = b0; base < end; base += 32 * CB_LOADS) {
                        float a[CB_LOADS], b[CB_LOADS];
#pragma unroll
                        for (int u = 0; u < CB_LOADS; ++u) {
                            const i64 x = base + lane + 32 * u;
                            a[u] = x < end ? dyr[x] : 0.0f;
                            b[u] = x < end ? er[x] : 0.0f;
                        }
#pragma unroll
                        for (int u = 0; u < CB_LOADS; ++u) {
                            const i64 x = base + lane + 32 * u;
                            const float own = __fmul_rn(a[u], b[u]);
                            const float next = __shfl_down_sync(0xffffffffu, own, 16);  // element x + 16's
                            if (x < end) der[x] = __fmul_rn(s, a[u]), acc = __fadd_rn(acc, own);
                            if (x + 16 < end) acc = __fadd_rn(acc, next);
                        }
                    }
#pragma unroll
                    for (int d = 8; d > 0; d >>= 1) acc = __fadd_rn(acc, __shfl_down_sync(0xffffffffu, acc, d, 16));
                    acc = __shfl_sync(0xffffffffu, acc, 0);
                    if (dim <= 1024) dot = acc;
                    else total += (double)acc;
                }
                if (lane == 0) dw[t * k + j] = dim <= 1024 ? dot : (float)total;
            }
        }
    }
}
