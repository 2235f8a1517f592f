// gen-ptx: compute_80
// Flash attention on tensor cores in TF32 (mma.sync m16n8k8, sm_80 and later),
// taken only when the caller sets CUDANN_ALLOW_TF32=1: the products Q K^T and
// P V are rounded to TF32 (10-bit mantissa, relative error ~1e-3 in the
// output); softmax, its sums and the accumulators stay fp32. head_dim 64.
//
// Each warp owns 16 query rows; the block (4 warps, 64 rows) walks 64-key tiles
// of K and V through shared memory with an online softmax, as the fp32 kernels
// in attention.cu do. Fragment layouts (PTX ISA, m16n8k8 .tf32): with g = lane
// / 4 and t = lane % 4, A holds (g, t) (g + 8, t) (g, t + 4) (g + 8, t + 4), B
// holds (k = t, n = g) (k = t + 4, n = g), C holds (g, 2t) (g, 2t + 1) (g + 8,
// 2t) (g + 8, 2t + 1). P is reused from S's C fragments as the A operand of P V
// by numbering the keys of each 8-key step 2t -> t, 2t + 1 -> t + 4; the V
// fragments are read in the same order, so the sum over keys is unchanged.
#include "common.cuh"

#define TF_THREADS 128
#define TF_ROWS 64     // query rows per block, 16 per warp
#define TF_KEYS 64     // keys per tile
#define TF_D 64        // head_dim
#define TF_STRIDE 68   // shared row stride in floats: fragment reads hit 32 banks
#define LOG2E 1.4426950408889634f

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
