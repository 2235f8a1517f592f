// The sampling noise and the streaming draw shared by sample.cu (compute_70)
// and sample_cluster.cu (compute_90): see sample.cu's opening comment.
#pragma once
#include "common.cuh"

typedef unsigned long long u64;

#define S_THREADS 1024
#define S_WARPS (S_THREADS / 32)
#define GOLDEN 0x9E3779B97F4A7C15ULL
#define FULL 0xffffffffu

// ----------------------------------------------------------------------------- CPU formulas

__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ u64 row_key(u64 seed, u64 row) { return mix64(seed ^ mix64(row + GOLDEN)); }

#define GROUP_SALT 0xD1B54A32D192ED03ULL
#define TILE 1024

// Uniform in (0, 1) from a hash's top 23 bits, (b + 0.5) 2^-23.
__device__ __forceinline__ float uniform_of(u64 h) {
    return __fmul_rn(__fadd_rn(__uint2float_rn((unsigned)(h >> 41)), 0.5f), 0x1p-23f);
}

// math.rs ln: fdlibm's decomposition, for positive normal x.
__device__ __forceinline__ float ln_cpu(float x) {
    const int bits = __float_as_int(x);
    const int e = (bits - 0x3f3504f3) >> 23;
    const float f = __fsub_rn(__int_as_float(bits - (int)((unsigned)e << 23)), 1.0f);
    const float s = __fdiv_rn(f, __fadd_rn(2.0f, f));
    const float z = __fmul_rn(s, s);
    const float w = __fmul_rn(z, z);
    const float r = __fadd_rn(__fmul_rn(z, __fadd_rn(0.6666666f, __fmul_rn(w, 0.28498787f))),
                              __fmul_rn(w, __fadd_rn(0.40000972f, __fmul_rn(w, 0.24279079f))));
    const float half_f2 = __fmul_rn(__fmul_rn(0.5f, f), f);
    const float ef = (float)e;
    float t = __fmul_rn(s, __fadd_rn(half_f2, r));
    t = __fadd_rn(t, __fmul_rn(ef, -2.1219444e-4f));
    t = __fsub_rn(t, half_f2);
    t = __fadd_rn(t, f);
    return __fadd_rn(t, __fmul_rn(ef, 0.6933594f));
}


__device__ __forceinline__ float pow2i(int n) { return __int_as_float((int)((unsigned)(n + 127) << 23)); }

// math.rs exp: e^x = p 2^n, Taylor to r^7, scaled in two exact steps.
__device__ __forceinline__ float exp_cpu(float x) {
    const float MAGIC = 12582912.0f;
    x = x < -170.0f ? -170.0f : x;  // f32::clamp (a NaN stays NaN)
    x = x > 88.8f ? 88.8f : x;
    const float shifted = __fadd_rn(__fmul_rn(x, 1.44269504088896341f), MAGIC);
    const float n = __fsub_rn(shifted, MAGIC);
    const int ni = __float_as_int(shifted) - __float_as_int(MAGIC);
    const float r = __fsub_rn(__fsub_rn(x, __fmul_rn(n, 0.6933594f)), __fmul_rn(n, -2.1219444e-4f));
    // Horner from the inside out; the coefficients are the f32 quotients 1/5040 ... 1/6.
    float p = 0x1.a01a02p-13f;                     // 1/5040
    p = __fadd_rn(0x1.6c16c2p-10f, __fmul_rn(r, p));  // 1/720
    p = __fadd_rn(0x1.111112p-7f, __fmul_rn(r, p));   // 1/120
    p = __fadd_rn(0x1.555556p-5f, __fmul_rn(r, p));   // 1/24
    p = __fadd_rn(0x1.555556p-3f, __fmul_rn(r, p));   // 1/6
    p = __fadd_rn(0.5f, __fmul_rn(r, p));
    p = __fadd_rn(1.0f, __fmul_rn(r, p));
    p = __fadd_rn(1.0f, __fmul_rn(r, p));
    const int half = ni >> 1;
    return __fmul_rn(__fmul_rn(p, pow2i(half)), pow2i(ni - half));
}

// x / T, correctly rounded; a multiply when 1/T is an exact power of two.
struct Temp {
    float T, inv;
    bool pow2;
    __device__ explicit Temp(float t) : T(t), inv(1.0f / t) {
        const int b = __float_as_int(t);
        pow2 = (b & 0x7fffff) == 0 && (b >> 23) >= 1 && (b >> 23) <= 253;
    }
    __device__ __forceinline__ float div(float x) const { return pow2 ? __fmul_rn(x, inv) : __fdiv_rn(x, T); }
};

