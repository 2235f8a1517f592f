// A stable counting sort of integer keys (integers only, so exact): the
// grouping of MoE pairs by expert, and of an embedding's ids by their high
// bits for its backward.
//
// A pass places the items q < n by a digit of their key: key = keys[q],
// dropped unless 0 <= key < bound, digit = (key >> shift) % buckets.
// sort_count_i32 counts each chunk's items per digit; sort_place_i32 turns
// the counts into each (digit, chunk)'s first row, itself when there are few
// of them, else after sort_prefix_sum_i32 has, and places every chunk's items
// from there: order[row] = q, in q order within a digit, and -1 in the rows
// past the placed items.
#include "common.cuh"

#define SORT_CHUNK 1024  // items a chunk: a block of sort_count_i32 and sort_place_i32

// Item p, or -1 (no item) for p >= n.
__device__ __forceinline__ int sort_item(i64 p, int n) { return p < n ? (int)p : -1; }

// The digit of item q, or -1 for a dropped item (q < 0 included).
__device__ __forceinline__ int sort_digit(const int* keys, int q, int bound, int shift, int buckets) {
    if (q < 0) return -1;
    const int key = keys[q];
    return key >= 0 && key < bound ? (key >> shift) % buckets : -1;
}

// Digits a block counts or ranks at once (shared memory); more buckets take
// several windows.
#define SORT_WINDOW 256

// Launch: block 1024 (a chunk, an item a thread), grid min(chunks, 65535)
// (blocks stride over chunks). counts[1 + d * chunks + c] = the number of
// items of chunk c whose digit is d, for every (d, c), and counts[0] = 0: no
// zeroing needed. The lanes of a warp with the same digit add their count to
// the block's shared tally at once.
extern "C" __global__ void __launch_bounds__(1024)
    sort_count_i32(const int* keys, int* counts, int n, int bound, int shift, int buckets, int chunks) {
    __shared__ int tally[SORT_WINDOW];
    const int lane = threadIdx.x & 31;
    if (blockIdx.x == 0 && threadIdx.x == 0) counts[0] = 0;
    for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        const int d = sort_digit(keys, sort_item(c * SORT_CHUNK + threadIdx.x, n), bound, shift, buckets);
        const unsigned same = __match_any_sync(0xffffffffu, d);
        for (int w0 = 0; w0 < buckets; w0 += SORT_WINDOW) {
            const int width = min(SORT_WINDOW, buckets - w0);
            for (int j = threadIdx.x; j < width; j += blockDim.x) tally[j] = 0;
            __syncthreads();
            if (d >= w0 && d < w0 + width && __ffs(same) - 1 == lane) atomicAdd(tally + d - w0, __popc(same));
            __syncthreads();
            for (int j = threadIdx.x; j < width; j += blockDim.x) counts[1 + (i64)(w0 + j) * chunks + c] = tally[j];
            __syncthreads();  // before the next window clears the tally
        }
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

// The first rows of chunk c's items of digits w0 .. w0 + width - 1 into
// first[] (shared): with scanned, read from the counts sort_prefix_sum_i32
// left; else summed here from sort_count_i32's counts (every block reads all
// of them: for few chunks and buckets), `carry` (shared) holding the items of
// the digits before w0 and gaining this window's. Ends with a barrier.
__device__ void sort_first_rows(const int* counts, i64 c, int chunks, int w0, int width, bool scanned, int* first,
                                int* total, int& carry) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (scanned) {
        for (int j = threadIdx.x; j < width; j += blockDim.x) first[j] = counts[(i64)(w0 + j) * chunks + c];
        __syncthreads();
        return;
    }
    // A warp per digit (32 warps: the block of 1024): its DIGITS digits'
    // counts, RUNS runs of 32 chunks each, loaded at once (one round trip
    // for up to 128 chunks, not one per digit or run).
    constexpr int DIGITS = SORT_WINDOW / 32, RUNS = 4;
    int all[DIGITS] = {}, before[DIGITS] = {};
    for (int k0 = 0; k0 < chunks; k0 += 32 * RUNS) {
        int items[DIGITS][RUNS];
#pragma unroll
        for (int u = 0; u < DIGITS; ++u)
#pragma unroll
            for (int r = 0; r < RUNS; ++r) {
                const int j = warp + 32 * u, k = k0 + 32 * r + lane;
                items[u][r] = j < width && k < chunks ? counts[1 + (i64)(w0 + j) * chunks + k] : 0;
            }
#pragma unroll
        for (int u = 0; u < DIGITS; ++u)
#pragma unroll
            for (int r = 0; r < RUNS; ++r) {
                const int k = k0 + 32 * r + lane;
                all[u] += items[u][r], before[u] += k < c ? items[u][r] : 0;
            }
    }
#pragma unroll
    for (int u = 0; u < DIGITS; ++u) {
        const int j = warp + 32 * u;
        if (j >= width) break;  // the warp's other digits are past the window (8 experts: warps 8-31 have none)
        const int digit_all = warp_allreduce(all[u], Sum()), digit_before = warp_allreduce(before[u], Sum());
        if (lane == 0) total[j] = digit_all, first[j] = digit_before;
    }
    __syncthreads();
    if (warp == 0) {  // first[j] += carry + the items of the window's digits before j
        constexpr int PER_LANE = SORT_WINDOW / 32;
        int mine = 0;
        for (int i = 0; i < PER_LANE; ++i) mine += lane * PER_LANE + i < width ? total[lane * PER_LANE + i] : 0;
        int upto = mine;  // inclusive scan of the lanes' sums
        for (int d = 1; d < 32; d <<= 1) {
            const int u = __shfl_up_sync(0xffffffffu, upto, d);
            if (lane >= d) upto += u;
        }
        int row = carry + upto - mine;
        for (int i = 0; i < PER_LANE; ++i) {
            const int j = lane * PER_LANE + i;
            if (j < width) first[j] += row, row += total[j];
        }
        const int window = __shfl_sync(0xffffffffu, upto, 31);
        __syncwarp();
        if (lane == 0) carry += window;
    }
    __syncthreads();
}

