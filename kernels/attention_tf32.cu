// gen-ptx: compute_80
// Attention on tensor cores in TF32 (mma.sync m16n8k8, sm_80 and later), taken
// only when the caller sets CUDANN_ALLOW_TF32=1: the operands of the products
// are rounded to TF32 (10-bit mantissa, relative error ~1e-3 in the results);
// softmax, its sums and the accumulators stay fp32. Flash attention for
// head_dim 64; the fused backward for head_dim <= 64.
//
// ----------------------------------------------------------------------------- flash attention
//
// Each warp owns 16 query rows; the block (4 warps, 64 rows) walks 64-key tiles
// of K and V through shared memory with an online softmax, as the fp32 kernels
// in attention.cu do. Fragment layouts (PTX ISA, m16n8k8 .tf32): with g = lane
// / 4 and t = lane % 4, A holds (g, t) (g + 8, t) (g, t + 4) (g + 8, t + 4), B
// holds (k = t, n = g) (k = t + 4, n = g), C holds (g, 2t) (g, 2t + 1) (g + 8,
// 2t) (g + 8, 2t + 1). P is reused from S's C fragments as the A operand of P V
// by numbering the keys of each 8-key step 2t -> t, 2t + 1 -> t + 4; the V
// fragments are read in the same order, so the sum over keys is unchanged.
#include "attention.cuh"

#define TF_THREADS 128
#define TF_ROWS 64     // query rows per block, 16 per warp
#define TF_KEYS 64     // keys per tile
#define TF_D 64        // head_dim
#define TF_STRIDE 68   // shared row stride in floats: fragment reads hit 32 banks

__device__ __forceinline__ unsigned to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// c += a b for one 16x8x8 TF32 product.
__device__ __forceinline__ void mma_tf32(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                         unsigned b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Shared loads and stores as inline PTX: NVRTC's own choices for them are not
// reproducible run to run (see attention.cu), which gen-ptx.py --check needs.
__device__ __forceinline__ unsigned lds(const float* p) {
    unsigned v;
    asm("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"((unsigned)__cvta_generic_to_shared(p)) : "memory");
    return v;
}
__device__ __forceinline__ void sts2(float* p, unsigned a, unsigned b) {
    asm volatile("st.shared.v2.b32 [%0], {%1, %2};" ::"r"((unsigned)__cvta_generic_to_shared(p)), "r"(a), "r"(b) : "memory");
}
__device__ __forceinline__ void sts4(float* p, unsigned a, unsigned b, unsigned c, unsigned d) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"((unsigned)__cvta_generic_to_shared(p)), "r"(a), "r"(b),
                 "r"(c), "r"(d)
                 : "memory");
}

// Rows [k0, k0 + 64) of a [seq, stride] K or V slice into shared memory as
// TF32 bit patterns (zeros past seq).
__device__ __forceinline__ void load_tile(float* tile, const float* src, i64 stride, int k0, int seq) {
    for (int e = threadIdx.x; e < TF_KEYS * TF_D / 4; e += TF_THREADS) {
        const int r = e / (TF_D / 4), c = e % (TF_D / 4) * 4;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (k0 + r < seq) v = __ldg(reinterpret_cast<const float4*>(src + (k0 + r) * stride + c));
        sts4(tile + r * TF_STRIDE + c, to_tf32(v.x), to_tf32(v.y), to_tf32(v.z), to_tf32(v.w));
    }
}

