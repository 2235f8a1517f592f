// gen-ptx: compute_90
// Sampling by clusters of SAMPLE_CLUSTER blocks per row (sm_90 and later): one
// block is bound to one SM, which for a few rows of a large vocabulary leaves
// the GPU idle, and a row read by one block is long gone from the caches when
// that block reads it again. The blocks of a cluster split the row's tiles and
// combine what they found through distributed shared memory.
//
// sample_cluster_f32 draws exactly as sample_f32 (sampling.cuh), and
// topk_cluster_f32 as topk_sample_f32 (topk.cuh; see its kernel below).
//
// topp_cluster_f32 draws exactly as topp_sample_f32 in two reads of the row:
//  1. a streaming draw over every token (as plain sampling) that also keeps the
//     row max and every token whose score (x / T + noise) is within TOPP_SLACK
//     of the best: the few best scores of the row;
//  2. the mass of the row, and of the tokens above each of the TOPP_R best
//     scorers, from a fast exp (relative error below 1e-5).
// The token is the best scorer inside the nucleus, i.e. the first of them whose
// mass above it is below top_p of the total. When both lie outside, the next
// try draws only from the tokens above the more probable of them (the nucleus
// is there), up to TOPP_TRIES tries. Before the second, a third read of the
// row counts its tokens per 1/16 log2 unit of p, which puts a floor under the
// nucleus: the second try starts near the nucleus's edge. When the nucleus's edge falls within
// TOPP_MARGIN of the total of a candidate, or after the last try, the
// cluster's first block runs the exact algorithm (topp.cuh) on the row.
#include "topk.cuh"
#include "topp.cuh"

#define SAMPLE_CLUSTER 4

__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// Every thread of every block of the cluster; orders shared-memory writes
// before the barrier with reads after it.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// Block `rank`'s copy of a shared variable of this block (a generic address).
template <class T> __device__ __forceinline__ T* cluster_map(T* local, unsigned rank) {
    T* remote;
    asm volatile("mapa.u64 %0, %1, %2;" : "=l"(remote) : "l"(local), "r"(rank));
    return remote;
}

// op over the cluster's copies of a shared variable, by one warp (lane r reads
// block r's copy); every lane gets the result.
template <class T, class Op> __device__ __forceinline__ T cluster_allreduce(T* local, Op op, T identity) {
    const unsigned lane = threadIdx.x & 31;
    return warp_allreduce(lane < SAMPLE_CLUSTER ? *cluster_map(local, lane) : identity, op);
}

// A streaming draw whose blocks pool their head starts across the cluster
// before any group is drawn: each block alone sees a quarter of the row, and a
// low lb means many groups drawn member by member. Each block publishes its
// block_lb in pooled_lb; the second barrier keeps the next round (or a block's
// next row) from overwriting it while others still read it.
__shared__ int pooled_lb;

struct PooledHeads : DrawOnly {
    __device__ float head() const {
        __syncthreads();  // the block's head starts are in block_lb
        if (threadIdx.x == 0) pooled_lb = block_lb;
        cluster_sync();
        int best = pooled_lb;
        for (unsigned r = 0; r < SAMPLE_CLUSTER; ++r) best = max(best, *cluster_map(&pooled_lb, r));
        cluster_sync();
        return from_total_order_key(best);
    }
};

