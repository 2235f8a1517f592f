// Decode attention's split kernel (split KV), shared by attention.cu (any GPU)
// and attention_sm80.cu (cp.async, sm_80 and later), which differ only in how
// a tile of keys reaches shared memory.
//
// Few query rows against a long KV cache (decoding): the rows = q_len *
// (heads / kv_heads) <= R query rows that share a KV head are one block's,
// so each K and V row is read once for all of them, and the keys are split
// across blocks so that a batch of one still fills the GPU. Reading the
// cache is the whole cost, so a block streams its split in tiles of 16 KB of
// K and 16 KB of V, the next tile in flight while the current one is worked
// on from shared memory. Per tile: scores (a few lanes per key), the online
// softmax (one warp per query row), then P V (a thread per column and group
// of keys). The key groups are summed in a fixed order at the end; with one
// split the block writes the output, else its unnormalised partial (o, max,
// sum, in base 2) for attention_decode_combine_f32, which combines the
// splits in order. No atomics: the same bits run after run, whichever way
// the tiles arrive.
#pragma once
#include "attention.cuh"

#define DC_THREADS 256
#define DC_WARPS (DC_THREADS / 32)
#define DC_TILE_F4 1024                     // float4s of a K (or V) tile
#define DC_LOADS (DC_TILE_F4 / DC_THREADS)  // a thread's float4s of each

// D4: float4s of the widest row (16 for d <= 64, 32 for d <= 128, 64 for d <= 256); STAGES:
// the tiles shared memory holds at once (see the Tiles ways below).
template <int R, int D4, int STAGES> struct DecodeSmem {
    static constexpr int TK = DC_TILE_F4 / D4;  // keys of a tile: 64 (d <= 64), 32 (d <= 128) or 16
    static constexpr int G = DC_THREADS / D4;   // key groups of P V
    struct Tile {
        float4 k[TK][D4], v[TK][D4];
    };
    float4 q[R][D4];  // query rows, scaled to base 2
    union {
        Tile stage[STAGES];
        float4 o[G][R][D4];  // at the end: each key group's unnormalised output
    } u;
    float p[R][TK];  // scores, then probabilities
    float alpha[R];  // this tile's rescaling of the output
    float m[R], l[R];
};

// How a tile reaches shared memory (attention.cu's RegisterTiles,
// attention_sm80.cu's AsyncTiles): a Tiles value lives for one split and has
//   STAGES                          tile buffers in shared memory it needs;
//   fetch(i, &k_slot, &v_slot, kp, vp, in)
//                                   start moving this thread's i-th float4 of
//                                   K and V (from kp, vp; zeros unless in) to
//                                   the slots of the tile's stage;
//   sent()                          after a tile's DC_LOADS fetches;
//   land(stage, pg, pc, G)          the block's next barrier will see the tile
//                                   fetched last in `stage` (the caller has
//                                   passed a barrier since that stage's
//                                   previous tile was last read).

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
    return fmaf(a.w, b.w, fmaf(a.z, b.z, fmaf(a.y, b.y, fmaf(a.x, b.x, acc))));
}

__device__ __forceinline__ float4 axpy4(float a, float4 x, float4 y) {
    return make_float4(fmaf(a, x.x, y.x), fmaf(a, x.y, y.y), fmaf(a, x.z, y.z), fmaf(a, x.w, y.w));
}

__device__ __forceinline__ float4 scale4(float a, float4 x) { return make_float4(a * x.x, a * x.y, a * x.z, a * x.w); }

__device__ __forceinline__ float4 add4(float4 a, float4 b) { return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); }

// Row r of a decode block is query i = r / group of head kvh * group + r % group.
__device__ __forceinline__ i64 decode_row(const FlashShape& sh, i64 b, int kvh, int r) {
    const int group = sh.heads / sh.kv_heads;
    return (b * sh.q_len + r / group) * sh.heads + kvh * group + r % group;
}

// The output row (and lse) from a combined unnormalised o, max m and sum l.
__device__ __forceinline__ void decode_finish(const FlashShape& sh, float* O, i64 row, int c, float4 o, float m, float l) {
    reinterpret_cast<float4*>(O + row * sh.d)[c] = l > 0.0f ? scale4(1.0f / l, o) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (sh.lse != nullptr && c == 0) sh.lse[row] = l > 0.0f ? (m + log2f(l)) * LN2 : -INF;
}