// ----------------------------------------------------------------------------- the noise (rng.rs)

struct Group {
    float max, exp_neg_max;  // M and e^-M
    int argmax;              // the member whose noise is M
};

// Members of group `lane` of the tile starting at token `start`.
__device__ __forceinline__ int members(int vocab, int start, int lane) {
    const int len = min(vocab - start, TILE);
    return lane < len ? (len - lane + 31) / 32 : 0;
}

__device__ __forceinline__ Group group_of(u64 key, int tile, int lane, int n) {
    const u64 h = mix64((key ^ GROUP_SALT) + (u64)(tile * 32 + lane) * GOLDEN);
    Group g;
    g.max = __fsub_rn(ln_cpu((float)n), ln_cpu(-ln_cpu(uniform_of(h))));
    g.exp_neg_max = exp_cpu(-g.max);
    g.argmax = (int)(((h & 0xffffffULL) * (u64)n) >> 24);
    return g;
}

__device__ __forceinline__ float member_noise(u64 key, const Group& g, int member, int token) {
    if (member == g.argmax) return g.max;
    const float e = -ln_cpu(uniform_of(mix64(key + (u64)token * GOLDEN)));
    return -ln_cpu(__fadd_rn(g.exp_neg_max, e));
}

// The noise of one token alone (samplers that draw from a few kept tokens).
__device__ float token_noise(u64 key, int token, int vocab) {
    const int tile = token / TILE, lane = token % 32;
    const Group g = group_of(key, tile, lane, members(vocab, tile * TILE, lane));
    return member_noise(key, g, (token % TILE) / 32, token);
}

// rng.rs noise_bound: no member's noise exceeds it.
__device__ __forceinline__ float noise_bound(const Group& g) {
    return __fadd_rn(g.max, __fmul_rn(__fadd_rn(fabsf(g.max), 1.0f), 0x1p-19f));
}

// ----------------------------------------------------------------------------- the draw

// Running argmax of one thread: best = pack_rank(score, index), lower index
// first on ties; bs is the best score itself.
struct Draw {
    u64 key;
    Temp tp;
    i64 best;
    float bs;
    bool neg_inf_ok;  // top-k: a -inf score may still be drawn (ties by index)
    __device__ Draw(u64 k, float t, bool ninf) : key(k), tp(t), best(NO_RANK), bs(-INF), neg_inf_ok(ninf) {}

    // Offers token j; returns its score, or NaN when it can never be drawn.
    __device__ __forceinline__ float exact(float x, int j, float noise) {
        float s = __fadd_rn(tp.div(x), noise);
        if (s != s || (s == -INF && !neg_inf_ok)) return __int_as_float(0x7fffffff);
        if (s == 0.0f) s = 0.0f;  // -0 ties +0
        const i64 r = pack_rank(total_order_key(s), j);
        if (r > best) best = r, bs = s;
        return s;
    }
    __device__ __forceinline__ void offer(i64 r) {
        if (r > best) best = r;
    }
};

#define STREAM_LOADS 16  // loads in flight per lane

// One pass over a row (or over part `part` of `parts` of its tiles: the blocks
// of a cluster share a row): every token j that keep(x_j, j) returns 1 for, or
// returns 2 for and then slow(x_j, j) true, is a candidate of the draw. keep
// and slow may have side effects: each is called at most once per token.
// Warp w of part q takes tiles w parts + q + k S_WARPS parts (the parts
// interleave, so each gets tiles of a short row); lane l loads group l of the tile
// (coalesced: the warp reads 32 consecutive floats per load) and bounds its
// best score by its largest kept x / T plus the group's noise bound. Each
// group's member that takes M costs no hash and is drawn at once, which gives
// lb (a lower bound on the best score, shared by the block) a head start.
// Groups whose bound still reaches lb - slack are drawn exactly, the whole
// warp on one group at a time, largest bound first, until no bound reaches it.
//
// `extra` adds to a pass (DrawOnly: nothing): extra.slack; extra.seen(s, j,
// lb - slack) gets every score drawn (with slack > 0 that is every token whose
// score is within slack of the best: top-p's candidates); extra.head() is
// called by every thread of the block once per round of tiles (a round: one
// tile per warp of each part), after the round's head starts are in block_lb,
// and returns a better lb if it can.
__shared__ int block_lb;  // total-order key of the block's lb (file scope: one copy for all instantiations)

__device__ __forceinline__ float block_lb_now() { return from_total_order_key(*(volatile int*)&block_lb); }

