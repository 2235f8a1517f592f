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
// The ids' positions are first sorted by id (the radix passes of sort.cu,
// stable, so each id's positions stay in order; invalid ids dropped): then
// every row of d_table is one warp's, the sum of its positions' rows of d_out
// in order, read once, and written once (zeros for ids no position names).

// The id at sorted position s, or vocab past the sorted ids (order -1).
__device__ __forceinline__ int sorted_id(const int* ids, const int* order, int s, int n_ids, int vocab) {
    const int q = s < n_ids ? order[s] : -1;
    return q < 0 ? vocab : ids[q];
}

// Launch: block 256, grid min(ceil((n_ids + 1) / 256), 65535) (a thread a
// position; grid-stride past that). starts[v] = the first sorted position
// whose id is >= v, for v = 0 .. vocab, each written by the one position
// where the id steps past v.
extern "C" __global__ void embedding_row_starts_i32(const int* ids, const int* order, int* starts, int n_ids, int vocab) {
    for (i64 s = grid_thread(); s <= n_ids; s += grid_threads()) {
        const int prev = s == 0 ? -1 : sorted_id(ids, order, (int)s - 1, n_ids, vocab);
        const int cur = s == n_ids ? vocab : sorted_id(ids, order, (int)s, n_ids, vocab);
        for (int v = prev + 1; v <= cur; ++v) starts[v] = (int)s;
    }
}

// Launch: block 256 (a warp per row), grid min(ceil(vocab / 8), 65535) (warps
// stride over rows), after embedding_row_starts_i32. d_table[v] = the float32
// sum, from 0, of d_out's rows at v's sorted positions, in position order:
// the CPU backend's sums, bitwise. d_table must not alias the inputs.
extern "C" __global__ void embedding_backward_f32(const int* order, const int* starts, const float* d_out,
                                                  float* d_table, int vocab, int dim) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const bool vec = dim % 4 == 0 && aligned16(d_out) && aligned16(d_table);
    for (i64 v = (i64)blockIdx.x * warps + (threadIdx.x >> 5); v < vocab; v += (i64)gridDim.x * warps) {
        if (vec)
            warp_sum_rows<4>(d_out, nullptr, order + starts[v], starts[v + 1] - starts[v], d_table + v * dim, dim, lane);
        else
            warp_sum_rows<1>(d_out, nullptr, order + starts[v], starts[v + 1] - starts[v], d_table + v * dim, dim, lane);
    }
}