// Launch: block 128, any grid (blocks stride over the work: ceil(seq / 64) *
// heads * batch query tiles, the longest causal ones first); 34 KB of static
// shared memory. Arguments as flash_attention_f32 (attention.cu) with d == 64
// and Q, K, V, O 16-byte aligned (other d: O is left untouched).
extern "C" __global__ void __launch_bounds__(TF_THREADS)
    flash_attention_tf32_d64(const float* Q, const float* K, const float* V, float* O, int batch, int seq, int heads,
                             int kv_heads, int d, float scale, int causal, const float* mask) {
    __shared__ __align__(16) float Ks[TF_KEYS * TF_STRIDE];
    __shared__ __align__(16) float Vs[TF_KEYS * TF_STRIDE];
    if (d != TF_D) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int qtiles = (seq + TF_ROWS - 1) / TF_ROWS;
    const i64 pairs = (i64)heads * batch, items = pairs * qtiles;
    const i64 qstride = (i64)heads * TF_D, kstride = (i64)kv_heads * TF_D;
    const float qscale = scale * LOG2E;  // scores in log2 units: exp2 below
    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        const int qt = qtiles - 1 - (int)(item / pairs);
        const int h = (int)(item % pairs % heads);
        const i64 b = item % pairs / heads;
        const int kvh = kv_heads == 1 ? 0 : h;
        const float* Qb = Q + b * seq * qstride + (i64)h * TF_D;
        const float* Kb = K + b * seq * kstride + (i64)kvh * TF_D;
        const float* Vb = V + b * seq * kstride + (i64)kvh * TF_D;
        const int q0 = qt * TF_ROWS + warp * 16, r0 = q0 + g, r1 = q0 + g + 8;

        unsigned qa[8][4];  // this warp's Q rows as A fragments, pre-scaled
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
            const int c = 8 * kk + t;
            qa[kk][0] = to_tf32(r0 < seq ? Qb[r0 * qstride + c] * qscale : 0.0f);
            qa[kk][1] = to_tf32(r1 < seq ? Qb[r1 * qstride + c] * qscale : 0.0f);
            qa[kk][2] = to_tf32(r0 < seq ? Qb[r0 * qstride + c + 4] * qscale : 0.0f);
            qa[kk][3] = to_tf32(r1 < seq ? Qb[r1 * qstride + c + 4] * qscale : 0.0f);
        }
        float o[8][4] = {};
        float m0 = -INF, m1 = -INF, l0 = 0.0f, l1 = 0.0f;  // rows r0, r1 (l: this lane's part)
        const int kend = causal ? min(seq, (qt + 1) * TF_ROWS) : seq;
        for (int k0 = 0; k0 < kend; k0 += TF_KEYS) {
            __syncthreads();  // every warp is done with the previous tile
            load_tile(Ks, Kb, kstride, k0, seq);
            load_tile(Vs, Vb, kstride, k0, seq);
            __syncthreads();
            if (causal && k0 > q0 + 15) continue;  // every key is after every row of this warp

            float s[8][4] = {};
#pragma unroll
            for (int nb = 0; nb < 8; ++nb)
#pragma unroll
                for (int kk = 0; kk < 8; ++kk) {
                    const float* kr = Ks + (8 * nb + g) * TF_STRIDE + 8 * kk + t;
                    mma_tf32(s[nb], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], lds(kr), lds(kr + 4));
                }
            if (mask || k0 + TF_KEYS > seq || (causal && k0 + TF_KEYS - 1 > q0)) {
#pragma unroll
                for (int nb = 0; nb < 8; ++nb)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int key = k0 + 8 * nb + 2 * t + (e & 1), row = e < 2 ? r0 : r1;
                        if (key >= seq || (causal && key > row))
                            s[nb][e] = -INF;
                        else if (mask && row < seq)
                            s[nb][e] += mask[(i64)row * seq + key] * LOG2E;
                    }
            }
            float mx0 = m0, mx1 = m1;
