#!/usr/bin/env bash
# One device call: GPU kernel tests, then the MoE and SWAT benchmarks; everything lands in $OUT.
# Usage (device tool, repo root): bash bench/run_h200.sh [moe-args...]
set -u
OUT=${OUT:-bench_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/env.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  TIERGATE_KERNEL_TESTS_CUDA=1 timeout 150 python3 -m pytest -q -rs -p no:cacheprovider --confcutdir=tests/kernels \
    tests/kernels > "$OUT/gpu_tests.txt" 2>&1; echo "pytest rc=$?" >> "$OUT/gpu_tests.txt"; tail -n 15 "$OUT/gpu_tests.txt"
fi
if [ "${SKIP_SWAT:-0}" != 1 ]; then
  timeout 100 python3 bench/swat_linear.py --out "$OUT" > "$OUT/swat_log.txt" 2>&1; tail -n 12 "$OUT/swat_log.txt"
fi
timeout 320 python3 bench/moe_layer.py --out "$OUT" --budget-s 230 "$@" 2>&1 | tee "$OUT/moe_log.txt" | tail -n 60
