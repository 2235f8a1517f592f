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
        for (i64 e = b0 + lane; e < end; e += 16) acc = __fadd_rn(acc, __fmul_rn(a[e], b[e]));
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
// Three kernels group the pairs by expert (a stable counting sort, integers
// only): moe_count_i32, moe_offsets_i32, moe_order_i32; moe_gather_f32 then
// copies the rows. Indices outside [0, n_experts) (device memory, unchecked)
// belong to no expert: offsets[n_experts] counts only the others, and the rows
// past it get order -1 and NaN.

// Launch: block 256, grid min(n_experts, 65535) (blocks stride over experts).
// offsets[0] = 0, offsets[e + 1] = number of pairs whose expert is e.
extern "C" __global__ void moe_count_i32(const int* idx, int* offsets, int pairs, int n_experts) {
    if (blockIdx.x == 0 && threadIdx.x == 0) offsets[0] = 0;
    for (i64 e = blockIdx.x; e < n_experts; e += gridDim.x) {
        int count = 0;
        for (i64 p = threadIdx.x; p < pairs; p += blockDim.x) count += idx[p] == e;
        count = block_allreduce(count, Sum(), 0);
        if (threadIdx.x == 0) offsets[e + 1] = count;
    }
}

// Launch: block 1024 (a multiple of 32), grid 1 (other blocks return).
// offsets[1 .. n_experts] becomes its inclusive prefix sum (the experts' end
// rows), in chunks of blockDim entries carried over.
extern "C" __global__ void __launch_bounds__(1024) moe_offsets_i32(int* offsets, int n_experts) {
    if (blockIdx.x != 0) return;
    __shared__ int warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int carry = 0;
    for (i64 base = 1; base <= n_experts; base += blockDim.x) {
        const i64 e = base + threadIdx.x;
        int v = e <= n_experts ? offsets[e] : 0;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const int u = __shfl_up_sync(0xffffffffu, v, d);
            if (lane >= d) v += u;
        }
        if (lane == 31) warp_sums[warp] = v;
        __syncthreads();
        int before = carry, chunk = 0;
        for (int w = 0; w < warps; ++w) {
            if (w < warp) before += warp_sums[w];
            chunk += warp_sums[w];
        }
        if (e <= n_experts) offsets[e] = before + v;
        carry += chunk;
        __syncthreads();  // before the next chunk overwrites warp_sums
    }
}

// Launch: block 256 (a multiple of 32), grid min(n_experts, 65535) (blocks
// stride over experts). The pairs of expert e, in pair order, go to rows
// offsets[e] ... : each chunk of blockDim pairs is ranked with a ballot per
// warp and the warps' counts in order.
extern "C" __global__ void moe_order_i32(const int* idx, const int* offsets, int* order, int pairs, int n_experts) {
    __shared__ int warp_counts[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (i64 e = blockIdx.x; e < n_experts; e += gridDim.x) {
        i64 next = offsets[e];
        for (i64 base = 0; base < pairs; base += blockDim.x) {
            const i64 p = base + threadIdx.x;
            const bool mine = p < pairs && idx[p] == e;
            const unsigned votes = __ballot_sync(0xffffffffu, mine);
            if (lane == 0) warp_counts[warp] = __popc(votes);
            __syncthreads();
            int rank = __popc(votes & ((1u << lane) - 1)), count = 0;
            for (int w = 0; w < warps; ++w) {
                if (w < warp) rank += warp_counts[w];
                count += warp_counts[w];
            }
            if (mine) order[next + rank] = (int)p;
            next += count;
            __syncthreads();  // before the next chunk overwrites warp_counts
        }
    }
}

// Launch: block 256 (a warp per row), grid min(ceil(pairs / 8), 65535) (warps
// stride over rows). Row p of y = row order[p] / k of x, for the rows before
// offsets[n_experts]; past it (unplaced pairs) order[p] = -1 and a NaN row.
// y must not alias x.
extern "C" __global__ void moe_gather_f32(const float* x, int* order, const int* offsets, float* y, int pairs,
                                          int dim, int k, int n_experts) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const int placed = offsets[n_experts];
    for (i64 p = (i64)blockIdx.x * warps + (threadIdx.x >> 5); p < pairs; p += (i64)gridDim.x * warps) {
        float* yr = y + p * dim;
        if (p >= placed) {
            if (lane == 0) order[p] = -1;
            for (i64 c = lane; c < dim; c += 32) yr[c] = NAN_F;
            continue;
        }
        const float* xr = x + (i64)(order[p] / k) * dim;
        if (dim % 4 == 0 && aligned16(x) && aligned16(y)) {
            for (i64 c = 4 * lane; c < dim; c += 128) {
                float v[4];
                load_vec<4>(xr + c, v);
                store_vec<4>(yr + c, v);
            }
        } else {
            for (i64 c = lane; c < dim; c += 32) yr[c] = xr[c];
        }
    }
}

// ----------------------------------------------------------------------------- combine, backwards

// Launch: block 256 (a warp per row), grid min(ceil(pairs / 8), 65535) (warps
// stride over rows), once for each j = 0 .. k-1 in turn, on a dst the caller
// has zeroed: dst[t] += w[pair] * src[p] (w NULL: += src[p]) for the rows p
// whose pair = order[p] is t * k + j. As order is a permutation, each launch
// adds exactly one row into every token's, so the sums run in j order from 0,
// as the CPU backend's: dispatch backward (w NULL) and combine. Entries of
// order outside [0, pairs) are skipped. dst must not alias the inputs.
extern "C" __global__ void moe_gather_add_f32(const float* src, const float* w, const int* order, float* dst,
                                              int pairs, int dim, int k, int j) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (i64 p = (i64)blockIdx.x * warps + (threadIdx.x >> 5); p < pairs; p += (i64)gridDim.x * warps) {
        const int pair = order[p];
        if (pair < 0 || pair >= pairs || pair % k != j) continue;
        const float* sr = src + p * dim;
        float* dr = dst + (i64)(pair / k) * dim;
        if (w) {
            const float wv = w[pair];
            for (i64 c = lane; c < dim; c += 32) dr[c] = __fadd_rn(dr[c], __fmul_rn(wv, sr[c]));
        } else {
            for (i64 c = lane; c < dim; c += 32) dr[c] = __fadd_rn(dr[c], sr[c]);
        }
    }
}

// Launch: block 256 (a warp per row), grid min(ceil(pairs / 8), 65535) (warps
// stride over rows). For row p holding pair = order[p] = t * k + j:
// d_expert_output[p] = w[pair] * d_output[t], d_weights[pair] = d_output[t] .
// expert_output[p] (cpu_dot on lanes 0..15). Entries of order outside
// [0, pairs) are skipped. The outputs must not alias the inputs.
extern "C" __global__ void moe_combine_backward_f32(const float* dy, const float* e, const float* w, const int* order,
                                                    float* de, float* dw, int pairs, int dim, int k) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (i64 p = (i64)blockIdx.x * warps + (threadIdx.x >> 5); p < pairs; p += (i64)gridDim.x * warps) {
        const int pair = order[p];
        if (pair < 0 || pair >= pairs) continue;
        const float* dyr = dy + (i64)(pair / k) * dim;
        if (lane < 16) {
            const float dot = cpu_dot(dyr, e + p * dim, dim, lane, 0xffffu);
            if (lane == 0) dw[pair] = dot;
        }
        const float wv = w[pair];
        float* der = de + p * dim;
        for (i64 c = lane; c < dim; c += 32) der[c] = wv * dyr[c];
    }
}
