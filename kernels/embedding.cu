// Embedding lookup and its backward.
#include "scatter.cuh"

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

// Launch: block 256, grid (ceil(dim / 256), Y), Y = 1 or up to ~32 (see
// scatter.cuh), on a d_table the caller has zeroed. d_table[ids[i], c] +=
// d_out[i, c] in index order: each row the sum, from 0, of the rows naming it
// in id order, as the CPU backend (bitwise). Negative ids and ids >= vocab are
// skipped. d_table must not alias the inputs.
extern "C" __global__ void embedding_backward_f32(const int* ids, const float* d_out, float* d_table, int n_ids,
                                                  int vocab, int dim) {
    scatter_rows(d_out, ids, d_table, n_ids, dim, vocab);
}
