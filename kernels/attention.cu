// Attention: the two unfused halves of causal multi-query attention (scores,
// weighted values) and fused flash attention (multi-head or one shared KV head,
// causal and/or an additive mask); the KV-cache write.
#include "common.cuh"

#define LOG2E 1.4426950408889634f

// ----------------------------------------------------------------------------- unfused halves

#define AT_TILE 64  // output tile per block: AT_TILE x AT_TILE
#define AT_TK 16    // reduction slice staged in shared memory per step

// 64 x 64 tile += A[64 x 16] B[16 x 64] from shared memory; thread (tx, ty)
// owns rows ty + 16 r and columns tx + 16 c (the layout of gemm.cu).
__device__ __forceinline__ void at_tile_fma(const float (*As)[AT_TILE + 1], const float (*Bs)[AT_TILE + 1],
                                            float (&acc)[4][4], int tx, int ty) {
#pragma unroll
    for (int k = 0; k < AT_TK; ++k) {
        float a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = As[k][ty + 16 * r];
#pragma unroll
        for (int c = 0; c < 4; ++c) b[c] = Bs[k][tx + 16 * c];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    }
}

// Launch: block (16, 16), grid (ceil(seq / 64), ceil(seq / 64), min(batch * heads, 65535));
// blocks stride over all three, so smaller grids also work. Q [batch, seq, heads, d],
// K [batch, seq, d] (one shared KV head), S [batch, heads, seq, seq]:
// S[b, h, i, j] = scale * q_i . k_j for j <= i and -inf above the diagonal
// (tiles wholly above it are only filled).
extern "C" __global__ void __launch_bounds__(256)
    attention_scores_f32(const float* Q, const float* K, float* S, int batch, int heads, int seq, int d, float scale) {
    __shared__ float As[AT_TK][AT_TILE + 1];  // Q tile transposed: As[k][i]
    __shared__ float Bs[AT_TK][AT_TILE + 1];  // K tile transposed: Bs[k][j]
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const i64 bh_count = (i64)batch * heads;
    for (i64 bh = blockIdx.z; bh < bh_count; bh += gridDim.z) {
        const i64 b = bh / heads, h = bh % heads;
        const float* q = Q + (b * seq * heads + h) * d;  // row i at q + i * heads * d
        const float* k = K + b * seq * d;                // row j at k + j * d
        float* s = S + bh * seq * seq;
        for (i64 i0 = (i64)blockIdx.y * AT_TILE; i0 < seq; i0 += (i64)gridDim.y * AT_TILE) {
            for (i64 j0 = (i64)blockIdx.x * AT_TILE; j0 < seq; j0 += (i64)gridDim.x * AT_TILE) {
                if (j0 > i0 + AT_TILE - 1) {  // wholly above the diagonal
                    for (int e = tid; e < AT_TILE * AT_TILE; e += 256) {
                        const i64 i = i0 + e / AT_TILE, j = j0 + e % AT_TILE;
                        if (i < seq && j < seq) s[i * seq + j] = -INF;
                    }
                    continue;
                }
                float acc[4][4] = {};
                for (int k0 = 0; k0 < d; k0 += AT_TK) {
#pragma unroll
                    for (int l = 0; l < 4; ++l) {
                        const int e = tid + l * 256;
                        const int r = e / AT_TK, kk = e % AT_TK;
                        const bool in_k = k0 + kk < d;
                        As[kk][r] = in_k && i0 + r < seq ? q[(i0 + r) * heads * d + k0 + kk] : 0.0f;
                        Bs[kk][r] = in_k && j0 + r < seq ? k[(j0 + r) * d + k0 + kk] : 0.0f;
                    }
                    __syncthreads();
                    at_tile_fma(As, Bs, acc, tx, ty);
                    __syncthreads();  // before the next slice overwrites the tiles
                }
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const i64 i = i0 + ty + 16 * r;
                    if (i >= seq) continue;
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const i64 j = j0 + tx + 16 * c;
                        if (j < seq) s[i * seq + j] = j <= i ? scale * acc[r][c] : -INF;
                    }
                }
            }
        }
    }
}

