// Tiled SGEMM: the fallback when cuBLAS is absent.
#include "common.cuh"

#define TILE 64   // C tile per block: TILE x TILE
#define TK 16     // K slice staged in shared memory per step
#define THREADS 256

// Launch: block (16, 16), grid (ceil(N / 64), ceil(M / 64), batch); blocks
// stride over tiles, so smaller x/y grids also work. Matrix z = blockIdx.z is
// at A + z * strideA etc. Row-major C = alpha * A B + beta * C; with beta == 0,
// C is never read (it may hold NaN). Thread (tx, ty) owns rows ty + 16 i and
// columns tx + 16 j (i, j < 4) of the tile: a warp reads 16 consecutive
// floats of B's tile (no bank conflicts) and 2 of A's (broadcast).
extern "C" __global__ void __launch_bounds__(THREADS)
    sgemm_tiled_f32(const float* A, const float* B, float* C, int M, int N, int K, float alpha, float beta,
                    i64 strideA, i64 strideB, i64 strideC) {
    __shared__ float As[TK][TILE + 1];  // A tile transposed: As[k][m]; +1 spreads the transposing stores
    __shared__ float Bs[TK][TILE];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    A += blockIdx.z * strideA;
    B += blockIdx.z * strideB;
    C += blockIdx.z * strideC;
    for (i64 m0 = (i64)blockIdx.y * TILE; m0 < M; m0 += (i64)gridDim.y * TILE) {
        for (i64 n0 = (i64)blockIdx.x * TILE; n0 < N; n0 += (i64)gridDim.x * TILE) {
            float acc[4][4] = {};
            for (i64 k0 = 0; k0 < K; k0 += TK) {
                // Each thread stages 4 floats of each tile; zeros past the edges.
#pragma unroll
                for (int l = 0; l < 4; ++l) {
                    const int e = tid + l * THREADS;
                    const int am = e / TK, ak = e % TK;  // A tile: 64 rows of 16
                    const i64 gm = m0 + am;
                    const i64 gk = k0 + ak;
                    As[ak][am] = gm < M && gk < K ? A[gm * K + gk] : 0.0f;
                    const int bk = e / TILE, bn = e % TILE;  // B tile: 16 rows of 64
                    const i64 gkb = k0 + bk;
                    const i64 gn = n0 + bn;
                    Bs[bk][bn] = gkb < K && gn < N ? B[gkb * N + gn] : 0.0f;
                }
                __syncthreads();
#pragma unroll
                for (int k = 0; k < TK; ++k) {
                    float a[4], b[4];
#pragma unroll
                    for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
                    for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
                    for (int i = 0; i < 4; ++i)
#pragma unroll
                        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
                }
                __syncthreads();  // before the next slice overwrites the tiles
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const i64 gm = m0 + ty + 16 * i;
                if (gm >= M) continue;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const i64 gn = n0 + tx + 16 * j;
                    if (gn >= N) continue;
                    float* c = C + gm * N + gn;
                    *c = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;
                }
            }
        }
    }
}

// Grouped products (cudann_gemm_grouped) read their row offsets on the device,
// so a training step with MoE experts needs no host round trip and can be
// captured into a CUDA graph. 128 x 128 tiles of C, 8 x 8 a thread; the k
// slices double-buffered in shared memory (one barrier a slice), the next
// slice's loads in flight during this one's products.
#define GT 128      // C tile per block: GT x GT
#define GK 8        // K slice per step
#define GPAD 4      // row padding of the shared tiles: conflict-free transposing stores, float4-aligned rows
#define GL (GT * GK / 256)  // elements of each tile a thread stages

// The part of the grouped dimension group g covers: offsets clamped into
// [0, dim], an end before its start an empty group (offsets are not checked
// on the device; this keeps every access inside the matrices).
struct GroupRange {
    i64 lo, hi;
};
__device__ __forceinline__ GroupRange group_range(const int* offsets, int g, int dim) {
    const i64 lo = min(max(offsets[g], 0), dim);
    return {lo, max(lo, (i64)min(max(offsets[g + 1], 0), dim))};
}

