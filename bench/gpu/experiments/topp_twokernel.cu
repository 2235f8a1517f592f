// An experiment (bench/gpu/experiments/topp_experiments.py twokernel; not shipped):
// k1 draws over each row and counts its tokens (NBINS bins of 1/RESF log2 unit),
// keeps the best scorer when surely inside the nucleus, else leaves a floor and
// an "inside" bin in out[row]; k2 (a cluster of 4 per row) draws above the floor.
#include "sample_cluster.cu"  // the cluster helpers and PooledHeads (clusters of 4)
#define OB NBINS          // bins of 1/RES log2 unit
#define ORES RESF
#define OB_ZERO (OB * 5 / 8)  // bin of y2 = 0 (the reference)

__device__ __forceinline__ float obin_t(float x, float ref, float kres) {
    return __fmul_rn(__fsub_rn(x, ref), kres) + (float)OB_ZERO;
}
__device__ __forceinline__ int obin(float x, float ref, float kres) {
    const float t = obin_t(x, ref, kres);
    return t >= (float)OB ? OB - 1 : t > 0.0f ? (int)t : 0;
}
__device__ __forceinline__ double oedge(int b) { return exp2((double)(b - OB_ZERO) / ORES); }
__device__ __forceinline__ float ref_of(const float* xr, int vocab) {
    const int lane = threadIdx.x & 31;
    return warp_allreduce(lane < vocab ? xr[lane] : -INF, Max());
}

extern "C" __global__ void __launch_bounds__(S_THREADS, MINB)
    k1(const float* logits, int* out, const u64* seeds, int batch, int vocab, float top_p, float temperature) {
    extern __shared__ unsigned obins[];
    __shared__ int obad, cut_lo, cut_hi;
    __shared__ double above;
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x) {
        const float* xr = logits + row * vocab;
        const float ref = ref_of(xr, vocab);
        const float kres = __fmul_rn(__fdiv_rn(1.44269504f, temperature), ORES);
        for (int b = threadIdx.x; b < OB; b += S_THREADS) obins[b] = 0;
        if (threadIdx.x == 0) obad = 0;
        Draw d(row_key(seeds[row], row), temperature, false);
        int bad = 0;
        stream_pass(xr, vocab, d, [&](float x, int) {
            const float t = obin_t(x, ref, kres);
            bad |= !(t < (float)OB);
            atomicAdd(&obins[t > 0.0f ? min((int)t, OB - 1) : 0], 1u);
            return true;
        });
        if (bad) obad = 1;
        const i64 r = block_allreduce(d.best, Max(), (i64)NO_RANK);
        const int w = rank_index(r);
        const int bw = obin(xr[w], ref, kres);
        double s[4] = {0, 0, 0, 0};  // Alo, Ahi, Zlo, Zhi
        for (int b = threadIdx.x; b < OB; b += S_THREADS) {
            const unsigned c = obins[b];
            if (!c) continue;
            const double lo = c * oedge(b), hi = c * oedge(b + 1);
            s[2] += lo, s[3] += hi;
            if (b > bw) s[0] += lo, s[1] += hi;
            if (b == bw) s[1] += (c - 1) * oedge(b + 1);
        }
        block_reduce(s, Sum(), 0.0);
        const double m = 1e-4;
        int code = -1;  // -1: exact needed
        if (!obad && r != NO_RANK) {
            if (s[1] * (1 + m) < top_p * s[2] * (1 - m)) {
                code = w;
            } else {
                // Floor: bins below cut_lo - 1 are out. In: bins from cut_hi + 1 up are surely in
                // (all of the mass of higher bins plus the bin itself stays below the target).
                const double tlo = top_p * s[3] * (1 + m), thi = top_p * s[2] * (1 - m);
                find_boundary<OB, double>([&](int b) { return obins[b] * oedge(b) * (1 - m); },
                                          [&](double v) { return v >= tlo; }, &cut_lo, &above);
                find_boundary<OB, double>([&](int b) { return obins[b] * oedge(b + 1) * (1 + m); },
                                          [&](double v) { return v >= thi; }, &cut_hi, &above);
                const int fl = max(cut_lo - 1, 0), in = cut_hi + 1;
                code = -2 - (fl + (in << 15));
            }
        }
        if (threadIdx.x == 0) out[row] = code;
        __syncthreads();
    }
}

extern "C" __global__ void __cluster_dims__(4, 1, 1) __launch_bounds__(1024, 2)
    k2(const float* logits, int* out, const u64* seeds, int batch, int vocab, float top_p, float temperature, int* stat) {
    __shared__ i64 block_best;
    const unsigned rank = cluster_rank();
    for (i64 row = blockIdx.x / 4; row < batch; row += gridDim.x / 4) {
        const int code = out[row];
        if (code >= 0) continue;  // uniform over the cluster
        if (code == -1) { if (rank == 0 && threadIdx.x == 0) stat[row] = 3; continue; }
        const int c = -2 - code, fl = c & 32767, in = c >> 15;
        const float* xr = logits + row * vocab;
        const float ref = ref_of(xr, vocab);
        const float kres = __fmul_rn(__fdiv_rn(1.44269504f, temperature), ORES);
        Draw d(row_key(seeds[row], row), temperature, false);
        stream_pass(xr, vocab, d, [&](float x, int) { return obin_t(x, ref, kres) >= (float)fl; }, (int)rank, 4, PooledHeads());
        const i64 best = block_allreduce(d.best, Max(), (i64)NO_RANK);
        if (threadIdx.x == 0) block_best = best;
        cluster_sync();
        if (rank == 0 && threadIdx.x < 32) {
            i64 r = threadIdx.x < 4 ? *cluster_map(&block_best, threadIdx.x) : (i64)NO_RANK;
            r = warp_allreduce(r, Max());
            if (threadIdx.x == 0) {
                const int w = rank_index(r);
                const bool sure = r != NO_RANK && obin(xr[w], ref, kres) >= in;
                out[row] = sure ? w : -1;
                stat[row] = sure ? 2 : 4;
            }
        }
        cluster_sync();
    }
}
