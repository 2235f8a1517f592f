// Attention: the two unfused halves of causal multi-query attention (scores,
// weighted values) and fused flash attention (multi-head or one shared KV head,
// causal and/or an additive mask); the KV-cache write.
#include "attention_decode.cuh"

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
__device__ void flash_tiles(float* smem, const float* Q, const float* K, const float* V, float* O, const FlashShape& sh) {
    const int batch = sh.batch, q_len = sh.q_len, kv_len = sh.kv_len, heads = sh.heads, kv_heads = sh.kv_heads;
    const int d = sh.d, pos0 = sh.pos0, causal = sh.causal;
    const float scale = sh.scale;
    const float* mask = sh.mask;
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
    const i64 q_tiles = (q_len + BR - 1) / BR;
    const i64 bh_count = (i64)batch * heads;
    const i64 work = q_tiles * bh_count;

    for (i64 item = blockIdx.x; item < work; item += gridDim.x) {
        // Heaviest (last) query tiles first: the causal tail is short tiles.
        const i64 qt = q_tiles - 1 - item / bh_count, bh = item % bh_count;
        const i64 b = bh / heads, h = bh % heads, kvh = h / (heads / kv_heads);
        const int i0 = (int)(qt * BR);
        const float* q = Q + ((b * q_len + i0) * heads + h) * d;
        const float* kbase = K + (b * sh.kv_cap * kv_heads + kvh) * d;
        const float* vbase = V + (b * sh.kv_cap * kv_heads + kvh) * d;

        TileT<C, BR, VEC4>::copy(Qs, q, q_stride, q_len - i0, d, scale2);  // scores come out in base 2

        float o[TR][TD], m[TR], l[TR];
#pragma unroll
        for (int t = 0; t < TR; ++t) {
            m[t] = -INF, l[t] = 0.0f;
#pragma unroll
            for (int v = 0; v < TD; ++v) o[t][v] = 0.0f;
        }
        const int kv_end = causal ? min(kv_len, pos0 + i0 + BR) : kv_len;
        // Register staging only where a mode keeps a tile in flight (else unused).
        typedef FlashCfg<D, 16, 16> Small;
        typename Pick<C::PF != 0, TileT<C, BC, VEC4>, TileT<Small, 16, VEC4>>::type kt;
        typename Pick<C::PF == 1 || C::PF == 2, TileV<C, VEC4>, TileV<Small, VEC4>>::type vt;
        if (C::PF == 1) vt.fetch(vbase, kv_stride, kv_len, d);
        if (C::PF != 0) kt.fetch(kbase, kv_stride, kv_len, d);
        for (int j0 = 0; j0 < kv_end; j0 += BC) {
            __syncthreads();  // the previous tile's readers are done with Ks/Vs/Ps
            const float* kn = kbase + (i64)(j0 + BC) * kv_stride;
            const float* vn = vbase + (i64)(j0 + BC) * kv_stride;
            const bool more = j0 + BC < kv_end;
            if (C::PF == 0) {
                TileT<C, BC, VEC4>::copy(Ks, kbase + (i64)j0 * kv_stride, kv_stride, kv_len - j0, d);
                TileV<C, VEC4>::copy(Vs, vbase + (i64)j0 * kv_stride, kv_stride, kv_len - j0, d);
            } else if (C::PF == 1) {
                kt.put(Ks);
                vt.put(Vs);
            } else {
                kt.put(Ks);
                vt.fetch(vbase + (i64)j0 * kv_stride, kv_stride, kv_len - j0, d);  // lands during S
            }
            __syncthreads();
            if (C::PF == 1 && more) {  // in flight while this tile computes
                kt.fetch(kn, kv_stride, kv_len - j0 - BC, d);
                vt.fetch(vn, kv_stride, kv_len - j0 - BC, d);
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
            const bool edge = (causal && j0 + BC - 1 > pos0 + i0) || j0 + BC > kv_len || mask != nullptr;
#pragma unroll
            for (int t = 0; t < TR; ++t) {
                const int i = i0 + rg * VR + (t % VR) + (t / VR) * 8 * VR;
                float mx = -INF;
#pragma unroll
                for (int u = 0; u < TC; ++u) {
                    float v = s[t][u];
                    if (edge) {
                        const int j = j0 + cg * VC + (u % VC) + (u / VC) * 8 * VC;
                        if (j >= kv_len || (causal && j > pos0 + i))
                            v = -INF;
                        else if (mask != nullptr && i < q_len)
                            v += mask[(i64)i * kv_len + j] * LOG2E;
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
                if (j0 + BC < kv_end) kt.fetch(kbase + (i64)(j0 + BC) * kv_stride, kv_stride, kv_len - j0 - BC, d);
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
            if (i >= q_len) continue;
            if (sh.lse != nullptr && cg == 0)  // m is in base 2: ln(2^m l) = (m + log2 l) ln 2
                sh.lse[(b * q_len + i) * heads + h] = lt > 0.0f ? (m[t] + log2f(lt)) * LN2 : -INF;
            float* orow = O + ((b * q_len + i) * heads + h) * d;
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
__device__ __noinline__ void flash_call(float* smem, const float* Q, const float* K, const float* V, float* O,
                                        const FlashShape& sh) {
    flash_tiles<C, VEC4>(smem, Q, K, V, O, sh);
}

template <class C>
__device__ __forceinline__ void flash_pick(float* smem, const float* Q, const float* K, const float* V, float* O,
                                          const FlashShape& sh) {
    if (sh.d % 4 == 0 && aligned16(Q) && aligned16(K) && aligned16(V))
        flash_call<C, true>(smem, Q, K, V, O, sh);
    else
        flash_call<C, false>(smem, Q, K, V, O, sh);
}

__device__ __forceinline__ void flash_any_d(const float* Q, const float* K, const float* V, float* O, const FlashShape& sh) {
    __shared__ __align__(16) float smem[FA_SMEM_FLOATS];
    if (sh.d <= 32)
        flash_pick<FlashD32>(smem, Q, K, V, O, sh);
    else if (sh.d <= 64)
        flash_pick<FlashD64>(smem, Q, K, V, O, sh);
    else if (sh.d <= 128)
        flash_pick<FlashD128>(smem, Q, K, V, O, sh);
    else
        flash_pick<FlashD256>(smem, Q, K, V, O, sh);
}

// Launch: block 64, grid ceil(seq / BR) * heads * batch with BR = 64 for d <= 64,
// 32 for d <= 128, 16 for d <= 256 (blocks stride over the work, so any grid
// works); 48 KB of static shared memory. Q, O [batch, seq, heads, d]; K, V
// [batch, seq, kv_heads, d], kv_heads dividing heads; O = softmax(scale Q K^T
// [+ causal mask] [+ mask]) V with mask NULL or an additive [seq, seq] mask. A
// query whose keys are all masked gets zeros. d <= 256, any alignment; O must
// not alias Q/K/V. For d <= 64 flash_attention_d64_f32 is faster.
extern "C" __global__ void __launch_bounds__(FA_THREADS)
    flash_attention_f32(const float* Q, const float* K, const float* V, float* O, int batch, int seq, int heads,
                        int kv_heads, int d, float scale, int causal, const float* mask) {
    flash_any_d(Q, K, V, O, FlashShape{batch, seq, seq, seq, heads, kv_heads, d, 0, causal, scale, mask, nullptr});
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
    const FlashShape sh{batch, seq, seq, seq, heads, kv_heads, d, 0, causal, scale, mask, nullptr};
    if (d <= 64 && d % 4 == 0 && aligned16(Q) && aligned16(K) && aligned16(V))
        flash_tiles<FlashD64, true>(smem, Q, K, V, O, sh);
}

// Launch: as flash_attention_f32 with grid ceil(q_len / BR) * heads * batch.
// General attention forward (cudann_attention_forward): the shape of
// FlashShape, lse written when not NULL (-inf for a row with no visible key,
// whose output is zeros). d <= 256.
extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attention_forward_f32(const float* Q, const float* K, const float* V, float* O, const float* mask, float* lse,
                          int batch, int q_len, int kv_len, int kv_cap, int heads, int kv_heads, int d, int pos0,
                          int causal, float scale) {
    flash_any_d(Q, K, V, O, FlashShape{batch, q_len, kv_len, kv_cap, heads, kv_heads, d, pos0, causal, scale, mask, lse});
}

// As attention_forward_f32 for 32 < d <= 64 with d % 4 == 0 and Q, K, V
// 16-byte aligned (else nothing is written): the d64 tiles compiled alone,
// as flash_attention_d64_f32.
extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attention_forward_d64_f32(const float* Q, const float* K, const float* V, float* O, const float* mask, float* lse,
                              int batch, int q_len, int kv_len, int kv_cap, int heads, int kv_heads, int d, int pos0,
                              int causal, float scale) {
    __shared__ __align__(16) float smem[FlashD64::FLOATS];
    const FlashShape sh{batch, q_len, kv_len, kv_cap, heads, kv_heads, d, pos0, causal, scale, mask, lse};
    if (d <= 64 && d % 4 == 0 && aligned16(Q) && aligned16(K) && aligned16(V))
        flash_tiles<FlashD64, true>(smem, Q, K, V, O, sh);
}

// ----------------------------------------------------------------------------- decode attention (split KV)
//
// The split kernel is attention_decode.cuh's; here each thread loads its share
// of the next tile into registers while the block works on the current one,
// then stores it (one stage of shared memory). attention_sm80.cu's cp.async
// form takes its place from sm_80 on.

struct RegisterTiles {
    static constexpr int STAGES = 1;
    float4 k[DC_LOADS], v[DC_LOADS];

    __device__ __forceinline__ void fetch(int i, float4&, float4&, const float4* kp, const float4* vp, bool in) {
        const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        k[i] = in ? __ldg(kp) : zero;
        v[i] = in ? __ldg(vp) : zero;
    }
    __device__ __forceinline__ void sent() {}
    template <class Tile> __device__ __forceinline__ void land(Tile& st, int pg, int pc, int G) {
        __syncthreads();  // the previous tile's readers are done
#pragma unroll
        for (int i = 0; i < DC_LOADS; ++i) st.k[pg + i * G][pc] = k[i], st.v[pg + i * G][pc] = v[i];
    }
};

// General attention forward (as attention_forward_f32) for rows <= R and
// d <= D (64, 128 or 256); see decode_split for the launch.
#define DC_KERNEL(R, D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(DC_THREADS, 2) attention_decode_r##R##_d##D##_f32(DC_PARAMS) { \
        __shared__ DecodeSmem<R, D / 4, RegisterTiles::STAGES> s;                                         \
        decode_split<R, D / 4, RegisterTiles>(s, Q, K, V, O, DC_SHAPE, splits, split_len, part);           \
    }
DC_KERNEL(1, 64)
DC_KERNEL(2, 64)
DC_KERNEL(4, 64)
DC_KERNEL(8, 64)
DC_KERNEL(1, 128)
DC_KERNEL(2, 128)
DC_KERNEL(4, 128)
DC_KERNEL(8, 128)
DC_KERNEL(1, 256)
DC_KERNEL(2, 256)
DC_KERNEL(4, 256)
DC_KERNEL(8, 256)

// The splits' max and sum, and this thread's share of the output (column c
// over splits g, g + groups, ...), for one query row whose first split's
// partial is at p0 (splits `stride` float4s apart).
struct Combined {
    float mx, lt;
    float4 acc;
};

// The block's threads stride over the splits for the max and the sum (block
// reductions), each in a fixed order.
struct ByBlock {
    __device__ static Combined weigh(const float4* p0, i64 stride, int splits, int d4, int c, int g, int groups) {
        const int t = threadIdx.x;
        float mx = -INF;
        for (int sp = t; sp < splits; sp += blockDim.x) mx = fmaxf(mx, p0[sp * stride + d4].x);
        mx = block_allreduce(mx, Max(), -INF);
        const float base = mx == -INF ? 0.0f : mx;
        float lt = 0.0f;
        for (int sp = t; sp < splits; sp += blockDim.x) {
            const float4 ml = p0[sp * stride + d4];
            lt = fmaf(ml.y, exp2_approx(ml.x - base), lt);
        }
        lt = block_allreduce(lt, Sum(), 0.0f);
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (g < groups)
            for (int sp = g; sp < splits; sp += groups) acc = axpy4(exp2_approx(p0[sp * stride + d4].x - base), p0[sp * stride + c], acc);
        return {mx, lt, acc};
    }
};

// For few query rows (decoding at small batches: 32 splits for 4 query rows
// of a KV head at batch 1): each warp finds the max and the sum itself from
// lane s's splits s, s + 32, ... (no block reduction), while the thread's
// first DC_OWN partial outputs load in the same round trip. 1x4096 on an
// H100: 2.8 us a combine against ByBlock's 3.3; slower for 8 splits of 512
// rows. ByBlock's very bits for up to 32 splits (one a lane).
#define DC_OWN 8
struct ByWarps {
    __device__ static Combined weigh(const float4* p0, i64 stride, int splits, int d4, int c, int g, int groups) {
        const int lane = threadIdx.x & 31;
        float4 o[DC_OWN];
        float om[DC_OWN];
#pragma unroll
        for (int i = 0; i < DC_OWN; ++i) {
            const int sp = g + i * groups;
            if (g < groups && sp < splits) o[i] = p0[sp * stride + c], om[i] = p0[sp * stride + d4].x;
        }
        const float4 first = lane < splits ? p0[lane * stride + d4] : make_float4(-INF, 0.0f, 0.0f, 0.0f);
        float mx = first.x;
        for (int sp = lane + 32; sp < splits; sp += 32) mx = fmaxf(mx, p0[sp * stride + d4].x);
        mx = warp_allreduce(mx, Max());
        const float base = mx == -INF ? 0.0f : mx;
        float lt = lane < splits ? first.y * exp2_approx(first.x - base) : 0.0f;
        for (int sp = lane + 32; sp < splits; sp += 32) {
            const float4 ml = p0[sp * stride + d4];
            lt = fmaf(ml.y, exp2_approx(ml.x - base), lt);
        }
        lt = warp_allreduce(lt, Sum());
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (g < groups) {
#pragma unroll
            for (int i = 0; i < DC_OWN; ++i)
                if (g + i * groups < splits) acc = axpy4(exp2_approx(om[i] - base), o[i], acc);
            for (int sp = g + DC_OWN * groups; sp < splits; sp += groups)
                acc = axpy4(exp2_approx(p0[sp * stride + d4].x - base), p0[sp * stride + c], acc);
        }
        return {mx, lt, acc};
    }
};

// Launch: block 256, grid batch * kv_heads * rows (blocks stride), rows =
// q_len * heads / kv_heads. Combines the splits' partials of
// attention_decode_r<R>_* (rpad = R) into O and lse, a block per query row,
// weighed the Way's way; the groups of splits are summed in a fixed order.
template <class Way>
__device__ void decode_combine(const float4* part, float* O, float* lse, int batch, int q_len, int heads, int kv_heads,
                               int d, int splits, int rpad) {
    __shared__ float4 group_sum[256];
    const FlashShape sh{batch, q_len, 0, 0, heads, kv_heads, d, 0, 0, 0.0f, nullptr, lse};
    const int d4 = d / 4, rows = q_len * (heads / kv_heads), groups = blockDim.x / d4;
    const int t = threadIdx.x, c = t % d4, g = t / d4;
    const i64 stride = (i64)rpad * (d4 + 1);  // float4s between splits
    for (i64 item = blockIdx.x; item < (i64)batch * kv_heads * rows; item += gridDim.x) {
        const int r = (int)(item % rows);
        const i64 bk = item / rows;  // b * kv_heads + kvh
        const Combined w = Way::weigh(part + (bk * splits * rpad + r) * (d4 + 1), stride, splits, d4, c, g, groups);
        float4 acc = w.acc;
        group_sum[t] = acc;
        __syncthreads();
        if (t < d4) {
            for (int k = 1; k < groups; ++k) acc = add4(acc, group_sum[k * d4 + c]);
            decode_finish(sh, O, decode_row(sh, bk / kv_heads, (int)(bk % kv_heads), r), c, acc, w.mx, w.lt);
        }
        __syncthreads();  // group_sum is read before the next item overwrites it
    }
}

#define DC_COMBINE(NAME, WAY)                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        NAME(const float4* part, float* O, float* lse, int batch, int q_len, int heads, int kv_heads, int d,      \
             int splits, int rpad) {                                                                              \
        decode_combine<WAY>(part, O, lse, batch, q_len, heads, kv_heads, d, splits, rpad);                        \
    }
DC_COMBINE(attention_decode_combine_f32, ByBlock)
DC_COMBINE(attention_decode_combine_many_f32, ByWarps)

// ----------------------------------------------------------------------------- general attention backward
//
// Two launches, deterministic: every output element is summed by one thread
// in a fixed order (no atomics). With P = exp(S - lse) and Dr_i = dO_i . O_i,
// dS = P (dO V^T - Dr): attention_backward_dkdv_f32 takes one block per
// (batch, KV head, tile of BT keys) and sums dV = P^T dO and dK = scale dS^T Q
// over the query heads of its group and every query tile that sees the keys;
// attention_backward_dq_f32 takes one block per (batch, head, tile of BT
// queries) and sums dQ = scale dS K over the key tiles it sees. Both recompute
// S and Dr from the forward's inputs, with the same code, so no scratch is
// needed. Tiles live in shared memory with rows padded to D + 1 floats (the
// dot products read them column-wise conflict-free); BT = 32 for D <= 64 and
// 2048 / D above (under 48 KB), so each of the 256 threads owns T * D / 256
// elements of its block's output tile.

#define AB_THREADS 256

template <int D> struct BwdTiles {
    static constexpr int T = D <= 64 ? 32 : 2048 / D;  // keys/queries a tile
    float q[T][D + 1], dout[T][D + 1], k[T][D + 1], v[T][D + 1];
    float p[T][T + 1], ds[T][T + 1];
    float lse[T], dr[T];
};

// Rows r0.. (valid below `valid`) of a [rows, d] matrix with row stride
// `stride` into tile[T][D + 1]; zeros outside.
template <int D, int T>
__device__ __forceinline__ void ab_load(float (*tile)[D + 1], const float* g, i64 stride, int valid, int d) {
    for (int e = threadIdx.x; e < T * D; e += AB_THREADS) {
        const int r = e / D, c = e % D;
        tile[r][c] = r < valid && c < d ? g[r * stride + c] : 0.0f;
    }
}

// The query tile i0.. of head h: Q and dO rows, lse, and Dr = dO . O (one warp
// a row, a fixed reduction order: the dkdv and dq kernels get the same bits).
template <int D>
__device__ void ab_load_queries(BwdTiles<D>& t, const float* dO, const float* Q, const float* O, const float* lse,
                                i64 b, int h, int i0, int q_len, int heads, int d) {
    constexpr int T = BwdTiles<D>::T;
    const i64 row0 = (b * q_len + i0) * heads + h, stride = (i64)heads * d;
    const int valid = q_len - i0;
    ab_load<D, T>(t.q, Q + row0 * d, stride, valid, d);
    ab_load<D, T>(t.dout, dO + row0 * d, stride, valid, d);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int r = warp; r < T; r += AB_THREADS / 32) {
        float acc = 0.0f;
        if (r < valid)
            for (int c = lane; c < d; c += 32) acc = fmaf(dO[(row0 + (i64)r * heads) * d + c], O[(row0 + (i64)r * heads) * d + c], acc);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) {
            t.dr[r] = acc;
            t.lse[r] = r < valid ? lse[row0 + (i64)r * heads] : -INF;
        }
    }
}

// P and dS of the loaded tiles (queries i0.., keys j0..) into t.p, t.ds. Each
// thread computes an R x R patch of entries (R = 2 for T = 32: four scores and
// four dP share each row's and column's loads); for T = 8 a quarter of the
// threads work.
template <int D>
__device__ void ab_scores(BwdTiles<D>& t, const FlashShape& sh, int i0, int j0) {
    constexpr int T = BwdTiles<D>::T, R = T == 32 ? 2 : 1, W = T / R;  // W x W patches
    const int tr = threadIdx.x / W, tc = threadIdx.x % W;
    if (tr >= W) return;
    float s[R][R] = {}, dp[R][R] = {};
#pragma unroll 4
    for (int x = 0; x < D; ++x) {
        float q[R], o[R], k[R], v[R];
#pragma unroll
        for (int a = 0; a < R; ++a) {
            q[a] = t.q[tr * R + a][x], o[a] = t.dout[tr * R + a][x];
            k[a] = t.k[tc * R + a][x], v[a] = t.v[tc * R + a][x];
        }
#pragma unroll
        for (int a = 0; a < R; ++a)
#pragma unroll
            for (int b = 0; b < R; ++b) {
                s[a][b] = fmaf(q[a], k[b], s[a][b]);
                dp[a][b] = fmaf(o[a], v[b], dp[a][b]);
            }
    }
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
        for (int b = 0; b < R; ++b) {
            const int r = tr * R + a, c = tc * R + b, i = i0 + r, j = j0 + c;
            float p = 0.0f, ds = 0.0f;
            if (i < sh.q_len && j < sh.kv_len && !(sh.causal && j > sh.pos0 + i) && t.lse[r] != -INF) {
                float sc = s[a][b] * sh.scale;
                if (sh.mask != nullptr) sc += sh.mask[(i64)i * sh.kv_len + j];
                p = expf(sc - t.lse[r]);
                ds = p * (dp[a][b] - t.dr[r]);
            }
            t.p[r][c] = p;
            t.ds[r][c] = ds;
        }
}

// Launch: block 256, grid batch * kv_heads * ceil(kv_len / T) (blocks
// stride). D: 32, 64, 128 or 256 (d <= D, zero-padded).
template <int D>
__device__ void attention_dkdv(BwdTiles<D>& t, const float* dO, const float* Q, const float* K, const float* V,
                               const float* O, const float* lse, float* dK, float* dV, const FlashShape& sh) {
    constexpr int T = BwdTiles<D>::T, E = T * D / AB_THREADS;
    const int d = sh.d, group = sh.heads / sh.kv_heads;
    const i64 kv_stride = (i64)sh.kv_heads * d, k_tiles = (sh.kv_len + T - 1) / T;
    for (i64 item = blockIdx.x; item < (i64)sh.batch * sh.kv_heads * k_tiles; item += gridDim.x) {
        const i64 b = item / (sh.kv_heads * k_tiles);
        const int g = (int)(item / k_tiles % sh.kv_heads), j0 = (int)(item % k_tiles) * T;
        const i64 kv0 = ((b * sh.kv_len + j0) * sh.kv_heads + g) * d;
        __syncthreads();  // the previous item's readers are done
        ab_load<D, T>(t.k, K + kv0, kv_stride, sh.kv_len - j0, d);
        ab_load<D, T>(t.v, V + kv0, kv_stride, sh.kv_len - j0, d);
        float dk[E], dv[E];
#pragma unroll
        for (int u = 0; u < E; ++u) dk[u] = dv[u] = 0.0f;
        // Causal: queries before j0 - pos0 see none of these keys.
        const int first = sh.causal ? max(0, j0 - sh.pos0) / T * T : 0;
        for (int h = g * group; h < (g + 1) * group; ++h) {
            for (int i0 = first; i0 < sh.q_len; i0 += T) {
                __syncthreads();
                ab_load_queries<D>(t, dO, Q, O, lse, b, h, i0, sh.q_len, sh.heads, d);
                __syncthreads();
                ab_scores<D>(t, sh, i0, j0);
                __syncthreads();
                // This thread's elements share column x; key rows c0 + u * (256 / D).
                const int x = threadIdx.x % D, c0 = threadIdx.x / D;
#pragma unroll 4
                for (int r = 0; r < T; ++r) {
                    const float o = t.dout[r][x], q = t.q[r][x];
#pragma unroll
                    for (int u = 0; u < E; ++u) {
                        const int c = c0 + u * (AB_THREADS / D);
                        dv[u] = fmaf(t.p[r][c], o, dv[u]);
                        dk[u] = fmaf(t.ds[r][c], q, dk[u]);
                    }
                }
            }
        }
#pragma unroll
        for (int u = 0; u < E; ++u) {
            const int e = threadIdx.x + u * AB_THREADS, c = e / D, x = e % D;
            if (j0 + c < sh.kv_len && x < d) {
                dK[kv0 + c * kv_stride + x] = dk[u] * sh.scale;
                dV[kv0 + c * kv_stride + x] = dv[u];
            }
        }
    }
}

// Launch: block 256, grid batch * heads * ceil(q_len / T) (blocks stride).
template <int D>
__device__ void attention_dq(BwdTiles<D>& t, const float* dO, const float* Q, const float* K, const float* V,
                             const float* O, const float* lse, float* dQ, const FlashShape& sh) {
    constexpr int T = BwdTiles<D>::T, E = T * D / AB_THREADS;
    const int d = sh.d;
    const i64 kv_stride = (i64)sh.kv_heads * d, q_tiles = (sh.q_len + T - 1) / T;
    for (i64 item = blockIdx.x; item < (i64)sh.batch * sh.heads * q_tiles; item += gridDim.x) {
        const i64 b = item / (sh.heads * q_tiles);
        const int h = (int)(item / q_tiles % sh.heads), i0 = (int)(item % q_tiles) * T;
        const int g = h / (sh.heads / sh.kv_heads);
        __syncthreads();
        ab_load_queries<D>(t, dO, Q, O, lse, b, h, i0, sh.q_len, sh.heads, d);
        float dq[E];
#pragma unroll
        for (int u = 0; u < E; ++u) dq[u] = 0.0f;
        const int kv_end = sh.causal ? min(sh.kv_len, sh.pos0 + i0 + T) : sh.kv_len;
        for (int j0 = 0; j0 < kv_end; j0 += T) {
            const i64 kv0 = ((b * sh.kv_len + j0) * sh.kv_heads + g) * d;
            __syncthreads();
            ab_load<D, T>(t.k, K + kv0, kv_stride, sh.kv_len - j0, d);
            ab_load<D, T>(t.v, V + kv0, kv_stride, sh.kv_len - j0, d);
            __syncthreads();
            ab_scores<D>(t, sh, i0, j0);
            __syncthreads();
            // This thread's elements share column x; query rows r0 + u * (256 / D).
            const int x = threadIdx.x % D, r0 = threadIdx.x / D;
#pragma unroll 4
            for (int c = 0; c < T; ++c) {
                const float k = t.k[c][x];
#pragma unroll
                for (int u = 0; u < E; ++u) dq[u] = fmaf(t.ds[r0 + u * (AB_THREADS / D)][c], k, dq[u]);
            }
        }
        const i64 row0 = (b * sh.q_len + i0) * sh.heads + h;
#pragma unroll
        for (int u = 0; u < E; ++u) {
            const int e = threadIdx.x + u * AB_THREADS, r = e / D, x = e % D;
            if (i0 + r < sh.q_len && x < d) dQ[(row0 + (i64)r * sh.heads) * d + x] = dq[u] * sh.scale;
        }
    }
}

// General attention backward (cudann_attention_backward): K, V, dK, dV
// [batch, kv_len, kv_heads, d] (kv_cap = kv_len), the rest as
// attention_forward_f32; lse is the forward's. Outputs must not alias inputs.
#define AB_KERNEL(NAME, D)                                                                                              \
    extern "C" __global__ void __launch_bounds__(AB_THREADS)                                                            \
        NAME(const float* dO, const float* Q, const float* K, const float* V, const float* mask, const float* O,       \
             const float* lse, float* dQ, float* dK, float* dV, int batch, int q_len, int kv_len, int heads,          \
             int kv_heads, int d, int pos0, int causal, float scale, int want_dq) {                                   \
        __shared__ BwdTiles<D> t;                                                                                      \
        const FlashShape sh{batch, q_len, kv_len, kv_len, heads, kv_heads, d, pos0, causal, scale, mask, nullptr};    \
        if (want_dq)                                                                                                   \
            attention_dq<D>(t, dO, Q, K, V, O, lse, dQ, sh);                                                           \
        else                                                                                                           \
            attention_dkdv<D>(t, dO, Q, K, V, O, lse, dK, dV, sh);                                                     \
    }
// One kernel per head-dim class (D), each launched twice: want_dq = 0 for dK
// and dV (grid over key tiles), 1 for dQ (grid over query tiles).
AB_KERNEL(attention_backward_d32_f32, 32)
AB_KERNEL(attention_backward_d64_f32, 64)
AB_KERNEL(attention_backward_d128_f32, 128)
AB_KERNEL(attention_backward_d256_f32, 256)

// ----------------------------------------------------------------------------- fused backward, d <= 128
//
// The fast path of the backward for d <= 128 (d % 4 == 0, 16-byte aligned
// tensors), after attention_backward_dr_f32 has written Dr = rowsum(dO o O).
// One launch, as FlashAttention-2: a block per (batch, KV head, tile of 64
// keys) keeps dK and dV of its keys in registers while it walks the query
// tiles (of each head of the group) that see them. Per query tile, each
// thread computes 4 x 4 entries of S and dP, writes P and dS transposed to
// shared memory, then adds to its share of dV = P^T dO and dK = dS^T Q and
// computes this key tile's share of dQ = dS K. Five products per tile pair
// where the two-launch form above recomputes S and dP for dQ (seven).
//
// dQ is summed across key tiles in a fixed order without atomics: for each
// query tile the key tiles add their shares from the last one visible (which
// stores) down to tile 0, each waiting on a counter in `sem` (zeroed by the
// caller) until the tile above it has added. Blocks run key tiles of a
// (batch, KV head) in descending order, so a block waits only on one launched
// before it; and when causal, tile j + 1 reaches each query tile one step
// before tile j does, so the waits are short. Same bits run after run.

#define FB_T 64  // keys and queries a tile
#define FB_THREADS 256

// Launch: block 256, grid over rows / 8 (blocks stride). Dr[r] = dO[r] . O[r]
// for the rows [batch * q_len * heads] of d floats, one warp a row.
extern "C" __global__ void attention_backward_dr_f32(const float* dO, const float* O, float* dr, i64 rows, int d) {
    const int lane = threadIdx.x & 31;
    for (i64 r = grid_thread() >> 5; r < rows; r += grid_threads() >> 5) {
        float acc = 0.0f;
        for (int c = lane; c < d; c += 32) acc = fmaf(dO[r * d + c], O[r * d + c], acc);
        acc = warp_allreduce(acc, Sum());
        if (lane == 0) dr[r] = acc;
    }
}

// Shared memory (floats): K, V, Q, dO tiles [64][D] with rows padded to D + 4
// (16-byte rows; 8 consecutive rows cover the 32 banks), P and dS transposed
// [key][query] padded likewise, then lse and Dr of the query tile. In the dV,
// dK and dQ products a thread owns float4 column cg of RPT rows.
template <int D> struct FusedBwd {
    static constexpr int LD = D + 4, LP = FB_T + 4;
    static constexpr int CW = D / 4, RG = FB_THREADS / CW, RPT = FB_T / RG;
    static constexpr int K = 0, V = K + FB_T * LD, Q = V + FB_T * LD, DO = Q + FB_T * LD, PT = DO + FB_T * LD,
                         DST = PT + FB_T * LP, LSE = DST + FB_T * LP, DR = LSE + FB_T, FLOATS = DR + FB_T;
};

// Rows [0, 64) (valid below `valid`) of a [rows][d] matrix at g, row stride
// `stride`, into tile[64][D + 4]; zeros outside. d % 4 == 0, g 16-byte aligned.
template <int D> __device__ __forceinline__ void fb_load(float* tile, const float* g, i64 stride, int valid, int d) {
    constexpr int CW = D / 4;
    for (int e = threadIdx.x; e < FB_T * CW; e += FB_THREADS) {
        const int r = e / CW, c = e % CW * 4;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < valid && c < d) v = __ldg(reinterpret_cast<const float4*>(g + r * stride + c));
        Vec<4>::store(smem_addr(tile + r * (D + 4) + c), &v.x);
    }
}

// acc[a][b] += A[row a] . B[row b] over D columns of two shared tiles, rows
// tr + 16 a of A and tc + 16 b of B.
template <int D>
__device__ __forceinline__ void fb_dots(float (&acc)[4][4], const float* A, const float* B, int tr, int tc) {
    constexpr int LD = D + 4;
#pragma unroll 2
    for (int x = 0; x < D; x += 4) {
        float a4[4][4], b4[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a) Vec<4>::load(smem_addr(A + (tr + 16 * a) * LD + x), a4[a]);
#pragma unroll
        for (int b = 0; b < 4; ++b) Vec<4>::load(smem_addr(B + (tc + 16 * b) * LD + x), b4[b]);
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[a][b] = fmaf(a4[a][e], b4[b][e], acc[a][b]);
    }
}

// S = Q K^T and dP = dO V^T of the loaded tiles (queries i0 + tr + 16 a, keys
// j0 + tc + 16 b); P = exp(scale S [+ mask] - lse) and dS = P (dP - Dr), zero
// where masked, into Pt[key][query] and dSt[key][query].
template <int D> __device__ __forceinline__ void fb_scores(float* sm, const FlashShape& sh, int i0, int j0) {
    using L = FusedBwd<D>;
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    float s[4][4] = {}, dp[4][4] = {};
    fb_dots<D>(s, sm + L::Q, sm + L::K, tr, tc);
    fb_dots<D>(dp, sm + L::DO, sm + L::V, tr, tc);
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const int r = tr + 16 * a, i = i0 + r;
        const float l = sm[L::LSE + r], dr = sm[L::DR + r];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const int c = tc + 16 * b, j = j0 + c;
            float p = 0.0f, ds = 0.0f;
            if (l != -INF && j < sh.kv_len && !(sh.causal && j > sh.pos0 + i)) {
                float sc = s[a][b] * sh.scale;
                if (sh.mask != nullptr) sc += sh.mask[(i64)i * sh.kv_len + j];
                p = expf(sc - l);
                ds = p * (dp[a][b] - dr);
            }
            sm[L::PT + c * L::LP + r] = p;
            sm[L::DST + c * L::LP + r] = ds;
        }
    }
}

