// Host-side cost of a small all-device call (pointer classification included):
// cuda_silu on 1-element device buffers, timed in batches short enough that the
// stream's queue never fills (a full queue would time the GPU, not the host).
#include <chrono>
#include <cstdio>
#include <cuda_runtime.h>
#include "cudann.h"

template <class F> double host_us_per_call(cudaStream_t s, F call) {
    const int rounds = 200, batch = 256;
    double total = 0;
    for (int r = 0; r < rounds; r++) {
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < batch; i++) call();
        total += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
        cudaStreamSynchronize(s);
    }
    return total / (rounds * batch);
}

int main() {
    float *x, *y;
    cudaMalloc(&x, 256);
    cudaMalloc(&y, 256);
    cudaStream_t s;
    cudaStreamCreate(&s);
    for (int i = 0; i < 1000; i++) cuda_silu(x, y, 1, s);  // warm-up: module load, probe
    cudaStreamSynchronize(s);
    int failures = 0;
    double ours = host_us_per_call(s, [&] { failures += cuda_silu(x, y, 1, s) != 0; });
    double checks = host_us_per_call(s, [&] { cuda_silu(x, y, 0, s); });  // size 0: boundary + checks only
    double memset = host_us_per_call(s, [&] { cudaMemsetAsync(y, 0, 4, s); });
    if (failures) { printf("failed: %s\n", cudann_last_error()); return 1; }
    printf("host overhead per small all-device call: %.2f us (boundary + checks: %.2f us; "
           "a bare cudaMemsetAsync: %.2f us; target <= 4 us)\n", ours, checks, memset);
    return 0;
}
