// Rotary position embedding: the angle table and the pairwise rotations.
#include "common.cuh"

// Launch: block 256, grid n1024(max_seq_len * head_dim / 2). freqs[p, i] =
// (float)(p * theta_i), theta_i = B^(-2i/d) in double with the NTK-aware base
// B = base * alpha^(d / (d - 2)) (B = base when alpha == 1), as the CPU backend.
extern "C" __global__ void rope_freqs_f32(float* freqs, int max_seq_len, int head_dim, float base, float alpha) {
    const int half = head_dim / 2;
    const i64 n = (i64)max_seq_len * half;
    const double d = (double)head_dim;
    const double b = alpha == 1.0f ? (double)base : (double)base * pow((double)alpha, d / (d - 2.0));
    for (i64 e = grid_thread(); e < n; e += grid_threads()) {
        const i64 p = e / half;
        const int i = (int)(e - p * half);
        freqs[e] = (float)((double)p * pow(b, -2.0 * i / d));
    }
}

// Launch: block 256, grid n1024(tokens * heads * head_dim / 2); y == x allowed.
// x, y are [tokens, heads, head_dim] (tokens = batch * seq_len); token t sits at
// position p = t % seq_len + offset and pair i = (x[2i], x[2i+1]) of every head
// turns by a = freqs[p * d/2 + i], or with dynamic NTK scaling (ntk_alpha != 1)
// by (float)((double)a * ntk_alpha^(-2i/(d-2))). y = (x0 cos a - x1 sin a,
// x0 sin a + x1 cos a), rounded after every product like the CPU backend.
// rope_rotate_back_f32 (the backward) turns by -a instead, same launch.
template <bool INVERSE>
__device__ void rope_rotate(const float* x, const float* freqs, float* y, i64 tokens, int seq_len, int heads,
                            int head_dim, int offset, float ntk_alpha) {
    const int half = head_dim / 2;
    const i64 per_token = (i64)heads * half;
    const i64 n = tokens * per_token;
    const bool pairs8 = ((unsigned long long)x & 7) == 0 && ((unsigned long long)y & 7) == 0;
    for (i64 e = grid_thread(); e < n; e += grid_threads()) {
        const i64 t = e / per_token;
        const int i = (int)((e - t * per_token) % half);
        const i64 pos = t % seq_len + offset;
        float a = freqs[pos * half + i];
        if (ntk_alpha != 1.0f) a = (float)((double)a * pow((double)ntk_alpha, -2.0 * i / (head_dim - 2.0)));
        float s, c;
        sincosf(a, &s, &c);
        if (INVERSE) s = -s;  // the rotation back: by -a
        float x0, x1;
        if (pairs8) {
            const float2 v = reinterpret_cast<const float2*>(x)[e];
            x0 = v.x, x1 = v.y;
        } else {
            x0 = x[2 * e], x1 = x[2 * e + 1];
        }
        const float y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        const float y1 = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
        if (pairs8) {
            reinterpret_cast<float2*>(y)[e] = make_float2(y0, y1);
        } else {
            y[2 * e] = y0, y[2 * e + 1] = y1;
        }
    }
}

extern "C" __global__ void rope_rotate_f32(const float* x, const float* freqs, float* y, i64 tokens, int seq_len,
                                           int heads, int head_dim, int offset, float ntk_alpha) {
    rope_rotate<false>(x, freqs, y, tokens, seq_len, heads, head_dim, offset, ntk_alpha);
}

extern "C" __global__ void rope_rotate_back_f32(const float* x, const float* freqs, float* y, i64 tokens,
                                                int seq_len, int heads, int head_dim, int offset, float ntk_alpha) {
    rope_rotate<true>(x, freqs, y, tokens, seq_len, heads, head_dim, offset, ntk_alpha);
}
