// SiLU, add, mul, scale; the training activations (SiLU and GELU backward,
// GELU, SwiGLU and its backward), bias add and the bias gradient. Launch
// (except column_sums_f32): block 256, grid min(ceil(n / 1024), 65535);
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


// ----------------------------------------------------------------------------- training activations
// The formulas of the CPU backend (src/cpu/elementwise.rs), so both agree to a
// few ulp; NaN propagates.

// sigmoid(x) = 1 / (1 + e^-|x|), mirrored for x < 0: e^-|x| <= 1 never overflows.
__device__ __forceinline__ float sigmoid(float x) {
    const float e = expf(-fabsf(x));
    const float s = 1.0f / (1.0f + e);
    return x >= 0.0f ? s : e * s;
}

// Clamp that keeps NaN (fminf/fmaxf would turn it into a bound).
__device__ __forceinline__ float clamp_keep_nan(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

// d silu / dx = s (1 + x (1 - s)); past |x| = 100 it is 0 or 1 in f32, and the
// clamp keeps x = +-inf from giving 0 * inf.
__device__ __forceinline__ float silu_grad(float x) {
    x = clamp_keep_nan(x, -100.0f, 100.0f);
    const float s = sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}

// GELU, tanh form, as x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): the
// same function with no cancellation near 0. Past |x| = 50 GELU is x or -0
// and its slope 1 or 0; the clamp keeps x^3 finite.
#define GELU_C 0.7978846f  // sqrt(2 / pi)
#define GELU_A 0.044715f
#define GELU_CLAMP 50.0f

__device__ __forceinline__ float gelu(float x) {
    const float c = clamp_keep_nan(x, -GELU_CLAMP, GELU_CLAMP);
    // fmaxf(x, c) is x except below the clamp, where sigmoid is 0: -0, not -inf * 0.
    return fmaxf(x, c) * sigmoid(2.0f * GELU_C * (c + GELU_A * c * c * c));
}

// d/dx [x s(2u)] = s + x s (1 - s) 2u'(x), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
__device__ __forceinline__ float gelu_grad(float x) {
    x = clamp_keep_nan(x, -GELU_CLAMP, GELU_CLAMP);
    const float s = sigmoid(2.0f * GELU_C * (x + GELU_A * x * x * x));
    return s + x * s * (1.0f - s) * 2.0f * GELU_C * (1.0f + 3.0f * GELU_A * x * x);
}

struct Gelu {
    __device__ float operator()(float x) const { return gelu(x); }
};
struct SiluBackward {  // (d_output, input)
    __device__ float operator()(float dy, float x) const { return dy * silu_grad(x); }
};
struct GeluBackward {  // (d_output, input)
    __device__ float operator()(float dy, float x) const { return dy * gelu_grad(x); }
};
struct Swiglu {  // (gate, up)
    __device__ float operator()(float g, float u) const { return silu(g) * u; }
};

extern "C" __global__ void silu_backward_f32(const float* dy, const float* x, float* dx, i64 n) {
    map2(dy, x, dx, n, SiluBackward());
}

extern "C" __global__ void gelu_f32(const float* x, float* y, i64 n) { map1(x, y, n, Gelu()); }

extern "C" __global__ void gelu_backward_f32(const float* dy, const float* x, float* dx, i64 n) {
    map2(dy, x, dx, n, GeluBackward());
}

extern "C" __global__ void swiglu_f32(const float* gate, const float* up, float* y, i64 n) {
    map2(gate, up, y, n, Swiglu());
}

__device__ __forceinline__ void swiglu_backward_one(float dy, float g, float u, float& dg, float& du) {
    dg = dy * u * silu_grad(g);
    du = dy * silu(g);
}

// d_gate = d_output * up * silu'(gate), d_up = d_output * silu(gate). Each
// output may be any input's buffer (not the other output's): a thread reads its
// three elements before writing its two.
extern "C" __global__ void swiglu_backward_f32(const float* dy, const float* gate, const float* up, float* d_gate,
                                               float* d_up, i64 n) {
    const i64 t = grid_thread(), stride = grid_threads();
    i64 done = 0;
    if (aligned16(dy) && aligned16(gate) && aligned16(up) && aligned16(d_gate) && aligned16(d_up)) {
        const i64 nv = n >> 2;
        for (i64 i = t; i < nv; i += stride) {
            float a[4], g[4], u[4], dg[4], du[4];
            load_vec<4>(dy + 4 * i, a);
            load_vec<4>(gate + 4 * i, g);
            load_vec<4>(up + 4 * i, u);
#pragma unroll
            for (int e = 0; e < 4; ++e) swiglu_backward_one(a[e], g[e], u[e], dg[e], du[e]);
            store_vec<4>(d_gate + 4 * i, dg);
            store_vec<4>(d_up + 4 * i, du);
        }
        done = nv << 2;
    }
    for (i64 i = done + t; i < n; i += stride) {
        float dg, du;
        swiglu_backward_one(dy[i], gate[i], up[i], dg, du);
        d_gate[i] = dg, d_up[i] = du;
    }
}

// ----------------------------------------------------------------------------- bias

// y[r, c] = x[r, c] + bias[c] over x[rows, cols]; y may be x (or bias when
// rows == 1: element i is still read and written by one thread).
extern "C" __global__ void bias_add_f32(const float* x, const float* bias, float* y, int rows, int cols) {
    const i64 n = (i64)rows * cols, t = grid_thread(), stride = grid_threads();
    i64 done = 0;
    if (cols % 4 == 0 && aligned16(x) && aligned16(bias) && aligned16(y)) {
        const i64 nv = n >> 2;
        for (i64 i = t; i < nv; i += stride) {
            float v[4], b[4];
            load_vec<4>(x + 4 * i, v);
            load_vec<4>(bias + (4 * i) % cols, b);
#pragma unroll
            for (int e = 0; e < 4; ++e) v[e] += b[e];
            store_vec<4>(y + 4 * i, v);
        }
        done = nv << 2;
    }
    for (i64 i = done + t; i < n; i += stride) y[i] = x[i] + bias[i % cols];
}

// Rows per float run of column_sums_f32, as the CPU backend's column sums:
// short runs in float, their totals in double, so any number of rows keeps
// float accuracy.
#define COLUMN_RUN 32
// Rows a thread of column_sums_f32 loads before adding them: in flight at
// once, not one round trip each.
#define COLUMN_LOADS 8

// Launch: block (32, 32), grid min(ceil(cols / 32), 65535) (blocks stride over
// strips of 32 columns; one block owns a strip, so no scratch and no atomics).
// out[c] = sum over r of a[r, c] * b[r, c] (b NULL: of a[r, c]). Thread
// (x, y) sums rows y, y + 32, ... of column x in runs of COLUMN_RUN rows (float
// inside a run, double across), then the 32 row lanes are added in a fixed
// tree: bitwise the same for any grid. out may be a or b when rows == 1 (a
// column is read only by its own block, before it is written).
extern "C" __global__ void __launch_bounds__(1024) column_sums_f32(const float* a, const float* b, float* out,
                                                                   int rows, int cols) {
    __shared__ double part[32][33];  // [row lane][column]; 33 breaks bank conflicts
    const int lane = threadIdx.x, ly = threadIdx.y, ny = blockDim.y;
    for (i64 strip = blockIdx.x; strip * 32 < cols; strip += gridDim.x) {
        const i64 c = strip * 32 + lane;
        double total = 0.0;
        if (c < cols) {
            for (i64 r0 = ly; r0 < rows; r0 += (i64)ny * COLUMN_RUN) {
                float run = 0.0f;
                const i64 r_end = min((i64)rows, r0 + (i64)ny * COLUMN_RUN);
                for (i64 r1 = r0; r1 < r_end; r1 += (i64)ny * COLUMN_LOADS) {
                    // Loaded at once, added in order; zeros past the end change nothing.
                    float va[COLUMN_LOADS], vb[COLUMN_LOADS];
#pragma unroll
                    for (int i = 0; i < COLUMN_LOADS; ++i) {
                        const i64 r = r1 + (i64)i * ny, o = r * cols + c;
                        va[i] = r < r_end ? a[o] : 0.0f;
                        vb[i] = r < r_end && b ? b[o] : 0.0f;
                    }
#pragma unroll
                    for (int i = 0; i < COLUMN_LOADS; ++i) run = b ? fmaf(va[i], vb[i], run) : run + va[i];
                }
                total += run;
            }
        }
        part[ly][lane] = total;
        __syncthreads();
        for (int half = 16; half > 0; half >>= 1) {
            if (ly < half && ly + half < ny) part[ly][lane] += part[ly + half][lane];
            __syncthreads();
        }
        if (ly == 0 && c < cols) out[c] = (float)part[0][lane];
        __syncthreads();  // before the next strip overwrites part
    }
}
