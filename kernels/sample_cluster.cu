// gen-ptx: compute_90
// Plain sampling of a few rows, each by a cluster of SAMPLE_CLUSTER blocks (sm_90
// and later): one block is bound to one SM, which for a single row of a large
// vocabulary leaves the GPU idle. The blocks split the row's tiles, draw exactly
// as sample_f32 does (sampling.cuh), and the cluster's first block reads the
// others' best through distributed shared memory. Same tokens as sample_f32.
#include "sampling.cuh"

#define SAMPLE_CLUSTER 4

__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// Every thread of every block of the cluster; orders shared-memory writes
// before the barrier with reads after it.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// Block `rank`'s copy of a shared variable of this block.
__device__ __forceinline__ i64 cluster_load(const i64* local, unsigned rank) {
    unsigned remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"((unsigned)__cvta_generic_to_shared(local)), "r"(rank));
    i64 v;
    asm volatile("ld.shared::cluster.b64 %0, [%1];" : "=l"(v) : "r"(remote) : "memory");
    return v;
}

// Launch: block 1024, grid a multiple of SAMPLE_CLUSTER (clusters stride over
// rows: rows = grid / SAMPLE_CLUSTER at a time); arguments as sample_f32.
extern "C" __global__ void __cluster_dims__(SAMPLE_CLUSTER, 1, 1) __launch_bounds__(S_THREADS, 2)
    sample_cluster_f32(const float* logits, int* out, const u64* seeds, int batch, int vocab, float temperature) {
    __shared__ i64 block_best;
    const unsigned rank = cluster_rank();
    for (i64 row = blockIdx.x / SAMPLE_CLUSTER; row < batch; row += gridDim.x / SAMPLE_CLUSTER) {
        Draw d(row_key(seeds[row], row), temperature, false);
        stream_pass(logits + row * vocab, vocab, d, [](float, int) { return true; }, (int)rank, SAMPLE_CLUSTER);
        const i64 best = block_allreduce(d.best, Max(), (i64)NO_RANK);
        if (threadIdx.x == 0) block_best = best;
        cluster_sync();
        if (rank == 0 && threadIdx.x < 32) {
            i64 r = threadIdx.x < SAMPLE_CLUSTER ? cluster_load(&block_best, threadIdx.x) : (i64)NO_RANK;
            r = warp_allreduce(r, Max());
            if (threadIdx.x == 0) out[row] = r == NO_RANK ? 0 : rank_index(r);
        }
        cluster_sync();  // the next row's block_best waits for every read of this one
    }
}
