// gen-ptx: compute_80
// Attention kernels that need sm_80 but not tensor cores: decode attention's
// split kernel (attention_decode.cuh) with its tiles brought to shared memory
// by cp.async. Each thread's copies go straight to shared memory, so the
// next tile is in flight in a second stage without holding registers, and a
// tile needs one barrier fewer. On an H100 (standalone probe, same bits as
// attention.cu's register form): split and combine 1x4096 76.6% -> 86.3% of
// the copy bandwidth, 1x8192 74.6% -> 79.4%, 2x4096 71.4% -> 76.0%; three
// stages were slower than two (1x8192 76.8%).
#include "attention_decode.cuh"

// Shared memory the kernels take (dynamic: above the 48 KB static limit).
// The library passes this for every R and D.
#define DC_ASYNC_SHARED (76 * 1024)

// No memory clobbers: the barrier after land and the one before a stage is
// fetched again order the shared accesses (as in the probe measured above).
struct AsyncTiles {
    static constexpr int STAGES = 2;

    // in false: 16 zero bytes, nothing read (a source size of 0).
    __device__ __forceinline__ static void copy16(float4& to, const float4* from, bool in) {
        const unsigned dst = (unsigned)__cvta_generic_to_shared(&to);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(from), "r"(in ? 16 : 0));
    }
    __device__ __forceinline__ void fetch(int, float4& k_slot, float4& v_slot, const float4* kp, const float4* vp, bool in) {
        copy16(k_slot, kp, in);
        copy16(v_slot, vp, in);
    }
    __device__ __forceinline__ void sent() { asm volatile("cp.async.commit_group;"); }
    // The tile's group is the only one in flight: wait for all.
    template <class Tile> __device__ __forceinline__ void land(Tile&, int, int, int) {
        asm volatile("cp.async.wait_group 0;");
    }
};

#define DC_ASYNC_KERNEL(R, D)                                                                                  \
    static_assert(sizeof(DecodeSmem<R, D / 4, AsyncTiles::STAGES>) <= DC_ASYNC_SHARED, "decode shared memory"); \
    extern "C" __global__ void __launch_bounds__(DC_THREADS, 2) attention_decode_async_r##R##_d##D##_f32(DC_PARAMS) { \
        extern __shared__ float4 dc_smem[];                                                                    \
        auto& s = *reinterpret_cast<DecodeSmem<R, D / 4, AsyncTiles::STAGES>*>(dc_smem);                      \
        decode_split<R, D / 4, AsyncTiles>(s, Q, K, V, O, DC_SHAPE, splits, split_len, part);                  \
    }
DC_ASYNC_KERNEL(1, 64)
DC_ASYNC_KERNEL(2, 64)
DC_ASYNC_KERNEL(4, 64)
DC_ASYNC_KERNEL(8, 64)
DC_ASYNC_KERNEL(1, 128)
DC_ASYNC_KERNEL(2, 128)
DC_ASYNC_KERNEL(4, 128)
DC_ASYNC_KERNEL(8, 128)
DC_ASYNC_KERNEL(1, 256)
DC_ASYNC_KERNEL(2, 256)
DC_ASYNC_KERNEL(4, 256)
DC_ASYNC_KERNEL(8, 256)
