// Top-p sampling that reproduces the CPU's nucleus exactly (decode.rs
// nucleus_floor), whatever the row: topp_sample_f32 (sample.cu) runs it on every
// row, topp_cluster_f32 (sample_cluster.cu) on the rows its two-pass estimate
// cannot decide.
#pragma once
#include "sampling.cuh"

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

// Block scratch; topp_cluster_f32 also keeps its candidates here.
__shared__ u64 topp_scratch[TOPP_CAP / 2];

// The token of row `row` (logits xr, stream key `key`) into out[row], by the
// whole block; 0 < top_p < 1.
__device__ void topp_row_exact(const float* xr, int vocab, u64 key, float top_p, float temperature, int* out,
                               i64 row) {
    __shared__ u64 acc[1024];    // atomics: level 0 (pass 2), level 1 (pass 3), level-2 counts (pass 4)
    __shared__ u64 mass0[1024];  // level 0 for the serial scan; then the boundary group
    unsigned* buf = reinterpret_cast<unsigned*>(topp_scratch);
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
    Draw d(key, temperature, false);
    const Temp tp(temperature);
    for (int b = tid; b < 1024; b += S_THREADS) acc[b] = 0;
    if (tid == 0) buf_n = 0, grp_n = 0;
    float m = -INF;
    int jm = 0;  // where m is (NaN never is)
    for (int j = tid; j < vocab; j += S_THREADS) {
        const float x = xr[j];
        if (x > m) m = x, jm = j;
    }
    // -0 and +0 rank alike (the lower index first): the CPU orders by p, equal for both.
    const i64 top = block_allreduce(pack_rank(total_order_key(m == 0.0f ? 0.0f : m), jm), Max(), (i64)NO_RANK);
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
        return;
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
