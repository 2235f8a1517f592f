// Top-k sampling by one block per row (topk_sample_f32, sample.cu), and the
// scan that topk_cluster_f32 (sample_cluster.cu) runs on each block's part.
#pragma once
#include "sampling.cuh"

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

// The scan's state (file scope: one copy, whichever kernel uses it).
__shared__ int topk_hist[4096];
__shared__ u64 topk_buf[TOPK_CAP];
__shared__ int topk_buf_n, topk_fail_bin;

struct TopkScan {
    int D, need;  // the cut bin, and how many of its members are kept
    u64 top;      // the best entry
    bool ok;      // every element at or above bin D is in topk_buf
};

// Phase 1 over xr[lo, hi) (entries carry the row's indices), k >= 1: counts
// the bins and buffers what can still be among the k best. Every thread gets
// the result. A segment of at most k elements keeps them all (D = -1).
__device__ TopkScan topk_scan(const float* xr, int lo, int hi, int k) {
    __shared__ int cut, above;
    int* hist = topk_hist;
    u64* buf = topk_buf;
    const int tid = threadIdx.x;
    const int CH = TOPK_LOADS * S_THREADS;
    for (int b = tid; b < 4096; b += S_THREADS) hist[b] = 0;
    if (tid == 0) topk_buf_n = 0, topk_fail_bin = -1;
    __syncthreads();
    const bool buffered = k <= TOPK_BUF_K;
    u64 top = 0;  // best entry (CPU: kept[0], the initial best)
    auto push = [&](u64 e) {
        const int slot = atomicAdd(&topk_buf_n, 1);
        if (slot < TOPK_CAP)
            buf[slot] = e;
        else
            atomicMax(&topk_fail_bin, (int)(entry_key(e) >> 20));
    };
    // First chunk: counts only, to place the first cut before buffering.
    const int n0 = min(hi, lo + CH);
    for (int j = lo + tid; j < n0; j += S_THREADS) {
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
    for (int j = lo + tid; j < n0; j += S_THREADS) {
        const unsigned uk = ukey(xr[j]);
        if ((int)(uk >> 20) >= ptau) push(pack_entry(uk, j));
    }
    for (int base = lo + CH; base < hi; base += CH) {
        float xv[TOPK_LOADS];
#pragma unroll
        for (int q = 0; q < TOPK_LOADS; ++q) {
            const int j = base + q * S_THREADS + tid;
            xv[q] = j < hi ? xr[j] : 0.0f;
        }
#pragma unroll
        for (int q = 0; q < TOPK_LOADS; ++q) {
            const int j = base + q * S_THREADS + tid;
            if (j < hi) {
                const unsigned uk = ukey(xv[q]);
                if ((int)(uk >> 20) >= tau) {  // the best is never below tau
                    atomicAdd(&hist[uk >> 20], 1);
                    const u64 e = pack_entry(uk, j);
                    top = e > top ? e : top;
                    if (buffered) push(e);
                }
            }
        }
        __syncthreads();
        if ((base - lo) % (4 * CH) == 0 || topk_buf_n > TOPK_CAP / 2) {  // uniform: read after the barrier
            find_boundary<4096, int>(hist_val, at_least_k, &cut, &above);
            tau = max(tau, cut);
            ptau = buffered ? tau : 4096;
        }
        if (topk_buf_n > TOPK_CAP / 2) {
            const int n = min(topk_buf_n, TOPK_CAP);
            u64 mine[(TOPK_CAP + S_THREADS - 1) / S_THREADS];
            int cnt = 0;
            for (int e = tid; e < n; e += S_THREADS) mine[cnt++] = buf[e];
            __syncthreads();
            if (tid == 0) topk_buf_n = 0;
            __syncthreads();
            for (int e = 0; e < cnt; ++e)
                if ((int)(entry_key(mine[e]) >> 20) >= tau) push(mine[e]);
            __syncthreads();
        }
    }
    __syncthreads();
    find_boundary<4096, int>(hist_val, at_least_k, &cut, &above);
    TopkScan r;
    r.D = cut, r.need = k - above;
    r.top = block_allreduce(top, [](u64 a, u64 b) { return a > b ? a : b; }, (u64)0);
    r.ok = buffered && topk_fail_bin < max(cut, 0);
    return r;
}

// Calls kept(entry) (from some thread) for each of the k best entries in
// topk_buf[0, topk_buf_n): those above bin D, and the best `need` of bin D
// (larger key, then lower index), ranked by counting.
template <class Kept> __device__ void topk_select(int D, int need, Kept kept) {
    const int n = min(topk_buf_n, TOPK_CAP);
    for (int e = threadIdx.x; e < n; e += S_THREADS) {
        const u64 me = topk_buf[e];
        const int bin = (int)(entry_key(me) >> 20);
        bool in = bin > D;
        if (bin == D) {
            int pos = 0;
            for (int e2 = 0; e2 < n; ++e2) {
                const u64 o = topk_buf[e2];
                pos += ((int)(entry_key(o) >> 20) == D && o > me) ? 1 : 0;
            }
            in = pos < need;
        }
        if (in) kept(me);
    }
}

// The drawn token of one row by the whole block, into out[row]; 1 <= k < vocab.
__device__ void topk_row(const float* xr, int vocab, int k, Draw& d, int* out, i64 row) {
    __shared__ int cut2, above2;
    int* hist = topk_hist;
    auto hist_val = [&](int b) { return hist[b]; };
    const int tid = threadIdx.x;
    const TopkScan sc = topk_scan(xr, 0, vocab, k);
    const int D = sc.D, need = sc.need;  // D >= 0: vocab > k
    const int j_top = entry_index(sc.top);
    if (tid == 0) d.offer(pack_rank(total_order_key(-INF), j_top));
    if (sc.ok) {
        topk_select(D, need, [&](u64 e) {
            const int j = entry_index(e);
            d.exact(ukey_value(entry_key(e)), j, token_noise(d.key, j, vocab));
        });
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