#pragma unroll
            for (int nb = 0; nb < 8; ++nb) {
                mx0 = fmaxf(mx0, fmaxf(s[nb][0], s[nb][1]));
                mx1 = fmaxf(mx1, fmaxf(s[nb][2], s[nb][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            // A row with every key masked so far keeps p = 0 (and no inf - inf).
            const float sh0 = mx0 == -INF ? 0.0f : mx0, sh1 = mx1 == -INF ? 0.0f : mx1;
            const float a0 = exp2_approx(m0 - sh0), a1 = exp2_approx(m1 - sh1);
            m0 = mx0, m1 = mx1;
            l0 *= a0, l1 *= a1;
#pragma unroll
            for (int nd = 0; nd < 8; ++nd) o[nd][0] *= a0, o[nd][1] *= a0, o[nd][2] *= a1, o[nd][3] *= a1;
#pragma unroll
            for (int nb = 0; nb < 8; ++nb) {
                s[nb][0] = exp2_approx(s[nb][0] - sh0), s[nb][1] = exp2_approx(s[nb][1] - sh0);
                s[nb][2] = exp2_approx(s[nb][2] - sh1), s[nb][3] = exp2_approx(s[nb][3] - sh1);
                l0 += s[nb][0] + s[nb][1], l1 += s[nb][2] + s[nb][3];
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const unsigned p0 = to_tf32(s[j][0]), p1 = to_tf32(s[j][2]), p2 = to_tf32(s[j][1]), p3 = to_tf32(s[j][3]);
#pragma unroll
                for (int nd = 0; nd < 8; ++nd) {
                    const float* vr = Vs + (8 * j + 2 * t) * TF_STRIDE + 8 * nd + g;
                    mma_tf32(o[nd], p0, p1, p2, p3, lds(vr), lds(vr + TF_STRIDE));
                }
            }
        }
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
        float* Ob = O + b * seq * qstride + (i64)h * TF_D;
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) {
            const int c = 8 * nd + 2 * t;
            if (r0 < seq) *reinterpret_cast<float2*>(Ob + r0 * qstride + c) = make_float2(o[nd][0] * inv0, o[nd][1] * inv0);
            if (r1 < seq) *reinterpret_cast<float2*>(Ob + r1 * qstride + c) = make_float2(o[nd][2] * inv1, o[nd][3] * inv1);
        }
    }
}

// ----------------------------------------------------------------------------- fused backward
//
// attention_backward_fused_d64_f32 (attention.cu) on tensor cores, for d <=
// 64 (d % 4 == 0, 16-byte aligned tensors): the same arguments, grid and
// turn-taking for dQ, after attention_backward_dr_f32. A block of 8 warps
// keeps dK and dV of 64 keys while it walks the query tiles that see them.
// Per tile of 64 queries, warp w takes keys kw = 16 (w % 4).. and queries qw
// = 32 (w / 4)..: S^T = K Q^T and dP^T = V dO^T, then P^T and dS^T stay in
// registers as the A operands of dV += P^T dO and dK += dS^T Q over its 32
// queries (the two query halves of a key are added once, at the end). dS^T
// also goes to shared memory for dQ = dS K, in which warp w takes queries 16
// (w % 4).. and columns 32 (w / 4)...

#define TB_T 64  // keys and queries a tile; the padded head dim
#define TB_THREADS 256

// Shared tiles are [64][64] floats with padded rows, stride 68 or 72. The
// fragments read rows g, columns t (the operands of S^T and dP^T, by ldmatrix:
// 68); rows t, columns g (those of dQ: 72); rows 2t and 2t + 1, columns g (the
// B operands of dV and dK: 68). Each of those strides gives the 32 reads 32
// banks; K, read both ways, is stored twice.
#define TB_LA 68
#define TB_LB 72