// Launch: block (16, 16), grid (ceil(d / 64), ceil(seq / 64), min(batch * heads, 65535));
// blocks stride over all three. W [batch, heads, seq, seq], V [batch, seq, d],
// O [batch, seq, heads, d]: O[b, i, h, :] = sum over j <= i of W[b, h, i, j] V[b, j, :].
// Entries of W above the diagonal are never used (they may hold anything).
extern "C" __global__ void __launch_bounds__(256)
    attention_output_f32(const float* W, const float* V, float* O, int batch, int heads, int seq, int d) {
    __shared__ float As[AT_TK][AT_TILE + 1];  // W tile transposed: As[j][i]
    __shared__ float Bs[AT_TK][AT_TILE + 1];  // V tile: Bs[j][c]
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const i64 bh_count = (i64)batch * heads;
    for (i64 bh = blockIdx.z; bh < bh_count; bh += gridDim.z) {
        const i64 b = bh / heads, h = bh % heads;
        const float* w = W + bh * seq * seq;
        const float* v = V + b * seq * d;
        float* o = O + (b * seq * heads + h) * d;  // row i at o + i * heads * d
        for (i64 i0 = (i64)blockIdx.y * AT_TILE; i0 < seq; i0 += (i64)gridDim.y * AT_TILE) {
            for (i64 c0 = (i64)blockIdx.x * AT_TILE; c0 < d; c0 += (i64)gridDim.x * AT_TILE) {
                float acc[4][4] = {};
                const i64 j_end = min((i64)seq, i0 + AT_TILE);  // keys any row of the tile sees
                for (i64 j0 = 0; j0 < j_end; j0 += AT_TK) {
#pragma unroll
                    for (int l = 0; l < 4; ++l) {
                        const int e = tid + l * 256;
                        const int r = e / AT_TK, jj = e % AT_TK;  // W tile: 64 rows of 16
                        const i64 i = i0 + r, j = j0 + jj;
                        As[jj][r] = i < seq && j <= i ? w[i * seq + j] : 0.0f;  // select: garbage never multiplies
                        const int vj = e / AT_TILE, vc = e % AT_TILE;  // V tile: 16 rows of 64
                        Bs[vj][vc] = j0 + vj < seq && c0 + vc < d ? v[(j0 + vj) * d + c0 + vc] : 0.0f;
                    }
                    __syncthreads();
                    at_tile_fma(As, Bs, acc, tx, ty);
                    __syncthreads();
                }
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const i64 i = i0 + ty + 16 * r;
                    if (i >= seq) continue;
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const i64 col = c0 + tx + 16 * c;
                        if (col < d) o[i * heads * d + col] = acc[r][c];
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------- flash attention
//
// One block of 64 threads (8 x 8: rg = tid / 8, cg = tid % 8) owns BR query rows
// of one (batch, head) and walks the key/value tiles of BC keys (BR == BC), with
// an online softmax in base 2: O(seq) memory, tiles above the diagonal skipped
// when causal. Per tile: S = Q K^T (each thread TR x TC scores), row max and
// rescale, P = 2^(S - m) to shared memory, O += P V (each thread TR x TD
// outputs). Thread rows are rg * VR + e + 8 VR q, score columns cg * VC + e +
// 8 VC q, output columns cg * VD + e + 8 VD q: the 8 threads of a row are 8
// consecutive lanes (the row reductions are 3 shuffles) and every shared load
// is a broadcast or a conflict-free vector load.
//
// Shared memory (one 48 KB array, carved per head-dim configuration):
//   Qs[D][BR], Ks[D][BC]  transposed, column index XOR-swizzled per 4 k so that
//                         the transposing stores are conflict-free;
//   Vs[BC][D]             as in memory;
//   Ps[BC][BR]            transposed P, swizzled; inside Ks when it fits (BR <= D).
// Head dims below the configuration's D are zero-padded.

#define FA_THREADS 64
#define FA_SMEM_FLOATS 12288

// Shared-memory vector loads and stores of N = 1, 2, 4 floats at a 32-bit
// shared address, as explicit PTX: left to the compiler, its load/store
// vectorizer merged them differently from run to run (NVRTC 12.4 hashes
// pointers), so the PTX was not reproducible. The "memory" clobber keeps them
// in order with the barriers; addresses are plain integers, so ptxas folds
// constant offsets into the instruction.
__device__ __forceinline__ unsigned smem_addr(const float* p) { return (unsigned)__cvta_generic_to_shared(p); }
template <int N> struct Vec;
template <> struct Vec<1> {
    static __device__ __forceinline__ void load(unsigned a, float* v) {
        asm("ld.shared.f32 %0, [%1];" : "=f"(v[0]) : "r"(a) : "memory");
    }
    static __device__ __forceinline__ void store(unsigned a, const float* v) {
        asm volatile("st.shared.f32 [%0], %1;" ::"r"(a), "f"(v[0]) : "memory");
    }
};
template <> struct Vec<2> {
    static __device__ __forceinline__ void load(unsigned a, float* v) {
        asm("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(v[0]), "=f"(v[1]) : "r"(a) : "memory");
    }
    static __device__ __forceinline__ void store(unsigned a, const float* v) {
        asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(a), "f"(v[0]), "f"(v[1]) : "memory");
    }
};
template <> struct Vec<4> {
    static __device__ __forceinline__ void load(unsigned a, float* v) {
        asm("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3]) : "r"(a) : "memory");
    }
    static __device__ __forceinline__ void store(unsigned a, const float* v) {
        asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(a), "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3])
                     : "memory");
    }
};

// PF: how K/V tiles reach shared memory. 0: loaded at the start of their
// tile; 1: the next tile's K and V are loaded into registers while this one
// computes; 2: V during S of its own tile, the next K during P V (half the
// registers of 1).
template <int D_, int BR_, int BC_, int PF_ = 0, int US_ = 4, int UP_ = 4, bool SKIP_ = false> struct FlashCfg {
    static constexpr int D = D_, BR = BR_, BC = BC_, PF = PF_;
    static constexpr int US = US_, UP = UP_;  // unroll of the S and P V loops
    static constexpr bool SKIP = SKIP_;       // skip rescaling O when a row max did not move
    static constexpr int TR = BR / 8, TC = BC / 8, TD = D / 8;
    static constexpr int VR = TR < 4 ? TR : 4, VC = TC < 4 ? TC : 4, VD = TD < 4 ? TD : 4;
    static constexpr bool P_IN_K = BR <= D;
    static constexpr int Q_OFF = 0, K_OFF = D * BR, V_OFF = K_OFF + D * BC;
    static constexpr int P_OFF = P_IN_K ? K_OFF : V_OFF + BC * D;
    static constexpr int FLOATS = P_IN_K ? V_OFF + BC * D : P_OFF + BC * BR;
    static_assert(FLOATS <= FA_SMEM_FLOATS, "flash tiles exceed shared memory");
    static_assert(D % 16 == 0 && BR % 16 == 0 && BC % 8 == 0, "flash tile shape");
    // Column swizzle of the transposed tiles: XOR by a multiple of 8 per 4 k.
    static __device__ __forceinline__ int swz(int k, int bn) { return ((k >> 2) & ((bn >= 32 ? 4 : bn / 8) - 1)) << 3; }
    // Swizzle of Ps rows: XOR by a multiple of VR per column group.
    static __device__ __forceinline__ int pswz(int j) { return ((j / VC) & ((BR / VR < 8 ? BR / VR : 8) - 1)) * VR; }
};

// Columns k..k+3 of row n of a [rows][d] matrix at g (row stride `stride`),
// zeros outside the valid rows / the d columns. VEC4: one 16-byte load (d % 4
// == 0 and g 16-byte aligned). (A branch-free form with clamped addresses was
// ~17% slower overall.)
template <bool VEC4> __device__ __forceinline__ float4 fa_fetch4(const float* g, i64 stride, int n, int valid, int k, int d) {
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (n < valid) {
        const float* p = g + n * stride + k;
        if (VEC4) {
            if (k < d) load_vec<4>(p, v);
        } else {
#pragma unroll
            for (int u = 0; u < 4; ++u)
                if (k + u < d) v[u] = p[u];
        }
    }
    return make_float4(v[0], v[1], v[2], v[3]);
}

// Rows [0, BN) of a [rows][d] matrix at g (row n at g + n * stride, valid below
// `valid`), columns [0, D), into T[k][n ^ swz(k)]; zeros outside. A warp stores
// 8 rows x 4 float4 columns at a time: conflict-free with the swizzle. fetch
// reads global memory into registers, put writes them to shared memory.
template <class C, int BN, bool VEC4> struct TileT {
    static constexpr int GROUPS = (BN / 8) * (C::D / 16);
    static_assert(GROUPS % (FA_THREADS / 32) == 0, "every warp gets whole groups");
    static constexpr int PER = (GROUPS + FA_THREADS / 32 - 1) / (FA_THREADS / 32);
    float4 r[PER];
    static __device__ __forceinline__ float4 fetch1(int i, const float* g, i64 stride, int valid, int d) {
        const int lane = threadIdx.x & 31, grp = (threadIdx.x >> 5) + i * (FA_THREADS / 32);
        const int n = (grp % (BN / 8)) * 8 + (lane & 7), k = ((grp / (BN / 8)) * 4 + (lane >> 3)) * 4;
        return fa_fetch4<VEC4>(g, stride, n, valid, k, d);
    }
    static __device__ __forceinline__ void put1(int i, float* T, float4 v) {
        const int lane = threadIdx.x & 31, grp = (threadIdx.x >> 5) + i * (FA_THREADS / 32);
        const int n = (grp % (BN / 8)) * 8 + (lane & 7), k = ((grp / (BN / 8)) * 4 + (lane >> 3)) * 4;
        const int col = n ^ C::swz(k, BN);
        T[(k + 0) * BN + col] = v.x;
        T[(k + 1) * BN + col] = v.y;
        T[(k + 2) * BN + col] = v.z;
        T[(k + 3) * BN + col] = v.w;
    }
    __device__ __forceinline__ void fetch(const float* g, i64 stride, int valid, int d) {
#pragma unroll
        for (int i = 0; i < PER; ++i) r[i] = fetch1(i, g, stride, valid, d);
    }
    __device__ __forceinline__ void put(float* T) const {
#pragma unroll
        for (int i = 0; i < PER; ++i) put1(i, T, r[i]);
    }
    // Global to shared directly, every value times s (s = 1 for K; Q takes the
    // softmax scale).
    static __device__ __forceinline__ void copy(float* T, const float* g, i64 stride, int valid, int d, float s = 1.0f) {
#pragma unroll 4
        for (int i = 0; i < PER; ++i) {
            const float4 v = fetch1(i, g, stride, valid, d);
            put1(i, T, make_float4(v.x * s, v.y * s, v.z * s, v.w * s));
        }
    }
};

// Rows [0, BC) of V into Vs[j][c] as in memory; zeros outside.
// acc[t][u] += a[t] b[u] for K steps of shared-memory operands: step i reads
// a's TA floats at a0 + 4 (i a_step + 8 VA g + e) (VA at a time), b's likewise.
// The inner product of both flash GEMMs (Q K^T and P V) on register tiles.
template <int K, int VA, int VB, int TA, int TB>
__device__ __forceinline__ void outer_accumulate(unsigned a0, int a_step, unsigned b0, int b_step, float (&acc)[TA][TB]) {
#pragma unroll
    for (int i = 0; i < K; ++i) {
        float a[TA], b[TB];
#pragma unroll
        for (int g = 0; g < TA / VA; ++g) Vec<VA>::load(a0 + 4u * (i * a_step + g * 8 * VA), a + g * VA);
#pragma unroll
        for (int g = 0; g < TB / VB; ++g) Vec<VB>::load(b0 + 4u * (i * b_step + g * 8 * VB), b + g * VB);
#pragma unroll
        for (int t = 0; t < TA; ++t)
#pragma unroll
            for (int u = 0; u < TB; ++u) acc[t][u] = fmaf(a[t], b[u], acc[t][u]);
    }
}

template <class C, bool VEC4> struct TileV {
    static constexpr int ITEMS = C::BC * C::D / 4;
    static constexpr int PER = ITEMS / FA_THREADS;
    static_assert(ITEMS % FA_THREADS == 0, "every thread gets whole items");
    float4 r[PER];
    static __device__ __forceinline__ float4 fetch1(int i, const float* g, i64 stride, int valid, int d) {
        const int e = threadIdx.x + i * FA_THREADS;
        const int n = e / (C::D / 4), k = (e % (C::D / 4)) * 4;
        return fa_fetch4<VEC4>(g, stride, n, valid, k, d);
    }
    static __device__ __forceinline__ void put1(int i, float* T, float4 v) {
        reinterpret_cast<float4*>(T)[threadIdx.x + i * FA_THREADS] = v;
    }
    __device__ __forceinline__ void fetch(const float* g, i64 stride, int valid, int d) {
#pragma unroll
        for (int i = 0; i < PER; ++i) r[i] = fetch1(i, g, stride, valid, d);
    }
    __device__ __forceinline__ void put(float* T) const {
#pragma unroll
        for (int i = 0; i < PER; ++i) put1(i, T, r[i]);
    }
    static __device__ __forceinline__ void copy(float* T, const float* g, i64 stride, int valid, int d) {
#pragma unroll 4
        for (int i = 0; i < PER; ++i) put1(i, T, fetch1(i, g, stride, valid, d));
    }
};

template <bool B, class T, class F> struct Pick { typedef T type; };
template <class T, class F> struct Pick<false, T, F> { typedef F type; };

template <class C, bool VEC4>
__device__ void flash_tiles(float* smem, const float* Q, const float* K, const float* V, float* O, int batch, int seq,
                            int heads, int kv_heads, int d, float scale, int causal, const float* mask) {
    constexpr int D = C::D, BR = C::BR, BC = C::BC, TR = C::TR, TC = C::TC, TD = C::TD;
    constexpr int VR = C::VR, VC = C::VC, VD = C::VD;
    float* Qs = smem + C::Q_OFF;
    float* Ks = smem + C::K_OFF;
    float* Vs = smem + C::V_OFF;
    const unsigned sQ = smem_addr(Qs), sK = smem_addr(Ks), sV = smem_addr(Vs), sP = smem_addr(smem + C::P_OFF);
    const int tid = threadIdx.x, rg = tid >> 3, cg = tid & 7;
    const float scale2 = scale * LOG2E;
    const i64 q_stride = (i64)heads * d, kv_stride = (i64)kv_heads * d;
    const bool out4 = d % 4 == 0 && aligned16(O);
    const i64 q_tiles = (seq + BR - 1) / BR;
    const i64 bh_count = (i64)batch * heads;
    const i64 work = q_tiles * bh_count;

    for (i64 item = blockIdx.x; item < work; item += gridDim.x) {
        // Heaviest (last) query tiles first: the causal tail is short tiles.
        const i64 qt = q_tiles - 1 - item / bh_count, bh = item % bh_count;
        const i64 b = bh / heads, h = bh % heads, kvh = kv_heads == 1 ? 0 : h;
        const int i0 = (int)(qt * BR);
        const float* q = Q + ((b * seq + i0) * heads + h) * d;
        const float* kbase = K + (b * seq * kv_heads + kvh) * d;
        const float* vbase = V + (b * seq * kv_heads + kvh) * d;

        TileT<C, BR, VEC4>::copy(Qs, q, q_stride, seq - i0, d, scale2);  // scores come out in base 2

        float o[TR][TD], m[TR], l[TR];
#pragma unroll
        for (int t = 0; t < TR; ++t) {
            m[t] = -INF, l[t] = 0.0f;
#pragma unroll
            for (int v = 0; v < TD; ++v) o[t][v] = 0.0f;
        }
        const int kv_end = causal ? min(seq, i0 + BR) : seq;
        // Register staging only where a mode keeps a tile in flight (else unused).
        typedef FlashCfg<D, 16, 16> Small;
        typename Pick<C::PF != 0, TileT<C, BC, VEC4>, TileT<Small, 16, VEC4>>::type kt;
        typename Pick<C::PF == 1 || C::PF == 2, TileV<C, VEC4>, TileV<Small, VEC4>>::type vt;
        if (C::PF == 1) vt.fetch(vbase, kv_stride, seq, d);
        if (C::PF != 0) kt.fetch(kbase, kv_stride, seq, d);
        for (int j0 = 0; j0 < kv_end; j0 += BC) {
            __syncthreads();  // the previous tile's readers are done with Ks/Vs/Ps
            const float* kn = kbase + (i64)(j0 + BC) * kv_stride;
            const float* vn = vbase + (i64)(j0 + BC) * kv_stride;
            const bool more = j0 + BC < kv_end;
            if (C::PF == 0) {
                TileT<C, BC, VEC4>::copy(Ks, kbase + (i64)j0 * kv_stride, kv_stride, seq - j0, d);
                TileV<C, VEC4>::copy(Vs, vbase + (i64)j0 * kv_stride, kv_stride, seq - j0, d);
            } else if (C::PF == 1) {
                kt.put(Ks);
                vt.put(Vs);
            } else {
                kt.put(Ks);
                vt.fetch(vbase + (i64)j0 * kv_stride, kv_stride, seq - j0, d);  // lands during S
            }
            __syncthreads();
            if (C::PF == 1 && more) {  // in flight while this tile computes
                kt.fetch(kn, kv_stride, seq - j0 - BC, d);
                vt.fetch(vn, kv_stride, seq - j0 - BC, d);
            }

            float s[TR][TC];
#pragma unroll
            for (int t = 0; t < TR; ++t)
#pragma unroll
                for (int u = 0; u < TC; ++u) s[t][u] = 0.0f;
            // k in groups of 4 that share one swizzle: one base address per
            // group, the rest constant offsets.
#pragma unroll(C::US / 4)
            for (int k0 = 0; k0 < D; k0 += 4) {
                const unsigned qb = sQ + 4u * (k0 * BR + ((rg * VR) ^ C::swz(k0, BR)));
                const unsigned kb0 = sK + 4u * (k0 * BC + ((cg * VC) ^ C::swz(k0, BC)));
                outer_accumulate<4, VR, VC>(qb, BR, kb0, BC, s);
            }

            // Scores in base 2, masked; the online softmax update.
            const bool edge = (causal && j0 + BC - 1 > i0) || j0 + BC > seq || mask != nullptr;
#pragma unroll
            for (int t = 0; t < TR; ++t) {
                const int i = i0 + rg * VR + (t % VR) + (t / VR) * 8 * VR;
                float mx = -INF;
#pragma unroll
                for (int u = 0; u < TC; ++u) {
                    float v = s[t][u];
                    if (edge) {
                        const int j = j0 + cg * VC + (u % VC) + (u / VC) * 8 * VC;
                        if (j >= seq || (causal && j > i))
                            v = -INF;
                        else if (mask != nullptr && i < seq)
                            v += mask[(i64)i * seq + j] * LOG2E;
                    }
                    s[t][u] = v;
                    mx = fmaxf(mx, v);
                }
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
                const float mn = fmaxf(m[t], mx);
                const float base = mn == -INF ? 0.0f : mn;  // all masked so far: p = 0, o stays 0
                const float alpha = exp2_approx(m[t] - base);
                float rs = 0.0f;
#pragma unroll
                for (int u = 0; u < TC; ++u) rs += s[t][u] = exp2_approx(s[t][u] - base);
                l[t] = l[t] * alpha + rs;
                m[t] = mn;
                if (!C::SKIP || alpha != 1.0f) {
#pragma unroll
                    for (int v = 0; v < TD; ++v) o[t][v] *= alpha;
                }
            }

            if (C::P_IN_K) __syncthreads();  // every thread is done reading Ks
            if (C::PF == 2) {
                vt.put(Vs);  // Vs was last read before this tile's first barrier
                if (j0 + BC < kv_end) kt.fetch(kbase + (i64)(j0 + BC) * kv_stride, kv_stride, seq - j0 - BC, d);
            }
#pragma unroll
            for (int u = 0; u < TC; ++u) {
                const int j = cg * VC + (u % VC) + (u / VC) * 8 * VC;
#pragma unroll
                for (int g = 0; g < TR / VR; ++g) {
                    float pv[VR];
#pragma unroll
                    for (int e = 0; e < VR; ++e) pv[e] = s[g * VR + e][u];
                    Vec<VR>::store(sP + 4u * (j * BR + ((rg * VR + g * 8 * VR) ^ C::pswz(j))), pv);
                }
            }
            __syncthreads();

            // j in groups of VC that share one P swizzle.
#pragma unroll(C::UP / VC)
            for (int j0 = 0; j0 < BC; j0 += VC) {
                const unsigned pb = sP + 4u * (j0 * BR + ((rg * VR) ^ C::pswz(j0)));
                const unsigned vb0 = sV + 4u * (j0 * D + cg * VD);
                outer_accumulate<VC, VR, VD>(pb, BR, vb0, D, o);
            }
        }

#pragma unroll
        for (int t = 0; t < TR; ++t) {
            float lt = l[t];
            lt += __shfl_xor_sync(0xffffffffu, lt, 1);
            lt += __shfl_xor_sync(0xffffffffu, lt, 2);
            lt += __shfl_xor_sync(0xffffffffu, lt, 4);
            const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
            const int i = i0 + rg * VR + (t % VR) + (t / VR) * 8 * VR;
            if (i >= seq) continue;
            float* orow = O + ((b * seq + i) * heads + h) * d;
#pragma unroll
            for (int g = 0; g < TD / VD; ++g) {
                const int c = cg * VD + g * 8 * VD;
                float ov[VD];
#pragma unroll
                for (int e = 0; e < VD; ++e) ov[e] = o[t][g * VD + e] * inv;
                if (VD == 4 && out4) {
                    if (c < d) store_vec<4>(orow + c, ov);
                } else {
#pragma unroll
                    for (int e = 0; e < VD; ++e)
                        if (c + e < d) orow[c + e] = ov[e];
                }
            }
        }
    }
}

// Tile configurations, measured best on an H100 (D, BR, BC, PF, unrolls, skip).
typedef FlashCfg<32, 64, 32, 2> FlashD32;
typedef FlashCfg<64, 64, 32, 1, 8> FlashD64;
typedef FlashCfg<128, 32, 16, 1> FlashD128;
typedef FlashCfg<256, 16, 16, 0> FlashD256;

// One (head-dim class, load width) per out-of-line function: the all-d kernel
// is eight small functions rather than one huge one (its registers stay with
// each; only the rare scalar-load variants spill).
template <class C, bool VEC4>
__device__ __noinline__ void flash_call(float* smem, const float* Q, const float* K, const float* V, float* O, int batch,
                                        int seq, int heads, int kv_heads, int d, float scale, int causal,
                                        const float* mask) {
    flash_tiles<C, VEC4>(smem, Q, K, V, O, batch, seq, heads, kv_heads, d, scale, causal, mask);
}

template <class C>
__device__ __forceinline__ void flash_pick(float* smem, const float* Q, const float* K, const float* V, float* O,
                                          int batch, int seq, int heads, int kv_heads, int d, float scale, int causal,
                                          const float* mask) {
    if (d % 4 == 0 && aligned16(Q) && aligned16(K) && aligned16(V))
        flash_call<C, true>(smem, Q, K, V, O, batch, seq, heads, kv_heads, d, scale, causal, mask);
    else
        flash_call<C, false>(smem, Q, K, V, O, batch, seq, heads, kv_heads, d, scale, causal, mask);
}

// Launch: block 64, grid ceil(seq / BR) * heads * batch with BR = 64 for d <= 64,
// 32 for d <= 128, 16 for d <= 256 (blocks stride over the work, so any grid
// works); 48 KB of static shared memory. Q, O [batch, seq, heads, d]; K, V
// [batch, seq, kv_heads, d], kv_heads == heads or 1; O = softmax(scale Q K^T
// [+ causal mask] [+ mask]) V with mask NULL or an additive [seq, seq] mask. A
// query whose keys are all masked gets zeros. d <= 256, any alignment; O must
// not alias Q/K/V. For d <= 64 flash_attention_d64_f32 is faster.
extern "C" __global__ void __launch_bounds__(FA_THREADS)
    flash_attention_f32(const float* Q, const float* K, const float* V, float* O, int batch, int seq, int heads,
                        int kv_heads, int d, float scale, int causal, const float* mask) {
    __shared__ __align__(16) float smem[FA_SMEM_FLOATS];
    if (d <= 32)
        flash_pick<FlashD32>(smem, Q, K, V, O, batch, seq, heads, kv_heads, d, scale, causal, mask);
    else if (d <= 64)
        flash_pick<FlashD64>(smem, Q, K, V, O, batch, seq, heads, kv_heads, d, scale, causal, mask);
    else if (d <= 128)
        flash_pick<FlashD128>(smem, Q, K, V, O, batch, seq, heads, kv_heads, d, scale, causal, mask);
    else
        flash_pick<FlashD256>(smem, Q, K, V, O, batch, seq, heads, kv_heads, d, scale, causal, mask);
}

// Launch: as flash_attention_f32 (block 64, grid ceil(seq / 64) * heads * batch),
// same arguments, for d <= 64 with d % 4 == 0 and Q, K, V 16-byte aligned
// (otherwise O is left untouched: use flash_attention_f32). The d <= 64 tiles
// with 16-byte loads compiled alone: ~4% faster than through
// flash_attention_f32 for 32 < d <= 64 (for d <= 32 the latter's 32-wide tiles
// are faster).
extern "C" __global__ void __launch_bounds__(FA_THREADS)
    flash_attention_d64_f32(const float* Q, const float* K, const float* V, float* O, int batch, int seq, int heads,
                            int kv_heads, int d, float scale, int causal, const float* mask) {
    __shared__ __align__(16) float smem[FlashD64::FLOATS];
    if (d <= 64 && d % 4 == 0 && aligned16(Q) && aligned16(K) && aligned16(V))
        flash_tiles<FlashD64, true>(smem, Q, K, V, O, batch, seq, heads, kv_heads, d, scale, causal, mask);
}

// Launch: block 256, grid n1024(batch * new_len * row) (grid-stride).
// Copies k_new, v_new [batch, new_len, row] (row = n_kv_heads * head_dim) into
// rows pos .. pos + new_len - 1 of the caches [batch, max_seq, row]; other
// cache rows are untouched. A thread reads its k and v elements before it
// writes either, so any input may be any cache's very buffer (the ABI allows
// that only when new_len == max_seq, where each element stays in place).
extern "C" __global__ void kv_cache_write_f32(const float* k_new, const float* v_new, float* k_cache, float* v_cache,
                                              int batch, int new_len, int max_seq, i64 row, int pos) {
    const i64 per_batch = (i64)new_len * row, n = (i64)batch * per_batch;
    const i64 t = grid_thread(), stride = grid_threads();
    // dst(e) = e + (b * (max_seq - new_len) + pos) * row for e in batch entry b.
    const i64 gap = ((i64)max_seq - new_len) * row, shift = (i64)pos * row;
    if (row % 4 == 0 && aligned16(k_new) && aligned16(v_new) && aligned16(k_cache) && aligned16(v_cache)) {
        for (i64 e = 4 * t; e < n; e += 4 * stride) {
            const i64 d = e + (e / per_batch) * gap + shift;
            float k[4], v[4];
            load_vec<4>(k_new + e, k);
            load_vec<4>(v_new + e, v);
            store_vec<4>(k_cache + d, k);
            store_vec<4>(v_cache + d, v);
        }
    } else {
        for (i64 e = t; e < n; e += stride) {
            const i64 d = e + (e / per_batch) * gap + shift;
            const float k = k_new[e], v = v_new[e];
            k_cache[d] = k, v_cache[d] = v;
        }
    }
}
