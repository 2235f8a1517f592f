// A stable counting sort of integer keys (integers only, so exact): the
// grouping of MoE pairs by expert, and the radix passes that sort an
// embedding's ids for its backward.
//
// A pass places the items p < n by a digit of their key: item q = perm[p]
// (perm null: q = p; a negative q is dropped), key = keys[q], dropped unless
// 0 <= key < bound, digit = (key >> shift) % buckets. sort_count_i32 counts
// each chunk's items per digit, sort_prefix_sum_i32 turns the counts,
// digit-major, into each (digit, chunk)'s first row, and sort_place_i32
// places every chunk's items from there: order[row] = q, in p order within a
// digit. Rows past the placed items are left as they were.
#include "common.cuh"

#define SORT_CHUNK 1024  // items a chunk: a block of sort_place_i32

// The digit of item p, or -1 for a dropped item.
__device__ __forceinline__ int sort_digit(const int* keys, const int* perm, i64 p, int bound, int shift, int buckets) {
    const int q = perm != nullptr ? perm[p] : (int)p;
    if (q < 0) return -1;
    const int key = keys[q];
    return key >= 0 && key < bound ? (key >> shift) % buckets : -1;
}

// Launch: block 256, grid n1024(n) (grid-stride), on counts [buckets *
// chunks + 1] the caller has zeroed: counts[1 + d * chunks + c] = the number
// of items of chunk c (items c * SORT_CHUNK ..) whose digit is d. The lanes of
// a warp share a chunk (a warp's items are 32 consecutive ones, warp-aligned),
// so the lanes with the same digit add their count at once.
extern "C" __global__ void sort_count_i32(const int* keys, const int* perm, int* counts, int n, int bound, int shift,
                                          int buckets, int chunks) {
    const int lane = threadIdx.x & 31;
    for (i64 p = grid_thread(); p < n; p += grid_threads()) {
        const int d = sort_digit(keys, perm, p, bound, shift, buckets);
        const unsigned same = __match_any_sync(__activemask(), d);
        if (d >= 0 && __ffs(same) - 1 == lane) atomicAdd(counts + 1 + (i64)d * chunks + p / SORT_CHUNK, __popc(same));
    }
}

// Counts a lane of sort_prefix_sum_i32 holds in registers per round.
#define SCAN_ITEMS 16

// Launch: block 1024 (a multiple of 32), grid 1 (other blocks return).
// counts[1 .. n] becomes its inclusive prefix sum (so with counts[0] = 0,
// counts[i] is the sum of the first i counts). Each round takes blockDim *
// SCAN_ITEMS entries, a run of 32 * SCAN_ITEMS consecutive ones per warp, read
// and written 32 consecutive at a time (a thread per entry, so the loads
// coalesce: 16 entries a thread read apart took 20 us for 16384 entries on an
// H100). Each group of 32 is scanned across the lanes and carried on to the
// next; one block pass over the warps' totals gives each warp its start, and
// the rounds carry over. Integers, so the order of the additions is free.
extern "C" __global__ void __launch_bounds__(1024) sort_prefix_sum_i32(int* counts, int n) {
    if (blockIdx.x != 0) return;
    __shared__ int warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int carry = 0;
    for (i64 base = 1; base <= n; base += (i64)blockDim.x * SCAN_ITEMS) {
        const i64 first = base + (i64)warp * 32 * SCAN_ITEMS + lane;  // entry i of this lane: first + 32 i
        int v[SCAN_ITEMS];
#pragma unroll
        for (int i = 0; i < SCAN_ITEMS; ++i) v[i] = first + 32 * i <= n ? counts[first + 32 * i] : 0;
        int run = 0;  // the warp's entries before group i
#pragma unroll
        for (int i = 0; i < SCAN_ITEMS; ++i) {
#pragma unroll
            for (int d = 1; d < 32; d <<= 1) {
                const int u = __shfl_up_sync(0xffffffffu, v[i], d);
                if (lane >= d) v[i] += u;
            }
            v[i] += run;
            run = __shfl_sync(0xffffffffu, v[i], 31);
        }
        if (lane == 0) warp_sums[warp] = run;
        __syncthreads();
        int before = carry, round = 0;
        for (int w = 0; w < warps; ++w) {
            if (w < warp) before += warp_sums[w];
            round += warp_sums[w];
        }
#pragma unroll
        for (int i = 0; i < SCAN_ITEMS; ++i)
            if (first + 32 * i <= n) counts[first + 32 * i] = before + v[i];
        carry += round;
        __syncthreads();  // before the next round overwrites warp_sums
    }
}

// Digits a block of sort_place_i32 ranks at once (32 warps x SORT_WINDOW
// ints of shared memory); more buckets take several windows.
#define SORT_WINDOW 256

// Launch: block 1024 (32 warps: a chunk), grid min(chunks, 65535) (blocks
// stride over chunks), after sort_prefix_sum_i32 over the buckets * chunks
// counts, so that counts[d * chunks + c] is the first row of chunk c's items
// of digit d. With offsets non-null, block 0 also writes offsets[d] =
// counts[d * chunks] (d <= buckets). An item's row is its chunk's first row
// for its digit, plus the items of that digit in the chunk's earlier warps
// (a scan over the warps' per-digit counts in shared memory, a window of
// digits at a time), plus its rank among its warp's lanes of that digit: so
// every digit's items keep their order, with no block waiting for another.
extern "C" __global__ void __launch_bounds__(1024)
    sort_place_i32(const int* keys, const int* perm, const int* counts, int* order, int* offsets, int n, int bound,
                   int shift, int buckets, int chunks) {
    __shared__ int rows[32][SORT_WINDOW];  // [warp][digit - window]: the warp's first row of that digit
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (blockIdx.x == 0 && offsets != nullptr)
        for (i64 d = threadIdx.x; d <= buckets; d += blockDim.x) offsets[d] = counts[d * chunks];
    for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        const i64 p = c * SORT_CHUNK + threadIdx.x;
        const int d = p < n ? sort_digit(keys, perm, p, bound, shift, buckets) : -1;
        const int q = d >= 0 ? (perm != nullptr ? perm[p] : (int)p) : -1;
        const unsigned same = __match_any_sync(0xffffffffu, d);
        const int rank = __popc(same & ((1u << lane) - 1));
        for (int w0 = 0; w0 < buckets; w0 += SORT_WINDOW) {
            const int width = min(SORT_WINDOW, buckets - w0);
            for (int i = threadIdx.x; i < 32 * SORT_WINDOW; i += blockDim.x) rows[i / SORT_WINDOW][i % SORT_WINDOW] = 0;
            __syncthreads();
            const bool here = d >= w0 && d < w0 + width;
            if (here && rank == 0) rows[warp][d - w0] = __popc(same);
            __syncthreads();
            for (int j = threadIdx.x; j < width; j += blockDim.x) {  // counts -> first rows, warp by warp
                int row = counts[(i64)(w0 + j) * chunks + c];
                for (int w = 0; w < 32; ++w) {
                    const int items = rows[w][j];
                    rows[w][j] = row;
                    row += items;
                }
            }
            __syncthreads();
            if (here) order[rows[warp][d - w0] + rank] = q;
            __syncthreads();  // before the next window clears the rows
        }
    }
}