// acc[a][c] += sum over the 64 queries q of W[key rg + RG a][q] X[q][4 cg + c]:
// dV += P^T dO (W = Pt, X = dO) and dK += dS^T Q (W = dSt, X = Q).
template <int D>
__device__ __forceinline__ void fb_keys_product(float (&acc)[FusedBwd<D>::RPT][4], const float* W, const float* X, int cg, int rg) {
    using L = FusedBwd<D>;
#pragma unroll 2
    for (int q = 0; q < FB_T; q += 4) {
        float w[L::RPT][4], x[4][4];
#pragma unroll
        for (int a = 0; a < L::RPT; ++a) Vec<4>::load(smem_addr(W + (rg + L::RG * a) * L::LP + q), w[a]);
#pragma unroll
        for (int e = 0; e < 4; ++e) Vec<4>::load(smem_addr(X + (q + e) * L::LD + 4 * cg), x[e]);
#pragma unroll
        for (int a = 0; a < L::RPT; ++a)
#pragma unroll
            for (int e = 0; e < 4; ++e)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[a][c] = fmaf(w[a][e], x[e][c], acc[a][c]);
    }
}

// This key tile's share of dQ, scale dS K for queries rg RPT + a and columns
// 4 cg.., added to dQ (rows from `row0`, valid below `valid`) in the order
// described above: `turn` tiles have added before this one (0: it stores).
template <int D>
__device__ __forceinline__ void fb_add_dq(const float* sm, float* dQ, int* counter, i64 row0, int valid, int turn,
                                          const FlashShape& sh, int cg, int rg) {
    using L = FusedBwd<D>;
    constexpr int VW = L::RPT < 4 ? L::RPT : 4;  // width of the dS loads
    float dq[L::RPT][4] = {};
#pragma unroll 4
    for (int j = 0; j < FB_T; ++j) {
        float w[L::RPT], k[4];
#pragma unroll
        for (int a = 0; a < L::RPT; a += VW) Vec<VW>::load(smem_addr(sm + L::DST + j * L::LP + rg * L::RPT + a), w + a);
        Vec<4>::load(smem_addr(sm + L::K + j * L::LD + 4 * cg), k);
#pragma unroll
        for (int a = 0; a < L::RPT; ++a)
#pragma unroll
            for (int c = 0; c < 4; ++c) dq[a][c] = fmaf(w[a], k[c], dq[a][c]);
    }
    dq_wait_turn(counter, turn);
#pragma unroll
    for (int a = 0; a < L::RPT; ++a) {
        const int r = rg * L::RPT + a;
        if (r >= valid || 4 * cg >= sh.d) continue;
        float4* p = reinterpret_cast<float4*>(dQ + (row0 + (i64)r * sh.heads) * sh.d + 4 * cg);
        float4 v = make_float4(dq[a][0] * sh.scale, dq[a][1] * sh.scale, dq[a][2] * sh.scale, dq[a][3] * sh.scale);
        if (turn > 0) {
            const float4 old = __ldcg(p);  // L2: the previous tile's block wrote it
            v = make_float4(old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w);
        }
        __stcg(p, v);
    }
    dq_pass_turn(counter, turn);
}