// Rows [0, 64) (valid below `valid`) of two [rows][d] matrices at a and b,
// row stride `stride`, into tiles ta and tb of row stride 68 as TF32 bit
// patterns, zeros outside; with ta2, a's rows again at stride 72. Every load
// is issued before the first store: each store's "memory" clobber would
// otherwise hold the next load back until it.
__device__ __forceinline__ void tb_load_pair(float* ta, const float* a, float* tb, const float* b, i64 stride, int valid, int d,
                                             float* ta2 = nullptr) {
    constexpr int PER = TB_T * TB_T / 4 / TB_THREADS;  // float4s of a tile per thread
    float4 va[PER], vb[PER];
#pragma unroll
    for (int k = 0; k < PER; ++k) {
        const int e = threadIdx.x + k * TB_THREADS, r = e / (TB_T / 4), c = e % (TB_T / 4) * 4;
        const bool in = r < valid && c < d;
        va[k] = in ? __ldg(reinterpret_cast<const float4*>(a + r * stride + c)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        vb[k] = in ? __ldg(reinterpret_cast<const float4*>(b + r * stride + c)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int k = 0; k < PER; ++k) {
        const int e = threadIdx.x + k * TB_THREADS, r = e / (TB_T / 4), c = e % (TB_T / 4) * 4;
        const unsigned x = to_tf32(va[k].x), y = to_tf32(va[k].y), z = to_tf32(va[k].z), w = to_tf32(va[k].w);
        sts4(ta + r * TB_LA + c, x, y, z, w);
        if (ta2 != nullptr) sts4(ta2 + r * TB_LB + c, x, y, z, w);
        sts4(tb + r * TB_LA + c, to_tf32(vb[k].x), to_tf32(vb[k].y), to_tf32(vb[k].z), to_tf32(vb[k].w));
    }
}

// Shared memory (floats): K, V, Q, dO (stride 68), K again and dS^T (stride
// 72), then lse and Dr of the query tile.
struct TbSmem {
    float *K, *V, *Q, *dO, *K2, *dSt, *lse, *dr;
    __device__ explicit TbSmem(float* sm)
        : K(sm), V(K + TB_T * TB_LA), Q(V + TB_T * TB_LA), dO(Q + TB_T * TB_LA), K2(dO + TB_T * TB_LA), dSt(K2 + TB_T * TB_LB),
          lse(dSt + TB_T * TB_LB), dr(lse + TB_T) {}
};

// Four 8x4 blocks of TF32 words from shared memory (ldmatrix of 8x8 b16): this
// lane's row address is p; it receives row lane / 4, word lane % 4 of each.
__device__ __forceinline__ void ldsm4(unsigned (&r)[4], const float* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((unsigned)__cvta_generic_to_shared(p))
                 : "memory");
}

// acc[nb] += A B^T over the 64 columns, for rows kw + (g, g + 8) of A and
// rows qw + 8 nb + g of B (S^T = K Q^T, dP^T = V dO^T). The fragments come by
// ldmatrix: lane l points at row l % 8 of block l / 8, the A blocks being
// (rows +0, +8) x (columns +0, +4) and the B blocks (columns +0, +4) x (rows
// +0, +8), so the four words land as mma's a0..a3 and b0, b1 of two nb.
__device__ __forceinline__ void tb_rows_product(float (&acc)[4][4], const float* A, const float* B, int kw, int qw, int lane) {
    const int r = lane & 7, blk = lane >> 3;
    const float* a = A + (kw + r + 8 * (blk & 1)) * TB_LA + 4 * (blk >> 1);
    const float* b = B + (qw + r + 8 * (blk >> 1)) * TB_LA + 4 * (blk & 1);
#pragma unroll
    for (int ks = 0; ks < TB_T / 8; ++ks) {
        unsigned af[4], bf[2][4];
        ldsm4(af, a + 8 * ks);
        ldsm4(bf[0], b + 8 * ks);
        ldsm4(bf[1], b + 16 * TB_LA + 8 * ks);
#pragma unroll
        for (int nb = 0; nb < 4; ++nb) mma_tf32(acc[nb], af[0], af[1], af[2], af[3], bf[nb >> 1][2 * (nb & 1)], bf[nb >> 1][2 * (nb & 1) + 1]);
    }
}

// acc[nd] += W X over the warp's 32 queries, W = P^T or dS^T in C-fragment
// form (keys kw + (g, g + 8), queries qw + 8 nb + (2t, 2t + 1)) and X = dO or
// Q: each 8-query step numbers its queries 2t -> t, 2t + 1 -> t + 4 on both
// sides, so W's fragments serve as A unchanged.
__device__ __forceinline__ void tb_keys_product(float (&acc)[8][4], const float (&w)[4][4], const float* X, int qw, int g, int t) {
#pragma unroll
    for (int nb = 0; nb < 4; ++nb) {
        const unsigned a0 = to_tf32(w[nb][0]), a1 = to_tf32(w[nb][2]), a2 = to_tf32(w[nb][1]), a3 = to_tf32(w[nb][3]);
        const float* x = X + (qw + 8 * nb + 2 * t) * TB_LA + g;
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) mma_tf32(acc[nd], a0, a1, a2, a3, lds(x + 8 * nd), lds(x + TB_LA + 8 * nd));
    }
}

