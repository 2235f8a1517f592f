// Cross-entropy (log-softmax, mean NLL, backward) and the MoE auxiliary loss.
#include "rows.cuh"

// Row log-softmax for each_row (rows.cuh).
struct LogSoftmaxRow {
    // lp = x - (m + log sum exp(x - m)) on a row held in registers; reads the
    // whole row before writing, so lp may be x.
    template <int V, int N> __device__ static void cached(const float* x, float* lp, int cols) {
        float v[N][V];
        const float m = row_load_max<V, N>(x, cols, v);
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < N; ++j)
#pragma unroll
            for (int e = 0; e < V; ++e) s += expf(v[j][e] - m);
        s = block_allreduce(s, Sum(), 0.0f);
        const float lse = m + logf(s);
#pragma unroll
        for (int j = 0; j < N; ++j)
#pragma unroll
            for (int e = 0; e < V; ++e) v[j][e] -= lse;
        row_store<V, N>(lp, cols, v);
    }

    // Wider rows: an online (max, sum of exp) pass, then a pass that writes.
    __device__ static void looped(const float* x, float* lp, int cols) {
        const float2 ms = row_max_sumexp(x, cols);
        const float lse = ms.x + logf(ms.y);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) lp[c] = x[c] - lse;
    }
};

// Launch: block 1024, grid rows (blocks stride over rows). lp may be x.
extern "C" __global__ void __launch_bounds__(1024) log_softmax_f32(const float* x, float* lp, int rows, int cols) {
    each_row<LogSoftmaxRow>(x, lp, rows, cols);
}

// Launch: block 1024, grid 1 (other blocks return). loss[0] = mean over rows
// with targets[r] >= 0 of -lp[r, targets[r]]; 0 when no row counts; NaN when a
// target is >= vocab. Per-thread sums in row order, then a fixed tree.
extern "C" __global__ void nll_mean_f32(const float* lp, const int* targets, float* loss, int rows, int vocab) {
    if (blockIdx.x != 0) return;
    double sum = 0.0;
    int count = 0, bad = 0;
    for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {
        const int t = targets[r];
        if (t >= vocab) {
            bad = 1;
        } else if (t >= 0) {
            sum -= (double)lp[(i64)r * vocab + t];
            ++count;
        }
    }
    sum = block_allreduce(sum, Sum(), 0.0);
    count = block_allreduce(count, Sum(), 0);
    bad = block_allreduce(bad, Max(), 0);
    if (threadIdx.x == 0) loss[0] = bad ? __int_as_float(0x7fc00000) : count ? (float)(sum / count) : 0.0f;
}

// d = (exp(lp) - [j == target]) * scale on a V-float chunk; `row`/`col` are the
// position of the chunk's first element, and the chunk may run into the next row.
template <int V>
__device__ __forceinline__ void ce_grad_chunk(const float* lp, const int* targets, float* d, i64 i, i64 row, int col,
                                              int vocab, float scale) {
    float v[V];
    load_vec<V>(lp + i, v);
    int t = targets[row];
#pragma unroll
    for (int e = 0; e < V; ++e, ++col) {
        if (col == vocab) {  // col starts below vocab and steps by 1: one wrap at most
            col = 0;
            t = targets[++row];
        }
        v[e] = t < 0 ? 0.0f : (expf(v[e]) - (col == t ? 1.0f : 0.0f)) * scale;
    }
    store_vec<V>(d + i, v);
}

// Grid-stride over rows * vocab elements in V-float chunks. The (row, col) of a
// thread's chunk advances by a fixed step, so no per-element 64-bit division.
template <int V>
__device__ void ce_backward(const float* lp, const int* targets, float* d, i64 n, int vocab, float scale) {
    const i64 t = grid_thread(), stride = grid_threads();
    const i64 chunks = n / V;
    if (t < chunks) {
        const i64 first = t * V, step = stride * V;
        i64 row = first / vocab;
        int col = (int)(first % vocab);
        const i64 drow = step / vocab;
        const int dcol = (int)(step % vocab);
        for (i64 i = t; i < chunks; i += stride) {
            ce_grad_chunk<V>(lp, targets, d, i * V, row, col, vocab, scale);
            row += drow;
            col += dcol;
            if (col >= vocab) col -= vocab, ++row;
        }
    }
    for (i64 i = chunks * V + t; i < n; i += stride)  // fewer than V left
        ce_grad_chunk<1>(lp, targets, d, i, i / vocab, (int)(i % vocab), vocab, scale);
}

// Launch: block 256, grid min(ceil(rows * vocab / 1024), 65535), grid-stride.
// Rows with a negative target get 0; a target >= vocab matches no column.
// d may be lp.
extern "C" __global__ void ce_backward_f32(const float* lp, const int* targets, float* d, int rows, int vocab,
                                           float scale) {
    const i64 n = (i64)rows * vocab;
    if (aligned16(lp) && aligned16(d))
        ce_backward<4>(lp, targets, d, n, vocab, scale);
    else
        ce_backward<1>(lp, targets, d, n, vocab, scale);
}

// Launch: block 256, grid n_experts (blocks stride over experts). For expert
// e: f_counts[e] = (tokens whose top_k list contains e, each token once) / rows;
// p_means[e] = sum over tokens of probs[t, e] / rows. Fixed-order sums.
extern "C" __global__ void aux_counts_f32(const float* probs, const int* experts, float* f_counts, float* p_means,
                                          int rows, int n_experts, int top_k) {
    for (i64 e = blockIdx.x; e < n_experts; e += gridDim.x) {
        i64 hits = 0;
        double p = 0.0;
        for (i64 t = threadIdx.x; t < rows; t += blockDim.x) {
            const int* chosen = experts + (i64)t * top_k;
            bool hit = false;
            for (int j = 0; j < top_k; ++j) hit |= chosen[j] == e;
            hits += hit;
            p += probs[(i64)t * n_experts + e];
        }
        hits = block_allreduce(hits, Sum(), 0LL);
        p = block_allreduce(p, Sum(), 0.0);
        if (threadIdx.x == 0) {
            f_counts[e] = (float)((double)hits / rows);
            p_means[e] = (float)(p / rows);
        }
    }
}

// Launch: block 256, grid 1 (other blocks return).
// aux[0] = alpha * n_experts * sum_e f_counts[e] * p_means[e], fixed order.
extern "C" __global__ void aux_loss_f32(const float* f_counts, const float* p_means, float* aux, int n_experts,
                                        float alpha) {
    if (blockIdx.x != 0) return;
    double dot = 0.0;
    for (i64 e = threadIdx.x; e < n_experts; e += blockDim.x) dot += (double)f_counts[e] * p_means[e];
    dot = block_allreduce(dot, Sum(), 0.0);
    if (threadIdx.x == 0) aux[0] = (float)((double)alpha * n_experts * dot);
}
