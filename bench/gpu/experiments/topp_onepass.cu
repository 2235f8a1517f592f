// An experiment (bench/gpu/experiments/topp_experiments.py onepass; not shipped):
// top-p in one read per row by one block, NTHREADS threads (set by the script).
#define S_THREADS NTHREADS
#include "sampling.cuh"
#define OB 4096          // bins of 1/64 log2 unit
#define OB_ZERO 2560     // bin of y2 = 0 (the reference): [-40, 24) log2 units around it

__shared__ unsigned obins[OB];
__shared__ int obad;

__device__ __forceinline__ float obin_t(float x, float ref, float k64) {
    return __fmul_rn(__fsub_rn(x, ref), k64) + (float)OB_ZERO;
}
// 2^((b - OB_ZERO) / 64)
__device__ __forceinline__ double oedge(int b) { return exp2((double)(b - OB_ZERO) / 64.0); }

// Bounds on the mass above token w (bin bw) and the total: {Alo, Ahi, Zlo, Zhi}.
__device__ void obounds(int bw, double (&s)[4]) {
    for (int i = 0; i < 4; ++i) s[i] = 0.0;
    for (int b = threadIdx.x; b < OB; b += S_THREADS) {
        const unsigned c = obins[b];
        if (!c) continue;
        const double lo = c * oedge(b), hi = c * oedge(b + 1);
        s[2] += lo, s[3] += hi;
        if (b > bw) s[0] += lo, s[1] += hi;
        if (b == bw) s[1] += (c - 1) * oedge(b + 1);
    }
    block_reduce(s, Sum(), 0.0);
}

// 1: surely in the nucleus; -1: surely out; 0: too close.
__device__ int overdict(const double (&s)[4], float top_p) {
    const double m = 1e-4;
    if (s[1] * (1 + m) < top_p * s[2] * (1 - m)) return 1;
    if (s[0] * (1 - m) >= top_p * s[3] * (1 + m)) return -1;
    return 0;
}

extern "C" __global__ void __launch_bounds__(S_THREADS, 2)
    topp_onepass_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, float top_p,
                     float temperature, int* stat) {
    __shared__ int cut;
    __shared__ double above;
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x) {
        const float* xr = logits + row * vocab;
        const int lane = threadIdx.x & 31;
        const float ref = warp_allreduce(lane < vocab ? xr[lane] : -INF, Max());
        const float k64 = __fmul_rn(__fdiv_rn(1.44269504f, temperature), 64.0f);
        for (int b = threadIdx.x; b < OB; b += S_THREADS) obins[b] = 0;
        if (threadIdx.x == 0) obad = 0;
        Draw d(row_key(seeds[row], row), temperature, false);
        int bad = 0;
        stream_pass(xr, vocab, d, [&](float x, int) {
            const float t = obin_t(x, ref, k64);
            bad |= !(t < (float)OB);  // above the bins, +inf or NaN
            atomicAdd(&obins[(int)fmaxf(t, 0.0f) < OB ? (int)fmaxf(t, 0.0f) : OB - 1], 1u);
            return true;
        });
        if (bad) obad = 1;
        const i64 r = block_allreduce(d.best, Max(), (i64)NO_RANK);
        int verdict = 0, token = rank_index(r);
        double s[4];
        if (!obad && r != NO_RANK) {
            obounds((int)obin_t(xr[token], ref, k64), s);
            verdict = overdict(s, top_p);
            if (verdict < 0) {
                // Bins below D - 1 are out: the bins from D up surely hold top_p.
                const double target = top_p * s[3] * (1 + 1e-4);
                find_boundary<OB, double>([&](int b) { return obins[b] * oedge(b) * (1 - 1e-4); },
                                          [&](double v) { return v >= target; }, &cut, &above);
                const float floor_t = (float)(cut - 1);
                Draw d2(row_key(seeds[row], row), temperature, false);
                stream_pass(xr, vocab, d2, [&](float x, int) { return obin_t(x, ref, k64) >= floor_t; });
                const i64 r2 = block_allreduce(d2.best, Max(), (i64)NO_RANK);
                token = rank_index(r2);
                obounds((int)obin_t(xr[token], ref, k64), s);
                verdict = overdict(s, top_p) > 0 ? 2 : 0;
            }
        }
        if (threadIdx.x == 0) {
            out[row] = verdict > 0 ? token : -1;
            stat[row] = verdict;
        }
        __syncthreads();
    }
}