// Launch: block 256, FusedBwd<D>::FLOATS * 4 bytes of dynamic shared memory,
// grid exactly batch * kv_heads * ceil(kv_len / 64) (no striding: blocks wait
// on earlier blocks). D = 32, 64 or 128; d <= D, d % 4 == 0.
template <int D>
__device__ void attention_backward_fused(float* sm, const float* dO, const float* Q, const float* K, const float* V,
                                         const float* lse, const float* Dr, float* dQ, float* dK, float* dV, int* sem,
                                         const FlashShape& sh) {
    using L = FusedBwd<D>;
    const int d = sh.d;
    const KeyTile<FB_T> kt(sh);
    const int j0 = kt.j0;
    const i64 kv_stride = (i64)sh.kv_heads * d, q_stride = (i64)sh.heads * d, kv0 = kt.kv0;
    fb_load<D>(sm + L::K, K + kv0, kv_stride, sh.kv_len - j0, d);
    fb_load<D>(sm + L::V, V + kv0, kv_stride, sh.kv_len - j0, d);
    const int cg = threadIdx.x % L::CW, rg = threadIdx.x / L::CW;
    float dk[L::RPT][4] = {}, dv[L::RPT][4] = {};
    kt.for_each_query_tile(sh, sem, [&](int i0, int valid, i64 row0, int turn, int* counter) {
        __syncthreads();  // the previous tile's readers are done
        fb_load<D>(sm + L::Q, Q + row0 * d, q_stride, valid, d);
        fb_load<D>(sm + L::DO, dO + row0 * d, q_stride, valid, d);
        if (threadIdx.x < FB_T) {
            const int r = threadIdx.x;
            sm[L::LSE + r] = r < valid ? lse[row0 + (i64)r * sh.heads] : -INF;
            sm[L::DR + r] = r < valid ? Dr[row0 + (i64)r * sh.heads] : 0.0f;
        }
        __syncthreads();
        fb_scores<D>(sm, sh, i0, j0);
        __syncthreads();
        fb_keys_product<D>(dv, sm + L::PT, sm + L::DO, cg, rg);
        fb_keys_product<D>(dk, sm + L::DST, sm + L::Q, cg, rg);
        fb_add_dq<D>(sm, dQ, counter, row0, valid, turn, sh, cg, rg);
    });
#pragma unroll
    for (int a = 0; a < L::RPT; ++a) {
        const int c = rg + L::RG * a;
        if (j0 + c >= sh.kv_len || 4 * cg >= d) continue;
        const i64 at = kv0 + c * kv_stride + 4 * cg;
        *reinterpret_cast<float4*>(dK + at) = make_float4(dk[a][0] * sh.scale, dk[a][1] * sh.scale, dk[a][2] * sh.scale, dk[a][3] * sh.scale);
        *reinterpret_cast<float4*>(dV + at) = make_float4(dv[a][0], dv[a][1], dv[a][2], dv[a][3]);
    }
}

