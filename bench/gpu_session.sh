#!/usr/bin/env bash
# The device checks of issues #5 (Triton kernels) and #6 (gpu-small MFU) as ONE call, for a session lent a GPU.
# From the repository root, on the GPU machine (its python3 already has torch, triton, transformers, accelerate):
#     bash bench/gpu_session.sh          # about 5-8 minutes; give it timeout_s=540
# Writes gpu.txt, moe_kernels.log, moe_kernels.json/.md, train_gpu.log and the two records ($OUT/records/)
# into $OUT (or /tmp/gpu_out); copy the records into bench/results/ and run `python tools/make_results.py`.
# On a machine without CUDA both benchmarks say so and stop at once (moe_kernels exits 2, train_gpu 0).
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
unset TRITON_INTERPRET                       # the interpreter is for CPU tests only
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
PY="${PYTHON:-python3}"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1;
  "$PY" -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'; } | tee "$OUT/gpu.txt"
timeout 300 "$PY" bench/moe_kernels.py --out "$OUT" 2>&1 | tee "$OUT/moe_kernels.log"; k=$?
timeout 200 "$PY" bench/train_gpu.py 2>&1 | tee "$OUT/train_gpu.log"; t=$?
echo "moe_kernels exit $k, train_gpu exit $t" | tee -a "$OUT/gpu.txt"
mkdir -p "$OUT/records"; cp bench/results/moe_kernels.json bench/results/train_gpu.json "$OUT/records/" 2>/dev/null
grep -h -e '^moe_kernels ' -e '^train_gpu ' "$OUT/moe_kernels.log" "$OUT/train_gpu.log"
[ $k -eq 0 ] && [ $t -eq 0 ]
