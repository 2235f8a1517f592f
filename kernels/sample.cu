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
// vocabularies take more passes, never more memory).
#include "sampling.cuh"

// ----------------------------------------------------------------------------- block helpers

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

__device__ __forceinline__ float block_max(float v) { return block_allreduce(v, Max(), -INF); }

// Total-order key as an unsigned (larger = later in f32::total_cmp order).
__device__ __forceinline__ unsigned ukey(float x) { return (unsigned)total_order_key(x) ^ 0x80000000u; }
__device__ __forceinline__ float ukey_value(unsigned k) { return from_total_order_key((int)(k ^ 0x80000000u)); }

// (key, index) as one u64: larger key first, then lower index.
__device__ __forceinline__ u64 pack_entry(unsigned k, int j) { return ((u64)k << 32) | (0xffffffffu - (unsigned)j); }
__device__ __forceinline__ unsigned entry_key(u64 e) { return (unsigned)(e >> 32); }
__device__ __forceinline__ int entry_index(u64 e) { return (int)(0xffffffffu - (unsigned)(e & 0xffffffffu)); }

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
//
// p_j = exp((x_j - max) / T) with the CPU's exp. The CPU (decode.rs
// nucleus_floor) sums p per bin of (float bits >> 20) in double, scans the bins
// from the top in double until the running sum reaches top_p * total, then
// walks the boundary bin's members (p descending, index ascending). Here: pass 1
// the row max; pass 2 exact per-bin masses (integer multiples of the bin's
// unit, so any summation order is exact) and one thread's serial double scan
// over the bins, as the CPU's; pass 3 draws from the bins above the boundary
// bin B while it counts B's members by the next 10 bits and buffers them; the
// boundary inside B follows from exact integer sums (the CPU's running double
// sum is exact there whenever its terms are, i.e. unless the boundary p is
// below ~2^-12 of the max). Members that cannot be buffered take more passes.
// Masses are counted with 32-bit shared atomics as two 12-bit halves of each
// integer (exact up to 2^20 tokens; 64-bit atomics beyond). After pass 2 an
// element's side of bin B is known from y = (x - max) / T alone unless y lies
// within 1e-4 of the bin's edges (ln of its bounds): exp is only computed there.

#define TOPP_CAP 7168    // indices of bin B's members
#define TOPP_GROUP 1024  // (p, index) of the boundary sub-bin's members

__device__ __forceinline__ unsigned mant_int(unsigned bits) {  // p = mant_int * unit of its bin
    return (bits >> 23) ? (bits & 0x7fffffu) | 0x800000u : bits & 0x7fffffu;
}
__device__ __forceinline__ double bin_unit(int bin) {  // 2^(max(E, 1) - 150), E = bin >> 3
    const int e = max(bin >> 3, 1) - 150;
    return __longlong_as_double((long long)(e + 1023) << 52);
}

