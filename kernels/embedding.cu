// Embedding lookup and its backward.
#include "scatter.cuh"

#define NAN_F __int_as_float(0x7fc00000)

// Launch: block 256, grid min(n_ids, 65535) (blocks stride over ids, threads
// over the row). out[i, :] = table[ids[i], :]; a negative id gives zeros
// (padding), an id >= vocab (which the host could not check in device memory)
// a row of NaN. out must not alias table or ids (rows of other ids are read).
extern "C" __global__ void embedding_f32(const int* ids, const float* table, float* out, int n_ids, int vocab, int dim) {
    for (i64 i = blockIdx.x; i < n_ids; i += gridDim.x) {
        const int id = ids[i];
        const float* src = table + (i64)id * dim;
        float* dst = out + i * dim;
        const bool vec = dim % 4 == 0 && aligned16(table) && aligned16(out);
        if (id >= 0 && id < vocab && vec) {
            for (i64 c = 4 * (i64)threadIdx.x; c < dim; c += 4 * (i64)blockDim.x) {
                float v[4];
                load_vec<4>(src + c, v);
                store_vec<4>(dst + c, v);
            }
        } else {
            const float fill = id < 0 ? 0.0f : NAN_F;
            for (i64 c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = id >= 0 && id < vocab ? src[c] : fill;
        }
    }
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