// Launch: block 1024, grid a multiple of SAMPLE_CLUSTER (clusters stride over
// rows: rows = grid / SAMPLE_CLUSTER at a time); arguments as sample_f32.
extern "C" __global__ void __cluster_dims__(SAMPLE_CLUSTER, 1, 1) __launch_bounds__(S_THREADS, 2)
    sample_cluster_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, float temperature) {
    __shared__ i64 block_best;
    const unsigned rank = cluster_rank();
    for (i64 row = blockIdx.x / SAMPLE_CLUSTER; row < batch; row += gridDim.x / SAMPLE_CLUSTER) {
        Draw d(row_key(seeds[row], row), temperature, false);
        stream_pass(logits + row * vocab, vocab, d, [](float, int) { return true; }, (int)rank, SAMPLE_CLUSTER, PooledHeads());
        const i64 best = block_allreduce(d.best, Max(), (i64)NO_RANK);
        if (threadIdx.x == 0) block_best = best;
        cluster_sync();
        if (rank == 0 && threadIdx.x < 32) {
            const i64 r = cluster_allreduce(&block_best, Max(), (i64)NO_RANK);
            if (threadIdx.x == 0) out[row] = r == NO_RANK ? 0 : rank_index(r);
        }
        cluster_sync();  // the next row's block_best waits for every read of this one
    }
}

// ----------------------------------------------------------------------------- top-k

// Launch: block 1024, grid a multiple of SAMPLE_CLUSTER (clusters stride over
// rows); arguments as topk_sample_f32 (1 <= k < vocab). Block r scans the r-th
// of SAMPLE_CLUSTER contiguous parts of the row (topk.cuh) and keeps its part's
// k best at the front of its buffer; the row's k best are among them, so the
// cluster's first block gathers them, selects the k best again and draws. If
// a part's scan could not buffer what it needed, the first block runs the
// one-block algorithm on the row instead.
extern "C" __global__ void __cluster_dims__(SAMPLE_CLUSTER, 1, 1) __launch_bounds__(S_THREADS, 1)
    topk_cluster_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, int k,
                     float temperature) {
    __shared__ int kept_n, part_ok, gather_at[SAMPLE_CLUSTER + 1], cut, above;
    __shared__ u64 part_top;
    const unsigned rank = cluster_rank();
    const int tid = threadIdx.x, lane = tid & 31;
    const int seg = (vocab + SAMPLE_CLUSTER - 1) / SAMPLE_CLUSTER;
    for (i64 row = blockIdx.x / SAMPLE_CLUSTER; row < batch; row += gridDim.x / SAMPLE_CLUSTER) {
        const float* xr = logits + row * vocab;
        const int lo = min(vocab, (int)rank * seg), hi = min(vocab, lo + seg);
        const TopkScan sc = topk_scan(xr, lo, hi, k);
        u64 mine[(TOPK_CAP + S_THREADS - 1) / S_THREADS];
        int cnt = 0;
        if (sc.ok) topk_select(sc.D, sc.need, [&](u64 e) { mine[cnt++] = e; });
        if (tid == 0) kept_n = 0, part_ok = sc.ok, part_top = sc.top;
        __syncthreads();  // every read of the buffer is done
        for (int i = 0; i < cnt; ++i) topk_buf[atomicAdd(&kept_n, 1)] = mine[i];
        cluster_sync();
        if (rank == 0) {
            Draw d(row_key(seeds[row], row), temperature, true);
            if (tid < 32) {
                const int n = lane < SAMPLE_CLUSTER ? *cluster_map(&kept_n, lane) : 0;
                const int ok = cluster_allreduce(&part_ok, [](int a, int b) { return a & b; }, 1);
                const u64 top = cluster_allreduce(&part_top, [](u64 a, u64 b) { return a > b ? a : b; }, 0ull);
                int at = n;  // inclusive prefix over the blocks
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const int v = __shfl_up_sync(FULL, at, o);
                    if (lane >= o) at += v;
                }
                if (lane < SAMPLE_CLUSTER) gather_at[lane + 1] = at;
                if (lane == 0) gather_at[0] = 0, part_ok = ok, part_top = top;
            }
            __syncthreads();
            const int j_top = entry_index(part_top);
            if (part_ok) {
                // The blocks' lists, one after another (block 0's is in place).
                for (unsigned r = 1; r < SAMPLE_CLUSTER; ++r) {
                    const u64* remote = cluster_map(topk_buf, r);
                    for (int e = tid; e < gather_at[r + 1] - gather_at[r]; e += S_THREADS) topk_buf[gather_at[r] + e] = remote[e];
                }
                for (int b = tid; b < 4096; b += S_THREADS) topk_hist[b] = 0;
                if (tid == 0) topk_buf_n = gather_at[SAMPLE_CLUSTER];
                __syncthreads();
                for (int e = tid; e < topk_buf_n; e += S_THREADS) atomicAdd(&topk_hist[entry_key(topk_buf[e]) >> 20], 1);
                __syncthreads();
                find_boundary<4096, int>([&](int b) { return topk_hist[b]; }, [&](int s) { return s >= k; }, &cut, &above);
                if (tid == 0) d.offer(pack_rank(total_order_key(-INF), j_top));
                topk_select(cut, k - above, [&](u64 e) {
                    const int j = entry_index(e);
                    d.exact(ukey_value(entry_key(e)), j, token_noise(d.key, j, vocab));
                });
                finish(d, out, row, j_top);
            } else {
                topk_row(xr, vocab, k, d, out, row);
            }
        }
        cluster_sync();  // the other blocks' lists are read before the next row overwrites them
    }
}