// Launch: block 1024, grid batch; 0 < top_p < 1 (top_p >= 1: use sample_f32).
extern "C" __global__ void __launch_bounds__(S_THREADS)
    topp_sample_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, float top_p,
                    float temperature) {
    __shared__ u64 acc[1024];    // atomics: level 0 (pass 2), level 1 (pass 3), level-2 counts (pass 4)
    __shared__ u64 mass0[1024];  // level 0 for the serial scan; then the boundary group
    __shared__ unsigned buf[TOPP_CAP];
    __shared__ int buf_n, grp_n, cutB, cut1, cut2;
    __shared__ double cumB, targetS;
    __shared__ float yA, yB;
    __shared__ u64 above1, above2;
    const int tid = threadIdx.x;
    unsigned* lo32 = reinterpret_cast<unsigned*>(acc);
    unsigned* hi32 = lo32 + 1024;
    int* cnt2 = reinterpret_cast<int*>(acc);
    int* minj2 = cnt2 + 1024;
    u64* grp = mass0;
    const bool split = vocab <= (1 << 20);
    auto add_mass = [&](int b, unsigned mant) {
        if (split) {
            atomicAdd(&lo32[b], mant & 4095u);
            atomicAdd(&hi32[b], mant >> 12);
        } else {
            atomicAdd(&acc[b], (u64)mant);
        }
    };
    auto mass_of = [&](int b) { return split ? ((u64)hi32[b] << 12) + lo32[b] : acc[b]; };
    for (i64 row = blockIdx.x; row < batch; row += gridDim.x) {
        const float* xr = logits + row * vocab;
        Draw d(row_key(seeds[row], row), temperature, false);
        const Temp tp(temperature);
        for (int b = tid; b < 1024; b += S_THREADS) acc[b] = 0;
        if (tid == 0) buf_n = 0, grp_n = 0;
        float m = -INF;
        int jm = 0;  // where m is (NaN never is)
        for (int j = tid; j < vocab; j += S_THREADS) {
            const float x = xr[j];
            if (x > m) m = x, jm = j;
        }
        const i64 top = block_allreduce(pack_rank(total_order_key(m), jm), Max(), (i64)NO_RANK);
        m = from_total_order_key(rank_key(top));
        // The first token of the nucleus (p = 1), drawn now: a head start for lb.
        if (tid == 0 && m > -INF) d.exact(m, rank_index(top), token_noise(d.key, rank_index(top), vocab));
        auto y_of = [&](float x) { return tp.div(__fsub_rn(x, m)); };  // ln p, p = e^((x - max) / T)
        auto prob_bits = [&](float x) { return __float_as_uint(exp_cpu(y_of(x))); };

        int bmin = 1 << 30, bmax = -1;
        for (int j0 = 0; j0 < vocab; j0 += 8 * S_THREADS) {
            float xv[8];  // loads first: the atomics below would otherwise serialise them
#pragma unroll
            for (int q = 0; q < 8; ++q) {
                const int j = j0 + q * S_THREADS + tid;
                xv[q] = j < vocab ? xr[j] : __int_as_float(0x7fffffff);
            }
#pragma unroll
            for (int q = 0; q < 8; ++q) {
                const unsigned pb = prob_bits(xv[q]);
                if (pb == 0 || pb >= 0x7f800000u) continue;  // 0 adds nothing; NaN has no bin
                const int bin = (int)(pb >> 20);
                add_mass(bin, mant_int(pb));
                bmin = min(bmin, bin), bmax = max(bmax, bin);
            }
        }
        __syncthreads();
        double* massd = reinterpret_cast<double*>(mass0);  // bin masses, mass * unit (exact as the CPU's)
        for (int b = tid; b < 1024; b += S_THREADS) {  // each thread its own bins
            massd[b] = __dmul_rn((double)mass_of(b), bin_unit(b));
            if (split)
                lo32[b] = 0, hi32[b] = 0;
            else
                acc[b] = 0;
        }
        bmax = block_allreduce(bmax, Max(), -1);
        bmin = -block_allreduce(-bmin, Max(), -(1 << 30));
        if (tid == 0) {
            // decode.rs, in its order: the total ascending, then bins from the top
            // (empty bins add 0 and never end the walk, so no test for them).
            double total = 0.0;
#pragma unroll 8
            for (int b = bmin; b <= bmax; ++b) total = __dadd_rn(total, massd[b]);
            const double target = __dmul_rn((double)top_p, total);
            double cum = 0.0;
            int B = -1;
#pragma unroll 8
            for (int b = bmax; b >= bmin; --b) {
                const double mb = massd[b];
                if (__dadd_rn(cum, mb) < target) {
                    cum = __dadd_rn(cum, mb);
                } else {
                    B = b;
                    break;
                }
            }
            cutB = B, cumB = cum, targetS = target;
            // y bounds of bin B, 1e-4 outside (exp is within 2 ulp of e^y).
            const bool normal = B >= 8;
            yA = normal ? (float)(log((double)__int_as_float(B << 20)) - 1e-4) : -INF;
            yB = normal ? (float)(log((double)__int_as_float((B + 1) << 20)) + 1e-4) : INF;
        }
        __syncthreads();
        const int B = cutB;
        if (B < 0) {  // the target is never reached: every token is in
            stream_pass(xr, vocab, d, [](float, int) { return true; });
            finish(d, out, row, 0);
            __syncthreads();
            continue;
        }
        const double C = cumB, target = targetS, unit = bin_unit(B);
        const float ya = yA, yb = yB;
        // The bits of p_j when it may lie in bin B; 0 when p_j is surely below
        // the bin, ~0u when surely above.
        auto near_bits = [&](float x) {
            const float y = y_of(x);
            if (y >= yb) return ~0u;
            if (!(y >= ya)) return 0u;
            return __float_as_uint(exp_cpu(y));
        };
        // Whether the boundary walk has reached the target once members of
        // total integer mass s (in B's unit) are in: C + s * unit >= target.
        auto reached = [=](u64 s) { return __dadd_rn(C, __dmul_rn((double)s, unit)) >= target; };

        // Pass 3: draw the bins above B; count B's members by the next 10 bits
        // and keep their indices.
        stream_pass_deferred(
            xr, vocab, d,
            [&](float x, int) {
                const float y = y_of(x);
                return y >= yb ? 1 : y >= ya ? 2 : 0;  // 2: near bin B, for the exact test below
            },
            [&](float x, int j) {
                const unsigned pb = prob_bits(x);
                if (pb >= 0x7f800000u) return false;
                if ((int)(pb >> 20) != B) return (int)(pb >> 20) > B;
                add_mass((pb >> 10) & 1023, mant_int(pb));
                const int slot = atomicAdd(&buf_n, 1);
                if (slot < TOPP_CAP) buf[slot] = (unsigned)j;
                return false;
            },
            0, 1);
        __syncthreads();
        find_boundary<1024, u64>(mass_of, reached, &cut1, &above1);
        const int I1 = max(cut1, 0);
        const u64 S1 = above1;  // mass of B's members in sub-bins above I1
        const unsigned pre = ((unsigned)B << 20) | ((unsigned)I1 << 10);

        // The boundary group (sub-bin I1) as (p bits, index) entries: a member
        // is in iff the walk has not reached the target before it.
        auto draw_group = [&]() {
            const int n = grp_n;
            for (int e = tid; e < n; e += S_THREADS) {
                const u64 me = grp[e];
                u64 before = S1;
                for (int e2 = 0; e2 < n; ++e2) {
                    const u64 o = grp[e2];
                    if (o > me) before += mant_int(entry_key(o));
                }
                if (!reached(before)) {
                    const int j = entry_index(me);
                    d.exact(xr[j], j, token_noise(d.key, j, vocab));
                }
            }
        };
        auto add_group = [&](unsigned pb, int j) {
            const int slot = atomicAdd(&grp_n, 1);
            if (slot < TOPP_GROUP) grp[slot] = pack_entry(pb, j);
        };
        bool grouped = false;
        if (buf_n <= TOPP_CAP) {
            // Every member of B is in the buffer: sub-bins above I1 are in.
            const int n = buf_n;
            for (int e = tid; e < n; e += S_THREADS) {
                const int j = (int)buf[e];
                const float x = xr[j];
                const unsigned pb = prob_bits(x);
                const int sub = (int)((pb >> 10) & 1023);
                if (sub > I1) d.exact(x, j, token_noise(d.key, j, vocab));
                if (sub == I1) add_group(pb, j);
            }
            __syncthreads();
            grouped = grp_n <= TOPP_GROUP;
        }
        if (!grouped) {
            // Pass 4: draw the sub-bins above I1 (again, harmless), collect I1's
            // members and count them by their last 10 bits.
            __syncthreads();
            for (int b = tid; b < 1024; b += S_THREADS) cnt2[b] = 0, minj2[b] = 0x7fffffff;
            if (tid == 0) grp_n = 0;
            __syncthreads();
            stream_pass(xr, vocab, d, [&](float x, int j) {
                const unsigned pb = near_bits(x);
                if (pb >= 0x7f800000u || (int)(pb >> 20) != B) return false;
                const int sub = (int)((pb >> 10) & 1023);
                if (sub == I1) {
                    atomicAdd(&cnt2[pb & 1023], 1);
                    atomicMin(&minj2[pb & 1023], j);
                    add_group(pb, j);
                }
                return sub > I1;
            });
            __syncthreads();
            grouped = grp_n <= TOPP_GROUP;
        }
        if (grouped) {
            draw_group();
        } else {
            // The exact boundary value p*, then how many of its ties are in.
            find_boundary<1024, u64>([&](int b) { return (u64)cnt2[b] * mant_int(pre | (unsigned)b); },
                                     [&](u64 s) { return reached(S1 + s); }, &cut2, &above2);
            const int I2 = max(cut2, 0);
            const unsigned pstar = pre | (unsigned)I2;
            const u64 iv = mant_int(pstar), before = S1 + above2;
            const int c = cnt2[I2];
            // Tie q (0-based, index order) is in iff !reached(before + q iv).
            int lo = 0, hi = c - 1;
            while (lo < hi) {
                const int mid = (lo + hi + 1) / 2;
                if (!reached(before + (u64)mid * iv)) lo = mid; else hi = mid - 1;
            }
            const int mcount = lo + 1;
            int jstar = mcount == 1 ? minj2[I2] : -1;
            __syncthreads();
            if (jstar < 0) jstar = nth_index(vocab, mcount, [&](int j) { return prob_bits(xr[j]) == pstar; });
            stream_pass(xr, vocab, d, [&](float x, int j) {
                const unsigned pb = near_bits(x);
                if (pb >= 0x7f800000u || (pb >> 10) != (pre >> 10)) return false;
                return pb > pstar || (pb == pstar && j <= jstar);
            });
        }
        finish(d, out, row, 0);
        __syncthreads();  // before the next row reuses the shared arrays
    }
}