// One query tile's part for the warp's keys: S^T, P^T, dV, dP^T, dS^T (also
// stored to shared memory, as TF32), dK.
__device__ __forceinline__ void tb_key_side(const TbSmem& m, float (&dk)[8][4], float (&dv)[8][4], const FlashShape& sh, int i0, int j0,
                                            int kw, int qw, int lane) {
    const int g = lane >> 2, t = lane & 3;
    float p[4][4] = {};
    tb_rows_product(p, m.K, m.Q, kw, qw, lane);
#pragma unroll
    for (int nb = 0; nb < 4; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int q = qw + 8 * nb + 2 * t + (e & 1), i = i0 + q, j = j0 + kw + g + (e & 2) * 4;
            const float l = m.lse[q];
            float v = 0.0f;
            if (l != -INF && j < sh.kv_len && !(sh.causal && j > sh.pos0 + i)) {
                float sc = p[nb][e] * sh.scale;
                if (sh.mask != nullptr) sc += sh.mask[(i64)i * sh.kv_len + j];
                v = expf(sc - l);
            }
            p[nb][e] = v;
        }
    tb_keys_product(dv, p, m.dO, qw, g, t);
    float ds[4][4] = {};
    tb_rows_product(ds, m.V, m.dO, kw, qw, lane);
#pragma unroll
    for (int nb = 0; nb < 4; ++nb) {
        const int q = qw + 8 * nb + 2 * t;
#pragma unroll
        for (int e = 0; e < 4; ++e) ds[nb][e] = p[nb][e] * (ds[nb][e] - m.dr[q + (e & 1)]);
        const unsigned lo0 = to_tf32(ds[nb][0]), lo1 = to_tf32(ds[nb][1]), hi0 = to_tf32(ds[nb][2]), hi1 = to_tf32(ds[nb][3]);
        sts2(m.dSt + (kw + g) * TB_LB + q, lo0, lo1);
        sts2(m.dSt + (kw + g + 8) * TB_LB + q, hi0, hi1);
    }
    tb_keys_product(dk, ds, m.Q, qw, g, t);
}

// This key tile's share of dQ = scale dS K for queries rw + (g, g + 8) and
// columns cw + 8 nd + (2t, 2t + 1), added to dQ (rows from `row0`, valid
// below `valid`) in its turn, as fb_add_dq in attention.cu.
__device__ __forceinline__ void tb_add_dq(const TbSmem& m, float* dQ, int* counter, i64 row0, int valid, int turn, const FlashShape& sh,
                                          int rw, int cw, int g, int t) {
    float dq[4][4] = {};
#pragma unroll
    for (int ks = 0; ks < TB_T / 8; ++ks) {
        const float *a = m.dSt + (8 * ks + t) * TB_LB + rw + g, *b = m.K2 + (8 * ks + t) * TB_LB + cw + g;
        const unsigned a0 = lds(a), a1 = lds(a + 8), a2 = lds(a + 4 * TB_LB), a3 = lds(a + 4 * TB_LB + 8);
#pragma unroll
        for (int nd = 0; nd < 4; ++nd) mma_tf32(dq[nd], a0, a1, a2, a3, lds(b + 8 * nd), lds(b + 4 * TB_LB + 8 * nd));
    }
    dq_wait_turn(counter, turn);
#pragma unroll
    for (int nd = 0; nd < 4; ++nd)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = rw + g + 8 * half, c = cw + 8 * nd + 2 * t;
            if (r >= valid || c >= sh.d) continue;
            float2* p = reinterpret_cast<float2*>(dQ + (row0 + (i64)r * sh.heads) * sh.d + c);
            float2 v = make_float2(dq[nd][2 * half] * sh.scale, dq[nd][2 * half + 1] * sh.scale);
            if (turn > 0) {
                const float2 old = __ldcg(p);  // L2: the previous tile's block wrote it
                v = make_float2(old.x + v.x, old.y + v.y);
            }
            __stcg(p, v);
        }
    dq_pass_turn(counter, turn);
}