// Launch: block 1024 (32 warps: a chunk), grid min(chunks, 65535) (blocks
// stride over chunks; no more blocks than chunks, 1 for none), after
// sort_count_i32 and, with scanned != 0, sort_prefix_sum_i32 over the buckets
// * chunks counts (so that counts[d * chunks + c] is the first row of chunk
// c's items of digit d); with scanned == 0 each block sums the counts before
// its own (for up to FEW_SLOTS in src/gpu/ops/sort.rs: one launch fewer). order[row] = q for the placed
// items, -1 in the rows after them; with sorted_keys non-null, sorted_keys[row]
// = keys[q] for the placed items (a reader of both then needs no dependent
// load of keys[order[row]]). With offsets non-null, offsets[d] = digit
// d's first row (d <= buckets); with inv non-null, inv[q] = q's row for every
// item q >= 0, -1 for a dropped one. An item's row is its chunk's first row
// for its digit, plus the items of that digit in the chunk's earlier warps
// (a scan over the warps' per-digit counts in shared memory, a window of
// digits at a time), plus its rank among its warp's lanes of that digit: so
// every digit's items keep their order, with no block waiting for another.
extern "C" __global__ void __launch_bounds__(1024)
    sort_place_i32(const int* keys, const int* counts, int* order, int* sorted_keys, int* offsets, int* inv, int n,
                   int bound, int shift, int buckets, int chunks, int scanned) {
    __shared__ int rows[32][SORT_WINDOW];  // [warp][digit - window]: the warp's first row of that digit
    __shared__ int first[SORT_WINDOW], total[SORT_WINDOW], carry;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) carry = 0;  // no chunk (n = 0): nothing placed
    __syncthreads();
    for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        const i64 p = c * SORT_CHUNK + threadIdx.x;
        const int q = sort_item(p, n);
        const int d = sort_digit(keys, q, bound, shift, buckets);
        if (inv != nullptr && q >= 0 && d < 0) inv[q] = -1;
        const unsigned same = __match_any_sync(0xffffffffu, d);
        const int rank = __popc(same & ((1u << lane) - 1));
        if (threadIdx.x == 0) carry = 0;
        for (int w0 = 0; w0 < buckets; w0 += SORT_WINDOW) {
            const int width = min(SORT_WINDOW, buckets - w0);
            for (int i = threadIdx.x; i < 32 * SORT_WINDOW; i += blockDim.x) rows[i / SORT_WINDOW][i % SORT_WINDOW] = 0;
            sort_first_rows(counts, c, chunks, w0, width, scanned != 0, first, total, carry);
            const bool here = d >= w0 && d < w0 + width;
            if (here && rank == 0) rows[warp][d - w0] = __popc(same);
            __syncthreads();
            for (int j = threadIdx.x; j < width; j += blockDim.x) {  // first rows, warp by warp
                int row = first[j];
                if (c == 0 && offsets != nullptr) offsets[w0 + j] = row;
                for (int w = 0; w < 32; ++w) {
                    const int items = rows[w][j];
                    rows[w][j] = row;
                    row += items;
                }
            }
            __syncthreads();
            if (here) {
                const int row = rows[warp][d - w0] + rank;
                order[row] = q;
                if (sorted_keys != nullptr) sorted_keys[row] = keys[q];
                if (inv != nullptr) inv[q] = row;
            }
            __syncthreads();  // before the next window clears the rows
        }
    }
    // The placed items (every block finds the same number), then -1 after them.
    const int placed = scanned != 0 ? counts[(i64)buckets * chunks] : carry;
    if (blockIdx.x == 0 && threadIdx.x == 0 && offsets != nullptr) offsets[buckets] = placed;
    for (i64 row = placed + grid_thread(); row < n; row += grid_threads()) order[row] = -1;
}