// Launch: block DC_THREADS, grid batch * kv_heads * splits (blocks stride);
// keys split_len * s .. of each (batch, KV head) go to split s. d % 4 == 0,
// d <= 4 * D4, rows <= R <= DC_WARPS; Q, K, V, O 16-byte aligned. part: with
// splits > 1, [batch * kv_heads * splits, R, d / 4 + 1] float4s (the last one
// of a row holds its max and sum).
template <int R, int D4, class Tiles>
__device__ void decode_split(DecodeSmem<R, D4, Tiles::STAGES>& s, const float* Q, const float* K, const float* V, float* O,
                             const FlashShape& sh, int splits, int split_len, float4* part) {
    using Smem = DecodeSmem<R, D4, Tiles::STAGES>;
    constexpr int TK = Smem::TK, G = Smem::G, LPK = D4 / 4;  // LPK: lanes of a key's score, 4 float4s each
    constexpr int KPL = (TK + 31) / 32;                       // keys of a lane in the softmax
    static_assert(R <= DC_WARPS && TK <= 64 && TK == G * DC_LOADS, "decode tile shape");
    const int group = sh.heads / sh.kv_heads, rows = sh.q_len * group, d4 = sh.d / 4;
    const int t = threadIdx.x, warp = t >> 5, lane = t & 31;
    const int skey = t / LPK, spart = t % LPK;  // scores: key of the tile, first float4
    const int pc = t % D4, pg = t / D4;         // P V: column, key group
    const int kv_end = sh.causal ? min(sh.kv_len, sh.pos0 + sh.q_len) : sh.kv_len;
    const i64 kv_stride = (i64)sh.kv_heads * d4;  // float4s between key rows
    const float scale2 = sh.scale * LOG2E;
    const i64 work = (i64)sh.batch * sh.kv_heads * splits;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (i64 item = blockIdx.x; item < work; item += gridDim.x) {
        const i64 b = item / ((i64)sh.kv_heads * splits);
        const int kvh = (int)(item / splits % sh.kv_heads), split = (int)(item % splits);
        const int j_begin = split * split_len, j_end = min(kv_end, j_begin + split_len);
        __syncthreads();  // the previous item's readers of s are done
        const i64 head0 = (b * sh.kv_cap * sh.kv_heads + kvh) * d4;
        const float4 *kbase = reinterpret_cast<const float4*>(K) + head0, *vbase = reinterpret_cast<const float4*>(V) + head0;
        const int tiles = j_end > j_begin ? (j_end - j_begin + TK - 1) / TK : 0;
        Tiles in_flight;
        // A thread's share of a tile: column pc of keys pg, pg + G, ... (as in P V).
        const auto fetch = [&](int tile) {
            const int j0 = j_begin + tile * TK;
            const i64 at = (i64)(j0 + pg) * kv_stride + pc;
            typename Smem::Tile& st = s.u.stage[tile % Tiles::STAGES];
#pragma unroll
            for (int i = 0; i < DC_LOADS; ++i) {
                const bool in = j0 + pg + i * G < j_end && pc < d4;
                const i64 from = in ? at + i * G * kv_stride : 0;
                in_flight.fetch(i, st.k[pg + i * G][pc], st.v[pg + i * G][pc], kbase + from, vbase + from, in);
            }
            in_flight.sent();
        };
        if (tiles > 0) fetch(0);
        for (int e = t; e < R * D4; e += DC_THREADS) {
            const int r = e / D4, c = e % D4;
            s.q[r][c] = r < rows && c < d4 ? scale4(scale2, reinterpret_cast<const float4*>(Q + decode_row(sh, b, kvh, r) * sh.d)[c]) : zero;
        }
        float m = -INF, l = 0.0f;  // row `warp`'s running max, this lane's share of its sum
        float4 o[R];               // column pc of each row, over key group pg
#pragma unroll
        for (int r = 0; r < R; ++r) o[r] = zero;
        for (int tile = 0; tile < tiles; ++tile) {
            const int j0 = j_begin + tile * TK;
            typename Smem::Tile& cur = s.u.stage[tile % Tiles::STAGES];
            in_flight.land(cur, pg, pc, G);
            __syncthreads();                           // the tile is in; the previous tile's readers are done
            if (tile + 1 < tiles) fetch(tile + 1);  // in flight while this tile is worked on
            float acc[R];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                acc[r] = 0.0f;
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[r] = dot4(s.q[r][spart + LPK * i], cur.k[skey][spart + LPK * i], acc[r]);
#pragma unroll
                for (int w = 1; w < LPK; w <<= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], w);
            }
            if (spart == 0)
#pragma unroll
                for (int r = 0; r < R; ++r) s.p[r][skey] = acc[r];
            __syncthreads();
            if (warp < R) {  // the online softmax of row `warp`, lane = key (and key + 32) of the tile
                const int r = warp, i = r / group;
                float v[KPL];
#pragma unroll
                for (int h = 0; h < KPL; ++h) {
                    const int key = lane + 32 * h, j = j0 + key;
                    v[h] = -INF;
                    if (key < TK && j < j_end && r < rows && !(sh.causal && j > sh.pos0 + i))
                        v[h] = s.p[r][key] + (sh.mask != nullptr ? sh.mask[(i64)i * sh.kv_len + j] * LOG2E : 0.0f);
                }
                float top = v[0];
#pragma unroll
                for (int h = 1; h < KPL; ++h) top = fmaxf(top, v[h]);
                const float mn = fmaxf(m, warp_allreduce(top, Max()));
                const float base = mn == -INF ? 0.0f : mn;  // all masked so far: p = 0, o stays 0
                const float alpha = exp2_approx(m - base);
#pragma unroll
                for (int h = 0; h < KPL; ++h) {
                    const float p = exp2_approx(v[h] - base);
                    l = h == 0 ? l * alpha + p : l + p;
                    if (lane + 32 * h < TK) s.p[r][lane + 32 * h] = p;
                }
                if (lane == 0) s.alpha[r] = alpha;
                m = mn;
            }
            __syncthreads();
#pragma unroll
            for (int r = 0; r < R; ++r) o[r] = scale4(s.alpha[r], o[r]);
#pragma unroll
            for (int jj = pg; jj < TK; jj += G) {
                const float4 vv = cur.v[jj][pc];
#pragma unroll
                for (int r = 0; r < R; ++r) o[r] = axpy4(s.p[r][jj], vv, o[r]);
            }
        }
        if (warp < R) {
            const float lt = warp_allreduce(l, Sum());
            if (lane == 0) s.m[warp] = m, s.l[warp] = lt;
        }
        __syncthreads();  // the last tile's readers are done: u.o may overwrite it