// Launch: block 256, (4 * 64 * 68 + 2 * 64 * 72 + 2 * 64) * 4 bytes (105 KB)
// of dynamic shared memory, grid exactly batch * kv_heads * ceil(kv_len /
// 64); arguments as
// attention_backward_fused_d64_f32. d <= 64, d % 4 == 0, 16-byte aligned.
extern "C" __global__ void __launch_bounds__(TB_THREADS, 2)
    attention_backward_fused_tf32_d64(const float* dO, const float* Q, const float* K, const float* V, const float* mask,
                                      const float* lse, const float* Dr, float* dQ, float* dK, float* dV, int* sem, int batch,
                                      int q_len, int kv_len, int heads, int kv_heads, int d, int pos0, int causal, float scale) {
    extern __shared__ float4 tb_smem[];
    const TbSmem m(reinterpret_cast<float*>(tb_smem));
    const FlashShape sh{batch, q_len, kv_len, kv_len, heads, kv_heads, d, pos0, causal, scale, mask, nullptr};
    const KeyTile<TB_T> kt(sh);
    const int j0 = kt.j0;
    const i64 kv_stride = (i64)kv_heads * d, q_stride = (i64)heads * d, kv0 = kt.kv0;
    tb_load_pair(m.K, K + kv0, m.V, V + kv0, kv_stride, kv_len - j0, d, m.K2);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kw = 16 * (warp & 3), qw = 32 * (warp >> 2);
    float dk[8][4] = {}, dv[8][4] = {};
    kt.for_each_query_tile(sh, sem, [&](int i0, int valid, i64 row0, int turn, int* counter) {
        __syncthreads();  // the previous tile's readers are done
        tb_load_pair(m.Q, Q + row0 * d, m.dO, dO + row0 * d, q_stride, valid, d);
        if (threadIdx.x < TB_T) {
            const int r = threadIdx.x;
            m.lse[r] = r < valid ? lse[row0 + (i64)r * heads] : -INF;
            m.dr[r] = r < valid ? Dr[row0 + (i64)r * heads] : 0.0f;
        }
        __syncthreads();
        tb_key_side(m, dk, dv, sh, i0, j0, kw, qw, lane);
        __syncthreads();  // dS^T is complete
        tb_add_dq(m, dQ, counter, row0, valid, turn, sh, kw, qw, g, t);
    });
    // Warps 4..7 hand their query half of dK and dV to warps 0..3 (in the Q
    // and dO tiles), which add it to theirs and store.
    __syncthreads();
    if (warp >= 4) {
#pragma unroll
        for (int nd = 0; nd < 8; ++nd)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int at = (kw + g + 8 * half) * TB_LA + 8 * nd + 2 * t;
                *reinterpret_cast<float2*>(m.Q + at) = make_float2(dk[nd][2 * half], dk[nd][2 * half + 1]);
                *reinterpret_cast<float2*>(m.dO + at) = make_float2(dv[nd][2 * half], dv[nd][2 * half + 1]);
            }
    }
    __syncthreads();
    if (warp < 4) {
#pragma unroll
        for (int nd = 0; nd < 8; ++nd)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int r = kw + g + 8 * half, c = 8 * nd + 2 * t, at = r * TB_LA + c;
                if (j0 + r >= kv_len || c >= d) continue;
                const float2 k2 = *reinterpret_cast<const float2*>(m.Q + at), v2 = *reinterpret_cast<const float2*>(m.dO + at);
                const i64 o = kv0 + r * kv_stride + c;
                *reinterpret_cast<float2*>(dK + o) = make_float2((dk[nd][2 * half] + k2.x) * scale, (dk[nd][2 * half + 1] + k2.y) * scale);
                *reinterpret_cast<float2*>(dV + o) = make_float2(dv[nd][2 * half] + v2.x, dv[nd][2 * half + 1] + v2.y);
            }
    }
}
