#!/usr/bin/env bash
# Runs on the GPU machine, from the repo root, after scripts/stage-device.sh
# carried .device/ there: every Rust test binary (GPU tests included), the
# kernel check, compute-sanitizer memcheck and racecheck on the GPU tests,
# `cudann info` and `cudann bench`, the host-overhead probe and the GPU
# benchmark. Logs go to $OUT (or /tmp/out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}
mkdir -p "$out"
cublas=$(find / -name 'libcublas.so.1[23]' -not -path '/proc/*' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$(dirname "${cublas:-/x}"):$PWD/.device:${LD_LIBRARY_PATH:-}"
# Programs linked with -lcudann load it by its soname.
ln -sf libcudann.so .device/libcudann.so.0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
echo "cublas: ${cublas:-none}" | tee -a "$out/gpu.txt"
[ -d .device/tests ] || tar -C .device -xJf .device/tests.tar.xz
step=${1:-all}
failed=0
if [ "$step" = all ] || [ "$step" = tests ]; then
  for t in .device/tests/*; do
    echo "=== $(basename "$t")"
    "$t" --test-threads=4 > /tmp/test.log 2>&1 || { failed=1; echo "FAILED: $t"; grep -E "panicked|left|right|got|want" -A1 /tmp/test.log | head -30; }
    { echo "=== $(basename "$t")"; cat /tmp/test.log; } >> "$out/tests.log"
    grep -E "test result|SKIPPED" /tmp/test.log | head -3
  done
  python3 kernels/check_kernels.py > "$out/check_kernels.log" 2>&1 || { failed=1; echo "FAILED: check_kernels"; }
  tail -5 "$out/check_kernels.log"
fi
if [ "$step" = all ] || [ "$step" = sanitize ]; then
  for tool in memcheck racecheck; do
    : > "$out/sanitizer-$tool.log"
    for t in gpu gpu_tf32 gpu_training; do
      compute-sanitizer --tool "$tool" --error-exitcode 9 ".device/tests/$t" --test-threads=1 >> "$out/sanitizer-$tool.log" 2>&1 \
        || { failed=1; echo "FAILED: compute-sanitizer $tool $t"; }
    done
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" "$out/sanitizer-$tool.log"
  done
fi
if [ "$step" = all ] || [ "$step" = bench ]; then
  .device/cudann info | tee "$out/cudann-info.txt"
  .device/cudann bench --compare 2>/dev/null | tee "$out/cudann-bench.txt"
  nvcc -O2 -std=c++17 bench/gpu/overhead.cu -Iinclude -L.device -lcudann -o /tmp/overhead && /tmp/overhead | tee "$out/overhead.txt"
  python3 bench/gpu/gpu_bench.py .device/libcudann.so 2>&1 | tee "$out/gpu_bench.txt"
  CUDANN_ALLOW_TF32=1 python3 bench/gpu/gpu_bench.py .device/libcudann.so attention 2>&1 | grep tf32 | tee -a "$out/gpu_bench.txt"
fi
exit $failed
