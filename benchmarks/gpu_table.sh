#!/usr/bin/env bash
# The GPU table of benchmarks/README.md in one go (issue 14): about 5-8 minutes on one H100/H200.
#   bash benchmarks/gpu_table.sh [OUT]        (OUT defaults to benchmarks/results_gpu.txt)
# 1. a full training iteration at the COCO-Stuff shapes, batch 64 and 32 (ms/iteration, peak GiB, GPU name),
#    with the loss fused (--loss-path on) and, for batch 64, on the reference path (off: what "auto" takes on CUDA
#    until this table says the fused path is faster there);
# 2. the loss alone at batch 64, fused against the reference (ms, peak GiB);
# 3. the fused-vs-reference equality check on CUDA.
# Every step's output goes to OUT as it comes; a step that fails or passes its time limit is reported and the next
# one still runs. The limits add up to 9 minutes, inside one 10-minute device call.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results_gpu.txt}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
: > "$OUT"
step() {
  local limit=$1
  shift
  echo "\$ $*" | tee -a "$OUT"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v "it/s" | tee -a "$OUT"
  echo "(exit ${PIPESTATUS[0]}, $((SECONDS - start)) s)" | tee -a "$OUT"
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } | tee -a "$OUT"
step 30 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
step 60 "$PY" benchmarks/fused_equality.py --device cuda --batch 8
step 150 "$PY" benchmarks/loss_fused.py --batch 64 --repeats 3 -- --device cuda
step 100 "$PY" benchmarks/train_step.py --preset cocostuff27 --batch 64 --iters 5 --device cuda --loss-path on
step 100 "$PY" benchmarks/train_step.py --preset cocostuff27 --batch 32 --iters 5 --device cuda --loss-path on
step 100 "$PY" benchmarks/train_step.py --preset cocostuff27 --batch 64 --iters 5 --device cuda --loss-path off
echo "done: $OUT"