// The fused backward (cudann_attention_backward) for d <= D: arguments as
// attention_backward_*_f32, plus Dr from attention_backward_dr_f32 and `sem`,
// batch * heads * ceil(q_len / 64) zeroed ints.
// MINB: blocks an SM must hold (2 for D <= 64; 1 for D = 128, whose dK and dV
// take 64 registers a thread and whose tiles take 167 KB).
#define FB_KERNEL(NAME, D, MINB)                                                                                        \
    extern "C" __global__ void __launch_bounds__(FB_THREADS, MINB)                                                      \
        NAME(const float* dO, const float* Q, const float* K, const float* V, const float* mask, const float* lse,      \
             const float* dr, float* dQ, float* dK, float* dV, int* sem, int batch, int q_len, int kv_len, int heads,   \
             int kv_heads, int d, int pos0, int causal, float scale) {                                                \
        extern __shared__ float4 fb_smem[];                                                                            \
        const FlashShape sh{batch, q_len, kv_len, kv_len, heads, kv_heads, d, pos0, causal, scale, mask, nullptr};    \
        attention_backward_fused<D>(reinterpret_cast<float*>(fb_smem), dO, Q, K, V, lse, dr, dQ, dK, dV, sem, sh);    \
    }
FB_KERNEL(attention_backward_fused_d32_f32, 32, 2)
FB_KERNEL(attention_backward_fused_d64_f32, 64, 2)
FB_KERNEL(attention_backward_fused_d128_f32, 128, 1)