// Launch: block 256, grid (ceil(n / 128), min(tiles, 65535)), tiles =
// ceil(m / 128) + groups (inner == 0) or groups * ceil(m / 128) (inner == 1);
// blocks stride over the tiles. Row-major, op(X) = X or Xᵀ (trans_x), each
// matrix of group g at X + g * stride_x. inner == 0 (rows grouped): rows
// offsets[g] .. offsets[g+1] of C_g = alpha op(A_g) op(B_g) + beta C_g, other
// rows untouched. inner == 1 (the k dimension grouped): C_g = alpha
// op(A_g)[:, range] op(B_g)[range, :] + beta C_g, for every g. beta == 0: C is
// not read. Each element is one thread's sum in k order: deterministic.
extern "C" __global__ void __launch_bounds__(256)
    gemm_grouped_f32(const float* A, const float* B, float* C, const int* offsets, int groups, int inner, int m, int n, int k,
                     int ta, int tb, i64 lda, i64 ldb, i64 ldc, i64 sa, i64 sb, i64 sc, float alpha, float beta) {
    __shared__ __align__(16) float As[2][GK][GT + GPAD];  // op(A) slices, k-major
    __shared__ __align__(16) float Bs[2][GK][GT + GPAD];  // op(B) slices, k-major
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const i64 tiles_m = ((i64)m + GT - 1) / GT;
    const i64 tiles = inner ? groups * tiles_m : tiles_m + groups;
    for (i64 t = blockIdx.y; t < tiles; t += gridDim.y) {
        // This block's group, rows [m0, m_end) and k range [k0, k_end).
        int g = 0;
        i64 m0 = 0, m_end = m, k0 = 0, k_end = k;
        if (inner) {
            g = (int)(t / tiles_m);
            m0 = (t % tiles_m) * GT;
            const GroupRange r = group_range(offsets, g, k);
            k0 = r.lo;
            k_end = r.hi;
        } else {
            i64 rest = t;
            for (g = 0; g < groups; ++g) {
                const GroupRange r = group_range(offsets, g, m);
                const i64 count = (r.hi - r.lo + GT - 1) / GT;
                if (rest < count) {
                    m0 = r.lo + rest * GT;
                    m_end = r.hi;
                    break;
                }
                rest -= count;
            }
            if (g == groups) break;  // past the last group's tiles: so are the later t
        }
        const i64 n0 = (i64)blockIdx.x * GT;
        // A thread stages GL elements of each slice, mapped so that a warp's
        // loads run along the stored rows: their tile coordinates (fixed),
        // pointers (advanced a slice a step), and whether the row exists.
        const float* pa[GL];
        const float* pb[GL];
        int aks[GL], bks[GL];
        bool aok[GL], bok[GL];
#pragma unroll
        for (int l = 0; l < GL; ++l) {
            const int e = tid + 256 * l;
            const int ar = ta ? e % GT : e / GK, ak = ta ? e / GT : e % GK;
            const int bc = tb ? e / GK : e % GT, bk = tb ? e % GK : e / GT;
            aks[l] = ak;
            bks[l] = bk;
            aok[l] = m0 + ar < m_end;
            bok[l] = n0 + bc < n;
            pa[l] = A + g * sa + (ta ? (k0 + ak) * lda + m0 + ar : (m0 + ar) * lda + k0 + ak);
            pb[l] = B + g * sb + (tb ? (n0 + bc) * ldb + k0 + bk : (k0 + bk) * ldb + n0 + bc);
        }
        const i64 a_step = ta ? GK * lda : GK, b_step = tb ? GK : GK * ldb;
        float ra[GL], rb[GL];
        auto load = [&](i64 kk0) {
#pragma unroll
            for (int l = 0; l < GL; ++l) {
                ra[l] = aok[l] && kk0 + aks[l] < k_end ? *pa[l] : 0.0f;
                rb[l] = bok[l] && kk0 + bks[l] < k_end ? *pb[l] : 0.0f;
                pa[l] += a_step;
                pb[l] += b_step;
            }
        };
        auto stage = [&](int buf) {
#pragma unroll
            for (int l = 0; l < GL; ++l) {
                const int e = tid + 256 * l;
                As[buf][ta ? e / GT : e % GK][ta ? e % GT : e / GK] = ra[l];
                Bs[buf][tb ? e % GK : e / GT][tb ? e / GK : e % GT] = rb[l];
            }
        };
        float acc[8][8] = {};
        int cur = 0;
        if (k0 < k_end) {
            load(k0);
            stage(0);
        }
        __syncthreads();
        for (i64 kk0 = k0; kk0 < k_end; kk0 += GK) {
            const bool more = kk0 + GK < k_end;
            if (more) load(kk0 + GK);
#pragma unroll
            for (int kk = 0; kk < GK; ++kk) {
                float av[8], bv[8];
                *(float4*)&av[0] = *(const float4*)&As[cur][kk][ty * 4];
                *(float4*)&av[4] = *(const float4*)&As[cur][kk][64 + ty * 4];
                *(float4*)&bv[0] = *(const float4*)&Bs[cur][kk][tx * 4];
                *(float4*)&bv[4] = *(const float4*)&Bs[cur][kk][64 + tx * 4];
#pragma unroll
                for (int i = 0; i < 8; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
            }
            if (more) stage(cur ^ 1);  // the other buffer: its readers passed the last barrier
            __syncthreads();
            cur ^= 1;
        }
        float* c = C + g * sc;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const i64 gr = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
            if (gr >= m_end) continue;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const i64 gc = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
                if (gc >= n) continue;
                float* out = c + gr * ldc + gc;
                *out = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *out;
            }
        }
        __syncthreads();  // the next tile's first slice overwrites buffer 0
    }
}
