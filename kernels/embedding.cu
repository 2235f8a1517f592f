// Embedding lookup and its backward.
#include "common.cuh"

#define NAN_F __int_as_float(0x7fc00000)

// Rows of T copied as they are, 16 bytes at a time where dim and the
// pointers allow. An id out of [0, vocab) gives `fill`-rows: zeros for a
// negative id, `nan` for one >= vocab.
template <class T> __device__ void embedding_rows(const int* ids, const T* table, T* out, int n_ids, int vocab, int dim, T nan) {
    constexpr int V = 16 / sizeof(T);  // elements per 16-byte vector
    for (i64 i = blockIdx.x; i < n_ids; i += gridDim.x) {
        const int id = ids[i];
        const T* src = table + (i64)id * dim;
        T* dst = out + i * dim;
        const bool vec = dim % V == 0 && aligned16(table) && aligned16(out);
        if (id >= 0 && id < vocab && vec) {
            for (i64 c = V * (i64)threadIdx.x; c < dim; c += V * (i64)blockDim.x)
                *reinterpret_cast<uint4*>(dst + c) = *reinterpret_cast<const uint4*>(src + c);
        } else {
            const T fill = id < 0 ? T(0) : nan;
            for (i64 c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = id >= 0 && id < vocab ? src[c] : fill;
        }
    }
}

// Launch: block 256, grid min(n_ids, 65535) (blocks stride over ids, threads
// over the row). out[i, :] = table[ids[i], :]; a negative id gives zeros
// (padding), an id >= vocab (which the host could not check in device memory)
// a row of NaN. out must not alias table or ids (rows of other ids are read).
extern "C" __global__ void embedding_f32(const int* ids, const float* table, float* out, int n_ids, int vocab, int dim) {
    embedding_rows<float>(ids, table, out, n_ids, vocab, dim, NAN_F);
}

// Launch: as embedding_f32, for 16-bit elements (float16 or bfloat16, copied
// bit for bit); `nan` holds the bits of the type's quiet NaN, for ids >= vocab.
extern "C" __global__ void embedding_h16(const int* ids, const unsigned short* table, unsigned short* out, int n_ids,
                                         int vocab, int dim, int nan) {
    embedding_rows<unsigned short>(ids, table, out, n_ids, vocab, dim, (unsigned short)nan);
}

// ----------------------------------------------------------------------------- backward
// One stable counting-sort pass (sort.cu) groups the ids' positions by the
// high bits of the id into buckets of 2^shift rows, in position order within
// a bucket (invalid ids dropped). Then each block takes a slice of a bucket's
// rows: it reads the bucket's positions, keeps those of its rows (in order),
// and each warp sums, for each of its rows, the rows of d_out at that row's
// positions, in order: read once, and written once (zeros where no id names
// it). A second sort pass over the low bits and a pass for each row's first
// position cost more than the gather's own filtering (about 20 us at 65536
// ids on an H100).

#define EMB_WARPS 8       // warps of a block of embedding_backward_f32
#define EMB_WINDOW 1024   // a bucket's positions a block reads at once (shared memory)
#define EMB_HOT 32        // a row's positions in a window above which the whole block sums it
#define EMB_AHEAD 8       // rows whose loads a thread of the block's sum has in flight together

// dst = the float32 sum of src's rows at list[0 .. n), in order, from 0 (from
// dst's own value with from_dst), by the whole block, a thread per V columns
// with EMB_AHEAD rows' loads in flight: a warp alone has one row's in flight,
// and a row named thousands of times (the commonest tokens of a text) then
// took milliseconds. The same additions in the same order as warp_sum_rows.
template <int V> __device__ void block_sum_rows(const float* src, const int* list, int n, float* dst, int dim, bool from_dst) {
    for (i64 c = (i64)threadIdx.x * V; c < dim; c += (i64)blockDim.x * V) {
        float acc[V] = {};
        if (from_dst) load_vec<V>(dst + c, acc);
        for (int j0 = 0; j0 < n; j0 += EMB_AHEAD) {
            float v[EMB_AHEAD][V];
#pragma unroll
            for (int u = 0; u < EMB_AHEAD; ++u)
                if (j0 + u < n) load_vec<V>(src + (i64)list[j0 + u] * dim + c, v[u]);
#pragma unroll
            for (int u = 0; u < EMB_AHEAD; ++u)
                if (j0 + u < n)
#pragma unroll
                    for (int e = 0; e < V; ++e) acc[e] = __fadd_rn(acc[e], v[u][e]);
        }
        store_vec<V>(dst + c, acc);
    }
}

// Launch: block 256 (EMB_WARPS warps), grid min(buckets * parts, 65535)
// (blocks stride over (bucket, part)), after the sort pass by id >> shift
// whose offsets[b] is bucket b's first sorted position (b <= buckets), ids
// the sorted ids (the pass's sorted_keys) beside their positions in order.
// Block (b, p) owns rows b * 2^shift + p * rows + [0, rows), rows = 2^shift /
// parts (at most 32 per warp). d_table[v] = the float32 sum, from 0, of
// d_out's rows at v's positions, in position order: the CPU backend's sums,
// bitwise. A row is a warp's, or the whole block's when it has more than
// EMB_HOT positions. A bucket of more than EMB_WINDOW positions is taken a
// window at a time, a row's sum carried on from d_table. d_table must not
// alias the inputs.
extern "C" __global__ void __launch_bounds__(EMB_WARPS * 32)
    embedding_backward_f32(const int* ids, const int* order, const int* offsets, const float* d_out, float* d_table,
                           int vocab, int dim, int shift, int buckets, int parts) {
    __shared__ int s_pos[EMB_WINDOW], s_row[EMB_WINDOW];  // the window's positions of this block's rows, in order
    __shared__ int s_list[EMB_WARPS][32];                 // a warp's positions of one row, up to 32 at a time
    __shared__ int s_hot[EMB_WINDOW];                     // the positions of the row the block sums
    __shared__ int s_count[32 * EMB_WARPS];               // each row's positions in the window
    __shared__ bool s_started[32 * EMB_WARPS];            // whether a row holds a partial sum in d_table
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rows = (1 << shift) / parts;
    const bool vec = dim % 4 == 0 && aligned16(d_out) && aligned16(d_table);
    for (i64 task = blockIdx.x; task < (i64)buckets * parts; task += gridDim.x) {
        const i64 first_row = (task / parts << shift) + task % parts * rows;
        const int begin = offsets[task / parts], end = offsets[task / parts + 1];
        for (int r = threadIdx.x; r < rows; r += blockDim.x) s_started[r] = false;
        for (int w0 = begin;; w0 += EMB_WINDOW) {
            const int w1 = min(end, w0 + EMB_WINDOW);
            int kept = 0;
            for (int e0 = w0; e0 < w1; e0 += blockDim.x) {
                const int e = e0 + threadIdx.x;
                const i64 r = e < w1 ? ids[e] - first_row : -1;
                const bool keep = r >= 0 && r < rows;
                int count;
                const int at = kept + block_keep_rank(keep, count);
                if (keep) s_pos[at] = order[e], s_row[at] = (int)r;
                kept += count;
            }
            for (int r = threadIdx.x; r < rows; r += blockDim.x) s_count[r] = 0;
            __syncthreads();
            for (int e = threadIdx.x; e < kept; e += blockDim.x) atomicAdd(s_count + s_row[e], 1);
            __syncthreads();
            const bool last = w1 == end;
            // A warp per row, its positions gathered 32 at a time.
            for (int r = warp; r < rows && first_row + r < vocab; r += EMB_WARPS) {
                if (s_count[r] > EMB_HOT) continue;
                float* dst = d_table + (first_row + r) * dim;
                // (s_count[r] <= EMB_HOT = 32: the list holds all of them,
                // and the scan stops at the last)
                int have = 0;
                for (int k = 0; have < s_count[r]; k += 32) {
                    const bool hit = k + lane < kept && s_row[k + lane] == r;
                    const unsigned mask = __ballot_sync(0xffffffffu, hit);
                    if (hit) s_list[warp][have + __popc(mask & ((1u << lane) - 1))] = s_pos[k + lane];
                    have += __popc(mask);
                }
                if (have > 0 || (last && !s_started[r])) {  // (zeros for a row no id names)
                    __syncwarp();
                    if (vec)
                        warp_sum_rows<4>(d_out, nullptr, s_list[warp], have, dst, dim, lane, s_started[r]);
                    else
                        warp_sum_rows<1>(d_out, nullptr, s_list[warp], have, dst, dim, lane, s_started[r]);
                    __syncwarp();
                    s_started[r] = true;
                }
            }
            // The block per hot row, its positions listed in order first.
            for (int r = 0; r < rows; ++r) {
                if (s_count[r] <= EMB_HOT) continue;
                int n = 0;
                for (int e0 = 0; e0 < kept; e0 += blockDim.x) {
                    const int e = e0 + threadIdx.x;
                    const bool keep = e < kept && s_row[e] == r;
                    int count;
                    const int at = n + block_keep_rank(keep, count);
                    if (keep) s_hot[at] = s_pos[e];
                    n += count;
                }
                __syncthreads();
                float* dst = d_table + (first_row + r) * dim;
                if (vec)
                    block_sum_rows<4>(d_out, s_hot, n, dst, dim, s_started[r]);
                else
                    block_sum_rows<1>(d_out, s_hot, n, dst, dim, s_started[r]);
                __syncthreads();  // before s_hot is refilled and s_started[r] set
                if (threadIdx.x == 0) s_started[r] = true;
            }
            __syncthreads();  // before the next window or task overwrites the positions
            if (last) break;
        }
    }
}