struct DrawOnly {
    float slack = 0.0f;
    __device__ __forceinline__ void seen(float, int, float) const {}
    __device__ __forceinline__ float head() const {  // no barrier: whatever has arrived helps
        __syncwarp();
        return block_lb_now();
    }
};

template <class Keep, class Slow, class Extra = DrawOnly>
__device__ void stream_pass_deferred(const float* xr, int vocab, Draw& d, Keep keep, Slow slow, int part, int parts,
                                     Extra extra = Extra()) {
    const int lane = threadIdx.x & 31, last = (vocab - 1) / TILE;
    __syncthreads();  // an earlier pass may still read block_lb
    if (threadIdx.x == 0) block_lb = total_order_key(d.bs);  // a caller may have seeded thread 0's draw
    __syncthreads();
    float lb = -INF;
    const float slack = extra.slack;
    for (int round = 0; round <= last; round += parts * S_WARPS) {  // the same rounds in every block
        const int tile = round + (threadIdx.x >> 5) * parts + part, start = tile * TILE;  // parts interleave
        const int n = tile <= last ? members(vocab, start, lane) : 0;
        const float* xg = xr + start + lane;
        unsigned kept = 0;
        float top = __int_as_float(0x7fffffff);  // NaN: nothing kept (fmaxf ignores NaN)
        for (int i0 = 0; i0 < n; i0 += STREAM_LOADS) {
            float xv[STREAM_LOADS];
#pragma unroll
            for (int q = 0; q < STREAM_LOADS; ++q) xv[q] = i0 + q < n ? xg[(i0 + q) * 32] : 0.0f;
            unsigned later = 0;
#pragma unroll
            for (int q = 0; q < STREAM_LOADS; ++q) {
                const int i = i0 + q, verdict = i < n ? keep(xv[q], start + i * 32 + lane) : 0;
                if (verdict == 1) kept |= 1u << i, top = fmaxf(top, xv[q]);
                if (verdict == 2) later |= 1u << q;
            }
            // Tokens keep left to slow, one at a time: its code appears once, not
            // unrolled (a large loop body runs out of instruction cache).
            for (; later; later &= later - 1) {
                const int i = i0 + __ffs(later) - 1;
                const float x = xg[i * 32];
                if (slow(x, start + i * 32 + lane)) kept |= 1u << i, top = fmaxf(top, x);
            }
        }
        Group g = {0.0f, 0.0f, 0};
        float bound = -INF, sa = __int_as_float(0x7fffffff);  // sa: the argmax member's score
        bool cand = top == top;
        if (cand) {
            g = group_of(d.key, tile, lane, n);
            const float t = top * d.tp.inv;
            // |fl(x/T) - t| <= 2^-22 |t|, and the sum's rounding: (|t| + 32) 2^-20 covers both.
            bound = (t + noise_bound(g)) + (fabsf(t) + 32.0f) * 0x1p-20f;
            if (!(fabsf(t) <= 1e30f)) bound = INF;  // x / T inf or NaN: always drawn
            if (kept >> g.argmax & 1) {
                const int ja = start + g.argmax * 32 + lane;
                sa = d.exact(xr[ja], ja, g.max);
            }
        }
        // Publish lb and read the block's back before drawing: the other warps'
        // head starts count too.
        lb = fmaxf(lb, warp_allreduce(d.bs, Max()));
        if (lane == 0) atomicMax(&block_lb, total_order_key(lb));
        lb = fmaxf(lb, extra.head());
        extra.seen(sa, start + g.argmax * 32 + lane, lb - slack);
        cand = cand && bound >= lb - slack;
        while (__ballot_sync(FULL, cand)) {
            // The candidate with the largest bound (ties: the lowest lane).
            u64 pick = cand ? ((u64)(unsigned)(total_order_key(bound) ^ 0x80000000) << 32) | (31 - lane) : 0;
            pick = warp_allreduce(pick, [](u64 a, u64 b) { return a > b ? a : b; });
            const int src = 31 - (int)(pick & 31);
            const int sn = __shfl_sync(FULL, n, src);
            const unsigned skept = __shfl_sync(FULL, kept, src);
            const Group sg = {__shfl_sync(FULL, g.max, src), __shfl_sync(FULL, g.exp_neg_max, src),
                              __shfl_sync(FULL, g.argmax, src)};
            if (lane < sn && lane != sg.argmax && (skept >> lane & 1)) {  // the argmax member is drawn
                const int j = start + lane * 32 + src;
                extra.seen(d.exact(xr[j], j, member_noise(d.key, sg, lane, j)), j, lb - slack);
            }
            lb = fmaxf(lb, warp_allreduce(d.bs, Max()));
            cand = cand && lane != src && bound >= lb - slack;
        }
        if (lane == 0) atomicMax(&block_lb, total_order_key(lb));
    }
}

