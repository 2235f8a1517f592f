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