// ----------------------------------------------------------------------------- top-p

#define TOPP_SLACK 2.0f  // candidates: scores within this of the best (~e^2 of a flat row)
#define TOPP_R 2         // candidates weighed in pass 2, best score first
#define TOPP_CANDS 1024  // a block's candidate buffer (in topp_scratch)
#define TOPP_MARGIN 3e-5 // of the total mass: the estimates' error is below 1e-5 of it
#define TOPP_TRIES 3     // tries before the exact algorithm
#define TOPP_BINS 1024   // after try 1: tokens counted per 1/TOPP_BIN_SCALE log2 unit below the row max
#define TOPP_BIN_SCALE 16

// What a block found in its part of the row, read by the cluster's blocks.
struct ToppPart {
    float max, best, dropped;  // row max; best score; best score not kept as a candidate
    int bad;                   // a NaN or +inf logit
    i64 top[TOPP_R];           // its best candidates, best first (NO_RANK: none)
    double z, lo[TOPP_R], hi[TOPP_R];  // mass: all; above candidate c surely; maybe (c included)
};

// (x - max) / T in log2 units, monotone in x: the approximate p is 2^y2.
__device__ __forceinline__ float y2(float x, float max, float k2) { return __fmul_rn(__fsub_rn(x, max), k2); }

// Pass 1's additions to the streaming draw: it keeps the candidates, and the
// blocks of the cluster pool their head starts before any group is drawn.
struct ToppCandidates : PooledHeads {
    i64* cands;  // TOPP_CANDS entries, pack_rank(score key, index)
    int *count, *dropped_key;  // entries pushed; the best score that found no room
    __device__ ToppCandidates(i64* c, int* n, int* dropped) : PooledHeads{TOPP_SLACK}, cands(c), count(n), dropped_key(dropped) {}
    __device__ void seen(float s, int j, float floor) const {
        // Called by the lanes of a branch together: one atomic per warp.
        const unsigned lane = threadIdx.x & 31, active = __activemask();
        const unsigned push = __ballot_sync(active, s >= floor && s > -INF);
        if (!(push >> lane & 1)) return;
        const int leader = __ffs(push) - 1;
        int slot = lane == leader ? atomicAdd(count, __popc(push)) : 0;
        slot = __shfl_sync(push, slot, leader) + __popc(push & ((1u << lane) - 1));
        if (slot < TOPP_CANDS)
            cands[slot] = pack_rank(total_order_key(s), j);
        else
            atomicMax(dropped_key, total_order_key(s));
    }
};

