// Seeded token sampling (plain, top-k, top-p) by the Gumbel-max trick, drawing
// exactly what the CPU backend draws (src/cpu/decode.rs, rng.rs, math.rs):
// token = argmax over the kept set of x_j / T + g_j (lower index wins ties).
// The noise g comes group by group (rng.rs): group (t, l) holds the tokens
// 1024 t + 32 i + l, exactly what lane l of a warp loads from tile t; one hash
// gives the group's largest noise M and which member takes it, a second hash
// per member the rest, -ln(e^-M + E). The noise, x / T and the top-p
// probabilities use the CPU's formulas with every float operation rounded on
// its own (__f*_rn: no FMA contraction), so they are bitwise the CPU's.
//
// All three kernels: block 1024 (S_THREADS), grid batch (blocks stride over
// rows), one block per row, static shared memory only (fixed size: larger
// vocabularies take more passes, never more memory). The streaming draw and
// the block helpers are in sampling.cuh, top-k's scan in topk.cuh, top-p's
// exact algorithm in topp.cuh;
// sample_cluster.cu has the kernels that split a row over a cluster of blocks.
#include "topk.cuh"
#include "topp.cuh"

// ----------------------------------------------------------------------------- plain

// Launch: block 1024, grid batch. One token per row of logits[batch, vocab]
// drawn from softmax(logits / temperature), temperature > 0; seeds[batch].
extern "C" __global__ void __launch_bounds__(S_THREADS, 2)  // 32 registers: two blocks per SM
    sample_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, float temperature) {
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x) {
        Draw d(row_key(seeds[row], row), temperature, false);
        stream_pass(logits + row * vocab, vocab, d, [](float, int) { return true; });
        finish(d, out, row, 0);
    }
}

// ----------------------------------------------------------------------------- top-k

// Launch: block 1024, grid batch; 1 <= k < vocab (k >= vocab: use sample_f32).
extern "C" __global__ void __launch_bounds__(S_THREADS)
    topk_sample_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, int k, float temperature) {
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x) {
        Draw d(row_key(seeds[row], row), temperature, true);
        topk_row(logits + row * vocab, vocab, k, d, out, row);
    }
}

// ----------------------------------------------------------------------------- top-p

// Launch: block 1024, grid batch; 0 < top_p < 1 (top_p >= 1: use sample_f32).
extern "C" __global__ void __launch_bounds__(S_THREADS)
    topp_sample_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, float top_p,
                    float temperature) {
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x)
        topp_row_exact(logits + row * vocab, vocab, row_key(seeds[row], row), top_p, temperature, out, row);
}
