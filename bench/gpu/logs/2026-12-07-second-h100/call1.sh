#!/usr/bin/env bash
# Session 2026-12-07 (second), call 1 (H200): the whole test suite of the 76a3d79
# bundle through scripts/device-run.sh: `tests` (every Rust test binary, GPU
# tests included, and check_kernels.py), then `examples python`, then
# gpu_bench's decode rows (76a3d79's one-exponential softmax on a GPU).
mkdir -p /tmp/out; REAL_OUT=${REAL_OUT:?}
save() { tar czf $REAL_OUT/logs.tgz -C /tmp/out . 2>/dev/null; }
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
cp probe_tmp/h1.sh /tmp/out/call.sh.txt
OUT=/tmp/out/tests timeout 320 bash scripts/device-run.sh tests > /tmp/out/tests.txt 2>&1; el "device-run tests rc=$?"
grep -E "test result" /tmp/out/tests.txt | awk '{p+=$4; f+=$6; s+=$8} END {print "binaries:", NR, "passed", p, "failed", f, "ignored", s}'
grep -E "FAILED|panicked|SKIPPED|all kernels" -A2 /tmp/out/tests.txt | head -30; tail -3 /tmp/out/tests.txt; save
OUT=/tmp/out/ex timeout 200 bash scripts/device-run.sh examples python > /tmp/out/ex.txt 2>&1; el "device-run examples python rc=$?"
tail -12 /tmp/out/ex.txt; save
export LD_LIBRARY_PATH="$(dirname $(find / -name 'libcublas.so.1[23]' -not -path '/proc/*' 2>/dev/null | head -1)):$PWD/.device:${LD_LIBRARY_PATH:-}"
timeout 60 python3 bench/gpu/gpu_bench.py .device/libcudann.so decode > /tmp/out/gpu_bench_decode.txt 2>&1; el "decode bench rc=$?"
grep -E "decode" /tmp/out/gpu_bench_decode.txt | head -20; save