// stream_pass with keep(x, j) -> bool deciding every token at once.
template <class Keep, class Extra = DrawOnly>
__device__ void stream_pass(const float* xr, int vocab, Draw& d, Keep keep, int part = 0, int parts = 1,
                            Extra extra = Extra()) {
    stream_pass_deferred(
        xr, vocab, d, [&](float x, int j) { return keep(x, j) ? 1 : 0; }, [](float, int) { return false; }, part, parts,
        extra);
}

// The token of the row: the best candidate over the block, or `fallback`.
__device__ __forceinline__ void finish(const Draw& d, int* out, i64 row, int fallback) {
    const i64 r = block_allreduce(d.best, Max(), (i64)NO_RANK);
    if (threadIdx.x == 0) out[row] = r == NO_RANK ? fallback : rank_index(r);
}

// ----------------------------------------------------------------------------- block helpers (top-k, top-p)

// Bins [0, NB) with values val(b) >= 0: *D = the largest b whose suffix sum
// S(b) = sum of val over [b, NB) satisfies pred (monotone: true for large sums),
// -1 if none; *above = S(D + 1). Exact (integer sums); call from every thread.
template <int NB, class T, class Val, class Pred>
__device__ void find_boundary(Val val, Pred pred, int* D, T* above) {
    constexpr int BPT = NB > S_THREADS ? NB / S_THREADS : 1;
    __shared__ T warp_total[S_WARPS];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    T v[BPT], own = 0;
#pragma unroll
    for (int i = 0; i < BPT; ++i) {
        const int b = t * BPT + i;
        v[i] = b < NB ? val(b) : (T)0;
        own += v[i];
    }
    T s = own;  // inclusive suffix over threads: lanes, then warps
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const T n = __shfl_down_sync(FULL, s, o);
        if (lane + o < 32) s += n;
    }
    if (lane == 0) warp_total[warp] = s;
    if (t == 0) *D = -1, *above = 0;
    __syncthreads();
    for (int w = warp + 1; w < S_WARPS; ++w) s += warp_total[w];
#pragma unroll
    for (int i = 0; i < BPT; ++i) {
        const T next = s - v[i];
        if (t * BPT + i < NB && pred(s) && !pred(next)) *D = t * BPT + i, *above = next;
        s = next;
    }
    __syncthreads();
}

// Exclusive prefix sum over the block in thread order.
__device__ int block_exclusive_scan(int v) {
    __shared__ int warp_total[S_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int s = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int n = __shfl_up_sync(FULL, s, o);
        if (lane >= o) s += n;
    }
    if (lane == 31) warp_total[warp] = s;
    __syncthreads();
    for (int w = 0; w < warp; ++w) s += warp_total[w];
    __syncthreads();
    return s - v;
}

// The m-th (1-based) index j in [0, vocab), in increasing order, with pred(j);
// -1 if there are fewer. Each thread counts one contiguous segment.
template <class Pred> __device__ int nth_index(int vocab, int m, Pred pred) {
    __shared__ int found;
    const int seg = (vocab + S_THREADS - 1) / S_THREADS;
    const int lo = (int)min((i64)threadIdx.x * seg, (i64)vocab), hi = min(vocab, lo + seg);
    int cnt = 0;
    for (int j = lo; j < hi; ++j) cnt += pred(j) ? 1 : 0;
    if (threadIdx.x == 0) found = -1;
    const int before = block_exclusive_scan(cnt);
    if (before < m && m <= before + cnt) {
        int need = m - before;
        for (int j = lo; j < hi; ++j)
            if (pred(j) && --need == 0) {
                found = j;
                break;
            }
    }
    __syncthreads();
    const int r = found;
    __syncthreads();
    return r;
}

// Total-order key as an unsigned (larger = later in f32::total_cmp order).
__device__ __forceinline__ unsigned ukey(float x) { return (unsigned)total_order_key(x) ^ 0x80000000u; }
__device__ __forceinline__ float ukey_value(unsigned k) { return from_total_order_key((int)(k ^ 0x80000000u)); }

// (key, index) as one u64: larger key first, then lower index.
__device__ __forceinline__ u64 pack_entry(unsigned k, int j) { return ((u64)k << 32) | (0xffffffffu - (unsigned)j); }
__device__ __forceinline__ unsigned entry_key(u64 e) { return (unsigned)(e >> 32); }
__device__ __forceinline__ int entry_index(u64 e) { return (int)(0xffffffffu - (unsigned)(e & 0xffffffffu)); }