// Every token of block `rank`'s tiles (as the streaming draw took them: mostly
// cache hits), in an order of its choosing: begin() before each tile's tokens,
// token(x) for each, end() after them.
template <class Begin, class Token, class End>
__device__ void each_token(const float* xr, int vocab, unsigned rank, Begin begin, Token token, End end) {
    const int lane = threadIdx.x & 31;
    for (int tile = (threadIdx.x >> 5) * SAMPLE_CLUSTER + (int)rank; tile <= (vocab - 1) / TILE; tile += SAMPLE_CLUSTER * S_WARPS) {
        const int start = tile * TILE;
        begin();
        if (aligned16(xr) && start + TILE <= vocab) {  // float4 loads
            const float4* x4 = reinterpret_cast<const float4*>(xr + start) + lane;
#pragma unroll 1
            for (int k0 = 0; k0 < TILE / 128; k0 += 4) {
                float4 v[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) v[k] = x4[(k0 + k) * 32];
#pragma unroll
                for (int k = 0; k < 4; ++k) token(v[k].x), token(v[k].y), token(v[k].z), token(v[k].w);
            }
        } else {
            for (int i = 0, nm = members(vocab, start, lane); i < nm; ++i) token(xr[start + lane + i * 32]);
        }
        end();
    }
}

// After a try whose candidates are all out: a read of the block's tiles counts
// their tokens per bin (bin b: y in (-(b+1)/S, -b/S], y = (x - max) / T in log2
// units, S = TOPP_BIN_SCALE), and the cluster's counts bound the nucleus from
// below. A token is surely out once the tokens two or more bins above it surely
// hold top_p of the total (the extra bin covers the CPU's rounding of p).
// Returns the y below which every token is out, or -inf. A read of its own:
// counting in every row's pass 2 made top_p 0.9 10-14% slower.
static_assert(S_THREADS == TOPP_BINS, "nucleus_floor: one bin per thread");
__device__ float nucleus_floor(const float* xr, int vocab, unsigned rank, float max, float k2, unsigned* bins,
                               float top_p) {
    __shared__ int cut;
    __shared__ double above;
    bins[threadIdx.x] = 0;
    __syncthreads();
    each_token(
        xr, vocab, rank, [] {},
        [&](float x) { atomicAdd(&bins[(int)fminf(-y2(x, max, k2) * TOPP_BIN_SCALE, TOPP_BINS - 1.0f)], 1u); }, [] {});
    cluster_sync();  // every block's counts are in
    const int b = TOPP_BINS - 1 - (int)threadIdx.x;  // reversed: find_boundary sums from the end
    unsigned c = 0;
    for (unsigned r = 0; r < SAMPLE_CLUSTER; ++r) c += *cluster_map(bins + b, r);
    const double scale = TOPP_BIN_SCALE;
    const double lo = c * exp2(-(b + 1) / scale) * (1.0 - 1e-4), hi = c * exp2(-b / scale) * (1.0 + 1e-4);
    const double target = top_p * block_allreduce(hi, Sum(), 0.0);
    // The largest i with the top TOPP_BINS - i bins' mass >= target.
    find_boundary<TOPP_BINS, double>([&](int) { return lo; }, [&](double s) { return s >= target; }, &cut, &above);
    return cut < 0 ? -INF : -(TOPP_BINS - cut + 1) / (float)TOPP_BIN_SCALE;
}

