// SiLU, add, mul, scale. Launch: block 256, grid min(ceil(n / 1024), 65535);
// grid-stride, so any grid is correct. Every output may be the very same
// buffer as an input: each element is read before the same thread writes it.
#include "common.cuh"

// x * sigmoid(x), accurate to a few ulp over all floats.
__device__ __forceinline__ float silu(float x) {
    // e^-x stays finite down to -80, and x / (1 + e^-x) is then well conditioned.
    if (x > -80.0f) return x / (1.0f + expf(-x));
    // Below, 1 + e^x rounds to 1 and x e^x is subnormal or nearly: splitting
    // e^x = h * h keeps each factor normal, so only the final product rounds
    // into the subnormals. -inf (and anything below -200) gives -0, the limit.
    if (x < -200.0f) return -0.0f;
    const float h = expf(0.5f * x);
    return (x * h) * h;  // NaN falls through to here and stays NaN
}

struct Silu {
    __device__ float operator()(float x) const { return silu(x); }
};
struct Scale {
    float s;
    __device__ float operator()(float x) const { return x * s; }
};
struct Add {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct Mul {
    __device__ float operator()(float a, float b) const { return a * b; }
};

// y[i] = f(x[i]); float4 when both pointers are 16-byte aligned, scalar tail.
template <class F> __device__ void map1(const float* x, float* y, i64 n, F f) {
    const i64 t = grid_thread(), stride = grid_threads();
    i64 done = 0;
    if (aligned16(x) && aligned16(y)) {
        const i64 nv = n >> 2;
        const float4* x4 = reinterpret_cast<const float4*>(x);
        float4* y4 = reinterpret_cast<float4*>(y);
        for (i64 i = t; i < nv; i += stride) {
            float4 v = x4[i];
            v.x = f(v.x), v.y = f(v.y), v.z = f(v.z), v.w = f(v.w);
            y4[i] = v;
        }
        done = nv << 2;
    }
    for (i64 i = done + t; i < n; i += stride) y[i] = f(x[i]);
}

// y[i] = f(a[i], b[i]); same layout as map1.
template <class F> __device__ void map2(const float* a, const float* b, float* y, i64 n, F f) {
    const i64 t = grid_thread(), stride = grid_threads();
    i64 done = 0;
    if (aligned16(a) && aligned16(b) && aligned16(y)) {
        const i64 nv = n >> 2;
        const float4* a4 = reinterpret_cast<const float4*>(a);
        const float4* b4 = reinterpret_cast<const float4*>(b);
        float4* y4 = reinterpret_cast<float4*>(y);
        for (i64 i = t; i < nv; i += stride) {
            const float4 u = a4[i], v = b4[i];
            y4[i] = make_float4(f(u.x, v.x), f(u.y, v.y), f(u.z, v.z), f(u.w, v.w));
        }
        done = nv << 2;
    }
    for (i64 i = done + t; i < n; i += stride) y[i] = f(a[i], b[i]);
}

extern "C" __global__ void silu_f32(const float* x, float* y, i64 n) { map1(x, y, n, Silu()); }

extern "C" __global__ void add_f32(const float* a, const float* b, float* y, i64 n) { map2(a, b, y, n, Add()); }

extern "C" __global__ void mul_f32(const float* a, const float* b, float* y, i64 n) { map2(a, b, y, n, Mul()); }

extern "C" __global__ void scale_f32(const float* x, float* y, float s, i64 n) { map1(x, y, n, Scale{s}); }
