// Conversion among float32, float16 and bfloat16, bit for bit the CPU
// backend's (src/cpu/convert.rs): round to nearest even, overflow to
// infinity, subnormals exact; a NaN stays a quiet NaN with its sign and the
// top bits of its payload. Integer arithmetic throughout (the hardware
// conversions return a canonical NaN), except float32 -> float16 of a number.
#include "common.cuh"

// Type codes of the ABI: CUDANN_F32, CUDANN_F16, CUDANN_BF16.
#define T_F32 0
#define T_F16 1
#define T_BF16 2

__device__ __forceinline__ float quiet(unsigned bits) {
    return __uint_as_float((bits & 0x7fffffffu) > 0x7f800000u ? bits | 0x00400000u : bits);
}

__device__ __forceinline__ float from_f16(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 31) return quiet(sign | 0x7f800000u | (m << 13));
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float32
        const float v = (float)m * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
}

__device__ __forceinline__ unsigned short to_f16(float x) {
    const unsigned bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (unsigned short)(((bits >> 16) & 0x8000u) | 0x7e00u | ((bits >> 13) & 0x3ffu));
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}

__device__ __forceinline__ float from_bf16(unsigned short b) { return quiet((unsigned)b << 16); }

__device__ __forceinline__ unsigned short to_bf16(float x) {
    const unsigned bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x0040u);
    return (unsigned short)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

template <int S> struct Src;
template <> struct Src<T_F32> {
    typedef float T;
    static __device__ __forceinline__ float get(T v) { return v; }
};
template <> struct Src<T_F16> {
    typedef unsigned short T;
    static __device__ __forceinline__ float get(T v) { return from_f16(v); }
};
template <> struct Src<T_BF16> {
    typedef unsigned short T;
    static __device__ __forceinline__ float get(T v) { return from_bf16(v); }
};
template <int D> struct Dst;
template <> struct Dst<T_F32> {
    typedef float T;
    static __device__ __forceinline__ T put(float v) { return v; }
};
template <> struct Dst<T_F16> {
    typedef unsigned short T;
    static __device__ __forceinline__ T put(float v) { return to_f16(v); }
};
template <> struct Dst<T_BF16> {
    typedef unsigned short T;
    static __device__ __forceinline__ T put(float v) { return to_bf16(v); }
};

// Four elements a step where both buffers allow 8-byte-or-wider vectors (the
// 16-bit side moves 8 bytes, float32 16), else one.
template <int S, int D> __device__ void convert_n(const void* src, void* dst, i64 n) {
    typedef typename Src<S>::T ST;
    typedef typename Dst<D>::T DT;
    const ST* x = (const ST*)src;
    DT* y = (DT*)dst;
    const i64 t = grid_thread(), stride = grid_threads();
    const bool vec = ((unsigned long long)x % (4 * sizeof(ST))) == 0 && ((unsigned long long)y % (4 * sizeof(DT))) == 0;
    i64 done = 0;
    if (vec) {
        const i64 quads = n / 4;
        for (i64 q = t; q < quads; q += stride) {
            ST in[4];
            DT out[4];
            if (sizeof(ST) == 4) *(float4*)in = ((const float4*)x)[q];
            else *(uint2*)in = ((const uint2*)x)[q];
#pragma unroll
            for (int u = 0; u < 4; ++u) out[u] = Dst<D>::put(Src<S>::get(in[u]));
            if (sizeof(DT) == 4) ((float4*)y)[q] = *(float4*)out;
            else ((uint2*)y)[q] = *(uint2*)out;
        }
        done = quads * 4;
    }
    for (i64 i = done + t; i < n; i += stride) y[i] = Dst<D>::put(Src<S>::get(x[i]));
}

// Launch: block 256, grid n1024(n). src_type != dst_type (the same type is a
// copy), both T_F32, T_F16 or T_BF16; src and dst do not overlap.
extern "C" __global__ void convert(const void* src, int src_type, void* dst, int dst_type, i64 n) {
    if (src_type == T_F32 && dst_type == T_F16) convert_n<T_F32, T_F16>(src, dst, n);
    else if (src_type == T_F32 && dst_type == T_BF16) convert_n<T_F32, T_BF16>(src, dst, n);
    else if (src_type == T_F16 && dst_type == T_F32) convert_n<T_F16, T_F32>(src, dst, n);
    else if (src_type == T_BF16 && dst_type == T_F32) convert_n<T_BF16, T_F32>(src, dst, n);
    else if (src_type == T_F16 && dst_type == T_BF16) convert_n<T_F16, T_BF16>(src, dst, n);
    else if (src_type == T_BF16 && dst_type == T_F16) convert_n<T_BF16, T_F16>(src, dst, n);
}