// Launch: block 1024, grid a multiple of SAMPLE_CLUSTER (clusters stride over
// rows); arguments as topp_sample_f32 (0 < top_p < 1).
extern "C" __global__ void __cluster_dims__(SAMPLE_CLUSTER, 1, 1) __launch_bounds__(S_THREADS, 1)
    topp_cluster_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, float top_p,
                     float temperature) {
    __shared__ ToppPart part;
    __shared__ int cand_n, dropped_key, n_cand, undecided, verdict, next_skip;
    __shared__ float next_floor;
    __shared__ int cand_j[TOPP_R];
    __shared__ float cand_y[TOPP_R], row_max;
    i64* cands = reinterpret_cast<i64*>(topp_scratch);
    unsigned* bins = reinterpret_cast<unsigned*>(cands + TOPP_CANDS);  // TOPP_BINS, after the candidates
    const unsigned rank = cluster_rank();
    const int tid = threadIdx.x, lane = tid & 31;
    for (i64 row = blockIdx.x / SAMPLE_CLUSTER; row < batch; row += gridDim.x / SAMPLE_CLUSTER) {
        const float* xr = logits + row * vocab;
        const u64 key = row_key(seeds[row], row);
        const float k2 = __fmul_rn(Temp(temperature).inv, 1.44269504f);  // log2(e) / T
        // A try whose candidates all lie outside the nucleus narrows the next
        // try's draw to the tokens that can still be in: those ordered before
        // its most probable candidate (y >= floor2), which itself is out.
        float floor2 = -INF, rmax = 0.0f;
        int skip = -1;
        for (int tries = 1;; ++tries) {
            Draw d(key, temperature, false);

            // Pass 1: the row max and the candidates.
            if (tid == 0) cand_n = 0, dropped_key = total_order_key(-INF);
            float m = -INF;
            int bad = 0;
            stream_pass(
                xr, vocab, d,
                [&](float x, int j) {
                    m = fmaxf(m, x);
                    bad |= !(x < INF);
                    return tries == 1 || (y2(x, rmax, k2) >= floor2 && j != skip);
                },
                (int)rank, SAMPLE_CLUSTER, ToppCandidates(cands, &cand_n, &dropped_key));
            float found[3] = {m, d.bs, bad ? 1.0f : 0.0f};
            block_reduce(found, Max(), -INF);
            const float best = found[1];
            m = found[0], bad = found[2] > 0.0f;
            const int n = min(cand_n, TOPP_CANDS);
            if (tid < TOPP_R) part.top[tid] = NO_RANK;
            __syncthreads();
            const i64 low = pack_rank(total_order_key(best - TOPP_SLACK), 0x7fffffff);  // below: never a candidate
            for (int e = tid; e < n; e += S_THREADS) {  // each candidate's place among the block's
                const i64 me = cands[e];
                if (me < low) continue;
                int place = 0;
                for (int e2 = 0; e2 < n && place < TOPP_R; ++e2) place += cands[e2] > me ? 1 : 0;
                if (place < TOPP_R) part.top[place] = me;
            }
            if (tid == 0) part.max = m, part.best = best, part.dropped = from_total_order_key(dropped_key), part.bad = bad;
            cluster_sync();
            if (tid < 32) {
                // The cluster's TOPP_R best scores, kept only where no dropped or
                // unseen token (below best - TOPP_SLACK) could rank above them.
                const float gm = cluster_allreduce(&part.max, Max(), -INF);
                const float gbest = cluster_allreduce(&part.best, Max(), -INF);
                const float gdrop = cluster_allreduce(&part.dropped, Max(), -INF);
                const int gbad = cluster_allreduce(&part.bad, Max(), 0);
                const bool mine = lane < SAMPLE_CLUSTER;  // lane r: block r's list
                const ToppPart* o = cluster_map(&part, mine ? lane : 0);
                i64 tops[TOPP_R];
#pragma unroll
                for (int c = 0; c < TOPP_R; ++c) tops[c] = mine ? o->top[c] : NO_RANK;
                const float floor = gbest - TOPP_SLACK;
                int nc = 0, j = 0;
                for (; nc < TOPP_R; ++nc) {  // merge the blocks' sorted lists
                    const i64 w = warp_allreduce(tops[0], Max());
                    const float s = from_total_order_key(rank_key(w));
                    if (w == NO_RANK || !(s >= floor && s > gdrop)) break;
                    if (lane == nc) j = rank_index(w);
                    if (tops[0] == w) {
#pragma unroll
                        for (int c = 0; c + 1 < TOPP_R; ++c) tops[c] = tops[c + 1];
                        tops[TOPP_R - 1] = NO_RANK;
                    }
                }
                if (lane < nc) cand_j[lane] = j, cand_y[lane] = y2(xr[j], gm, k2);
                if (lane == 0) n_cand = nc, row_max = gm, undecided = gbad || !(gm > -INF) || nc == 0;
            }
            __syncthreads();
            rmax = row_max;

            // Pass 2: the masses.
            double sums[1 + 2 * TOPP_R] = {};  // z, lo[c], hi[c]
            if (!undecided) {
                const float gm = row_max;
                float above[TOPP_R], maybe[TOPP_R], ymin = INF;
#pragma unroll
                for (int c = 0; c < TOPP_R; ++c) {
                    // Within eps of y_c the CPU's order (by exp's rounded value, then
                    // index) may differ from y's: such tokens count as "maybe" only.
                    const float y = c < n_cand ? cand_y[c] : INF, eps = (1.0f + fabsf(y)) * 0x1p-19f;
                    above[c] = y + eps, maybe[c] = y - eps, ymin = fminf(ymin, maybe[c]);
                }
                float t[1 + 2 * TOPP_R] = {};  // one tile's sums (<= 32 terms each: float is enough)
                auto weigh = [&](float x) {
                    const float y = y2(x, gm, k2), p = exp2_approx(y);
                    t[0] += p;
                    if (y >= ymin) {
#pragma unroll
                        for (int c = 0; c < TOPP_R; ++c) {
                            if (y > above[c]) t[1 + c] += p;
                            if (y >= maybe[c]) t[1 + TOPP_R + c] += p;
                        }
                    }
                };
                each_token(
                    xr, vocab, rank,
                    [&] {
#pragma unroll
                        for (int i = 0; i < 1 + 2 * TOPP_R; ++i) t[i] = 0.0f;
                    },
                    weigh,
                    [&] {
#pragma unroll
                        for (int i = 0; i < 1 + 2 * TOPP_R; ++i) sums[i] += t[i];
                    });
            }
            block_reduce(sums, Sum(), 0.0);
            if (tid == 0) {
                part.z = sums[0];
                for (int c = 0; c < TOPP_R; ++c) part.lo[c] = sums[1 + c], part.hi[c] = sums[1 + TOPP_R + c];
            }
            cluster_sync();
            if (tid < 32) {
                // Every block decides alike. Candidate c is in the nucleus iff the
                // mass above it is below top_p of the total. Verdict: the token;
                // -1: too close to call; -2: all out.
                const double z = cluster_allreduce(&part.z, Sum(), 0.0);
                const double target = (double)top_p * z, margin = TOPP_MARGIN * z;
                int v = undecided ? -1 : -2, top_out = -1;
                float fl = -INF;
                for (int c = 0; c < TOPP_R && c < n_cand && v == -2; ++c) {
                    const double lo = cluster_allreduce(&part.lo[c], Sum(), 0.0);
                    const double hi = cluster_allreduce(&part.hi[c], Sum(), 0.0);
                    const float y = cand_y[c];
                    if (hi - (double)exp2_approx(y) + margin < target)
                        v = cand_j[c];
                    else if (lo - margin >= target) {
                        const float f = y - (1.0f + fabsf(y)) * 0x1p-19f;  // all of the nucleus is above
                        if (f > fl) fl = f, top_out = cand_j[c];
                    } else
                        v = -1;
                }
                if (lane == 0) verdict = v, next_floor = fl, next_skip = top_out;
            }
            __syncthreads();
            if (verdict >= 0) {
                if (rank == 0 && tid == 0) out[row] = verdict;
                break;
            }
            if (verdict == -1 || tries == TOPP_TRIES) {
                if (rank == 0) topp_row_exact(xr, vocab, key, top_p, temperature, out, row);
                break;
            }
            floor2 = next_floor, skip = next_skip;
            if (tries == 1) floor2 = fmaxf(floor2, nucleus_floor(xr, vocab, rank, rmax, k2, bins, top_p));
        }
    }
    cluster_sync();  // no block leaves while another may still read its shared memory
}