// Launch: block 256, grid n1024(batch * new_len * row) (grid-stride).
// Copies k_new, v_new [batch, new_len, row] (row = n_kv_heads * head_dim
// elements of T) into rows pos .. pos + new_len - 1 of the caches [batch,
// max_seq, row]; other cache rows are untouched. A thread reads its k and v
// elements before it writes either, so any input may be any cache's very
// buffer (the ABI allows that only when new_len == max_seq, where each element
// stays in place). 16 bytes at a time where row and the pointers allow.
template <class T>
__device__ void kv_cache_rows(const T* k_new, const T* v_new, T* k_cache, T* v_cache, int batch, int new_len, int max_seq,
                              i64 row, int pos) {
    constexpr int V = 16 / sizeof(T);
    const i64 per_batch = (i64)new_len * row, n = (i64)batch * per_batch;
    const i64 t = grid_thread(), stride = grid_threads();
    // dst(e) = e + (b * (max_seq - new_len) + pos) * row for e in batch entry b.
    const i64 gap = ((i64)max_seq - new_len) * row, shift = (i64)pos * row;
    if (row % V == 0 && aligned16(k_new) && aligned16(v_new) && aligned16(k_cache) && aligned16(v_cache)) {
        for (i64 e = V * t; e < n; e += V * stride) {
            const i64 d = e + (e / per_batch) * gap + shift;
            const uint4 k = *reinterpret_cast<const uint4*>(k_new + e), v = *reinterpret_cast<const uint4*>(v_new + e);
            *reinterpret_cast<uint4*>(k_cache + d) = k;
            *reinterpret_cast<uint4*>(v_cache + d) = v;
        }
    } else {
        for (i64 e = t; e < n; e += stride) {
            const i64 d = e + (e / per_batch) * gap + shift;
            const T k = k_new[e], v = v_new[e];
            k_cache[d] = k, v_cache[d] = v;
        }
    }
}

extern "C" __global__ void kv_cache_write_f32(const float* k_new, const float* v_new, float* k_cache, float* v_cache,
                                              int batch, int new_len, int max_seq, i64 row, int pos) {
    kv_cache_rows<float>(k_new, v_new, k_cache, v_cache, batch, new_len, max_seq, row, pos);
}

// As kv_cache_write_f32 for 16-bit elements (float16 or bfloat16, bit for bit).
extern "C" __global__ void kv_cache_write_h16(const unsigned short* k_new, const unsigned short* v_new,
                                              unsigned short* k_cache, unsigned short* v_cache, int batch, int new_len,
                                              int max_seq, i64 row, int pos) {
    kv_cache_rows<unsigned short>(k_new, v_new, k_cache, v_cache, batch, new_len, max_seq, row, pos);
}
