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
// the block helpers are in sampling.cuh, top-p's exact algorithm in topp.cuh;
// sample_cluster.cu has the kernels that split a row over a cluster of blocks.
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
//
// Keys bin by their top 12 bits (4096 bins). One pass counts the bins and keeps
// in a buffer every element whose bin can still hold one of the k best: the
// cut bin tau (the highest bin with at least k elements at or above it so far)
// only rises, and the buffer is compacted whenever it is half full. Bins below
// tau can never matter again, so only elements at or above it are counted
// (after the first chunk that is a few per row: no atomics). Then the
// final cut bin D is exact; its members in the buffer are ranked (larger key,
// then lower index) by counting, and the kept set is drawn from the buffer.
// When the buffer lost an element it needed (vast ties, or k > TOPK_BUF_K),
// the cut is refined by more passes (next 12 bits, last 8 bits, then the
// index among equal keys) and the draw streams over the row.

#define TOPK_CAP 3584
#define TOPK_BUF_K 896
#define TOPK_LOADS 16  // loads in flight per thread per chunk (one barrier per chunk)

// Launch: block 1024, grid batch; 1 <= k < vocab (k >= vocab: use sample_f32).
extern "C" __global__ void __launch_bounds__(S_THREADS)
    topk_sample_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, int k, float temperature) {
    __shared__ int hist[4096];
    __shared__ u64 buf[TOPK_CAP];
    __shared__ int buf_n, fail_bin, cut, cut2;
    __shared__ int above, above2;
    const int tid = threadIdx.x;
    const int CH = TOPK_LOADS * S_THREADS;
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x) {
        const float* xr = logits + row * vocab;
        Draw d(row_key(seeds[row], row), temperature, true);
        for (int b = tid; b < 4096; b += S_THREADS) hist[b] = 0;
        if (tid == 0) buf_n = 0, fail_bin = -1;
        __syncthreads();
        const bool buffered = k <= TOPK_BUF_K;
        u64 top = 0;  // best entry of the row (CPU: kept[0], the initial best)
        auto push = [&](u64 e) {
            const int slot = atomicAdd(&buf_n, 1);
            if (slot < TOPK_CAP)
                buf[slot] = e;
            else
                atomicMax(&fail_bin, (int)(entry_key(e) >> 20));
        };
        // First chunk: counts only, to place the first cut before buffering.
        const int n0 = min(vocab, CH);
        for (int j = tid; j < n0; j += S_THREADS) {
            const unsigned uk = ukey(xr[j]);
            atomicAdd(&hist[uk >> 20], 1);
            const u64 e = pack_entry(uk, j);
            top = e > top ? e : top;
        }
        __syncthreads();
        auto at_least_k = [&](int s) { return s >= k; };
        auto hist_val = [&](int b) { return hist[b]; };
        find_boundary<4096, int>(hist_val, at_least_k, &cut, &above);
        int tau = max(cut, 0);               // counting threshold
        int ptau = buffered ? tau : 4096;    // buffering threshold
        for (int j = tid; j < n0; j += S_THREADS) {
            const unsigned uk = ukey(xr[j]);
            if ((int)(uk >> 20) >= ptau) push(pack_entry(uk, j));
        }
        for (int base = CH; base < vocab; base += CH) {
            float xv[TOPK_LOADS];
#pragma unroll
            for (int q = 0; q < TOPK_LOADS; ++q) {
                const int j = base + q * S_THREADS + tid;
                xv[q] = j < vocab ? xr[j] : 0.0f;
            }
#pragma unroll
            for (int q = 0; q < TOPK_LOADS; ++q) {
                const int j = base + q * S_THREADS + tid;
                if (j < vocab) {
                    const unsigned uk = ukey(xv[q]);
                    if ((int)(uk >> 20) >= tau) {  // the row's best is never below tau
                        atomicAdd(&hist[uk >> 20], 1);
                        const u64 e = pack_entry(uk, j);
                        top = e > top ? e : top;
                        if (buffered) push(e);
                    }
                }
            }
            __syncthreads();
            if (base % (4 * CH) == 0 || buf_n > TOPK_CAP / 2) {  // uniform: read after the barrier
                find_boundary<4096, int>(hist_val, at_least_k, &cut, &above);
                tau = max(tau, cut);
                ptau = buffered ? tau : 4096;
            }
            if (buf_n > TOPK_CAP / 2) {
                const int n = min(buf_n, TOPK_CAP);
                u64 mine[(TOPK_CAP + S_THREADS - 1) / S_THREADS];
                int cnt = 0;
                for (int e = tid; e < n; e += S_THREADS) mine[cnt++] = buf[e];
                __syncthreads();
                if (tid == 0) buf_n = 0;
                __syncthreads();
                for (int e = 0; e < cnt; ++e)
                    if ((int)(entry_key(mine[e]) >> 20) >= tau) push(mine[e]);
                __syncthreads();
            }
        }
        __syncthreads();
        find_boundary<4096, int>(hist_val, at_least_k, &cut, &above);
        const int D = cut, need = k - above;  // D >= 0: vocab > k
        top = block_allreduce(top, [](u64 a, u64 b) { return a > b ? a : b; }, (u64)0);
        const int j_top = entry_index(top);
        if (tid == 0) d.offer(pack_rank(total_order_key(-INF), j_top));

        if (buffered && fail_bin < D) {
            // Everything at or above bin D is in the buffer.
            const int n = min(buf_n, TOPK_CAP);
            for (int e = tid; e < n; e += S_THREADS) {
                const u64 me = buf[e];
                const int bin = (int)(entry_key(me) >> 20);
                bool kept = bin > D;
                if (bin == D) {
                    int pos = 0;
                    for (int e2 = 0; e2 < n; ++e2) {
                        const u64 o = buf[e2];
                        pos += ((int)(entry_key(o) >> 20) == D && o > me) ? 1 : 0;
                    }
                    kept = pos < need;
                }
                if (kept) {
                    const int j = entry_index(me);
                    d.exact(ukey_value(entry_key(me)), j, token_noise(d.key, j, vocab));
                }
            }
        } else {
            // Refine the cut inside bin D: the next 12 bits, then the last 8.
            __syncthreads();
            for (int b = tid; b < 4096; b += S_THREADS) hist[b] = 0;
            __syncthreads();
            for (int j = tid; j < vocab; j += S_THREADS) {
                const unsigned uk = ukey(xr[j]);
                if ((int)(uk >> 20) == D) atomicAdd(&hist[(uk >> 8) & 4095], 1);
            }
            __syncthreads();
            auto at_least = [&](int need_) { return [need_](int s) { return s >= need_; }; };
            find_boundary<4096, int>(hist_val, at_least(need), &cut2, &above2);
            const int D1 = cut2, need1 = need - above2;
            const unsigned prefix = ((unsigned)D << 12) | (unsigned)D1;
            for (int b = tid; b < 512; b += S_THREADS) hist[b] = b < 256 ? 0 : 0x7fffffff;
            __syncthreads();
            for (int j = tid; j < vocab; j += S_THREADS) {
                const unsigned uk = ukey(xr[j]);
                if ((uk >> 8) == prefix) {
                    atomicAdd(&hist[uk & 255], 1);
                    atomicMin(&hist[256 + (uk & 255)], j);
                }
            }
            __syncthreads();
            find_boundary<256, int>(hist_val, at_least(need1), &cut2, &above2);
            const int D2 = cut2, need2 = need1 - above2;
            const unsigned t = (prefix << 8) | (unsigned)D2;
            const int c = hist[D2];
            int jt = need2 >= c ? 0x7fffffff : need2 == 1 ? hist[256 + D2] : -1;
            __syncthreads();
            if (jt < 0) jt = nth_index(vocab, need2, [&](int j) { return ukey(xr[j]) == t; });
            stream_pass(xr, vocab, d, [&](float x, int j) {
                const unsigned uk = ukey(x);
                return uk > t || (uk == t && j <= jt);
            });
        }
        finish(d, out, row, j_top);
        __syncthreads();  // before the next row reuses the shared arrays
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
