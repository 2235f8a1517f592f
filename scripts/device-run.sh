#!/usr/bin/env bash
# Runs on the GPU machine, from the repo root, after scripts/stage-device.sh
# carried .device/ there. Steps (default: all):
#   tests      every Rust test binary, GPU tests included, and the kernel check
#   gpu-tests  only the GPU test binaries (gpu*, comm) and the kernel check
#   examples   train_moe for 30 steps on the CPU and on the GPU (losses
#              compared), then generate_moe from the model on each
#   python     the Python package's device-memory and thread tests
#   sanitize   compute-sanitizer memcheck and racecheck on the GPU tests
#   bench      `cudann info`, `cudann bench`, the host-overhead probe and the
#              GPU benchmark
# Logs go to $OUT (or /tmp/out), packed at the end into logs.tgz; exits 1 if
# any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}
mkdir -p "$out"
cublas=$(find / -name 'libcublas.so.1[23]' -not -path '/proc/*' 2>/dev/null | head -1)
nccl=$(find / -name 'libnccl.so.2' -not -path '/proc/*' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$(dirname "${cublas:-/x}"):$(dirname "${nccl:-/x}"):$PWD/.device:${LD_LIBRARY_PATH:-}"
export CUDANN_LIB=$PWD/.device/libcudann.so
# Programs linked with -lcudann load it by its soname.
ln -sf libcudann.so .device/libcudann.so.0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
echo "cublas: ${cublas:-none}; nccl: ${nccl:-none}" | tee -a "$out/gpu.txt"
[ -d .device/tests ] || tar -C .device -xJf .device/tests.tar.xz
steps=${*:-tests examples python sanitize bench}
failed=0
run_tests() {
  for t in "$@"; do
    echo "=== $(basename "$t")"
    timeout 300 "$t" --test-threads=4 > /tmp/test.log 2>&1 || { failed=1; echo "FAILED: $t"; grep -E "panicked" -A3 /tmp/test.log | head -30; }
    { echo "=== $(basename "$t")"; cat /tmp/test.log; } >> "$out/tests.log"
    grep -E "test result|SKIPPED" /tmp/test.log | head -4
  done
  timeout 300 python3 kernels/check_kernels.py > "$out/check_kernels.log" 2>&1 || { failed=1; echo "FAILED: check_kernels"; grep FAIL "$out/check_kernels.log" | head; }
  tail -2 "$out/check_kernels.log"
}
for step in $steps; do
  case $step in
  tests) run_tests .device/tests/* ;;
  gpu-tests) run_tests .device/tests/gpu* .device/tests/comm ;;
  examples)
    for prog in train_moe generate_moe; do
      cc -std=c11 -O2 -Iinclude examples/$prog.c examples/moe_model.c -L.device -lcudann -Wl,-rpath,$PWD/.device -lm -o /tmp/$prog || { failed=1; echo "FAILED: building $prog"; }
    done
    python3 examples/make_data.py --vocab 1000 --tokens 50000 --out /tmp/tiny.bin > /dev/null
    for b in cpu cuda; do
      CUDANN_BACKEND=$b timeout 300 /tmp/train_moe --config examples/tiny/config.json --seed 1 --data /tmp/tiny.bin --batch 8 --seq 64 --steps 30 --lr 3e-3 \
        --log "$out/train-$b.jsonl" --save /tmp/model-$b > "$out/train-$b.txt" 2>&1 || { failed=1; echo "FAILED: train_moe on $b"; }
      CUDANN_BACKEND=$b timeout 60 /tmp/generate_moe --model /tmp/model-cpu --prompt "1 2 3" --max-new 12 > "$out/generate-$b.txt" 2>> "$out/generate-stderr.txt" || { failed=1; echo "FAILED: generate_moe on $b"; }
      CUDANN_BACKEND=$b timeout 60 /tmp/generate_moe --model /tmp/model-cpu --prompt "1 2 3" --max-new 12 --dtype bf16 > "$out/generate-bf16-$b.txt" 2>> "$out/generate-stderr.txt" || { failed=1; echo "FAILED: generate_moe --dtype bf16 on $b"; }
    done
    # Half weights: rounding differs between the backends, so tokens are compared, not required equal.
    for f in generate-bf16-cpu generate-bf16-cuda; do echo "$f: $(cat "$out/$f.txt") (float32: $(cat "$out/generate-cpu.txt"))"; done
    python3 - "$out" <<'PY' || failed=1
import json, sys
out = sys.argv[1]
rows = {b: [json.loads(l) for l in open(f"{out}/train-{b}.jsonl")] for b in ("cpu", "cuda")}
worst = max(abs(g["loss"] - c["loss"]) / abs(c["loss"]) for c, g in zip(rows["cpu"], rows["cuda"]))
ms = {b: sum(r["ms"] for r in rows[b][5:]) / (len(rows[b]) - 5) for b in rows}
print(f"train_moe: {len(rows['cuda'])} GPU steps, largest relative loss difference from the CPU {worst:.2e} (limit 1e-4); "
      f"ms/step: cpu {ms['cpu']:.2f}, cuda {ms['cuda']:.2f}")
same = open(f"{out}/generate-cpu.txt").read() == open(f"{out}/generate-cuda.txt").read()
print("generate_moe: the GPU's tokens equal the CPU's" if same else "generate_moe: the GPU's tokens DIFFER from the CPU's")
sys.exit(0 if worst <= 1e-4 and same and len(rows["cuda"]) == 30 else 1)
PY
    ;;
  python)
    cp .device/libcudann.so python/cudann/
    # test_half compares each half op with the float32 op on host arrays: on
    # the CPU backend, so both sides run there (auto may stage either to the GPU).
    (cd python && PYTHONPATH=$PWD timeout 300 python3 -m pytest -q -rs tests/test_device_memory.py tests/test_threads.py > "$out/pytest.log" 2>&1 &&
      PYTHONPATH=$PWD CUDANN_BACKEND=cpu timeout 300 python3 -m pytest -q -rs tests/test_half.py >> "$out/pytest.log" 2>&1) || { failed=1; echo "FAILED: pytest"; }
    tail -4 "$out/pytest.log"
    ;;
  sanitize)
    for tool in memcheck racecheck; do
      : > "$out/sanitizer-$tool.log"
      for t in gpu gpu_tf32 gpu_training gpu_half; do
        # Racecheck runs the eight-thread training test past the timeout
        # (H100: over 300 s); its kernels are the other tests' kernels.
        skip=(); [ "$tool/$t" = racecheck/gpu_training ] && skip=(--skip training_ops_from_eight_threads)
        timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 9 ".device/tests/$t" --test-threads=1 "${skip[@]}" >> "$out/sanitizer-$tool.log" 2>&1 \
          || { failed=1; echo "FAILED: compute-sanitizer $tool $t"; }
      done
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" "$out/sanitizer-$tool.log"
    done
    ;;
  bench)
    .device/cudann info | tee "$out/cudann-info.txt"
    .device/cudann bench --compare 2>/dev/null | tee "$out/cudann-bench.txt"
    nvcc -O2 -std=c++17 bench/gpu/overhead.cu -Iinclude -L.device -lcudann -o /tmp/overhead && /tmp/overhead | tee "$out/overhead.txt"
    python3 bench/gpu/gpu_bench.py .device/libcudann.so 2>&1 | tee "$out/gpu_bench.txt"
    CUDANN_ALLOW_TF32=1 python3 bench/gpu/gpu_bench.py .device/libcudann.so attention 2>&1 | grep tf32 | tee -a "$out/gpu_bench.txt"
    ;;
  *) echo "unknown step $step"; failed=1 ;;
  esac
done
# The device tool brings back only a few files of $OUT: one archive of all the logs.
tar czf /tmp/device-logs.tgz -C "$out" . && find "$out" -mindepth 1 -delete && mv /tmp/device-logs.tgz "$out/logs.tgz"
exit $failed