#pragma unroll
        for (int r = 0; r < R; ++r) s.u.o[pg][r][pc] = o[r];
        __syncthreads();
        for (int e = t; e < R * D4; e += DC_THREADS) {
            const int r = e / D4, c = e % D4;
            if (r >= rows || c >= d4) continue;
            float4 sum = s.u.o[0][r][c];
#pragma unroll
            for (int g = 1; g < G; ++g) sum = add4(sum, s.u.o[g][r][c]);
            if (splits == 1) {
                decode_finish(sh, O, decode_row(sh, b, kvh, r), c, sum, s.m[r], s.l[r]);
            } else {
                float4* pr = part + (item * R + r) * (d4 + 1);
                pr[c] = sum;
                if (c == 0) pr[d4] = make_float4(s.m[r], s.l[r], 0.0f, 0.0f);
            }
        }
    }
}

// The split kernels' parameters, and the shape they make.
#define DC_PARAMS                                                                                                    \
    const float *Q, const float *K, const float *V, float *O, const float *mask, float *lse, int batch, int q_len, \
        int kv_len, int kv_cap, int heads, int kv_heads, int d, int pos0, int causal, float scale, int splits,     \
        int split_len, float4 *part
#define DC_SHAPE FlashShape{batch, q_len, kv_len, kv_cap, heads, kv_heads, d, pos0, causal, scale, mask, lse}
