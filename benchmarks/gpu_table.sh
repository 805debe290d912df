#!/usr/bin/env bash
# The GPU table of benchmarks/README.md in one go (issues 14 and 21): about 5-8 minutes on one H100/H200.
#   bash benchmarks/gpu_table.sh [OUT]             (OUT defaults to benchmarks/results_gpu.txt)
#   bash benchmarks/gpu_table.sh --dry-run [OUT]   every row for 1-2 steps at tiny shapes on the CPU, through the
#                                                  device harness (hpnb.testing: a stand-in GPU that refuses device
#                                                  mixes); `make test` runs it, so the script cannot rot
# 1. the fused-vs-reference equality check on the device (TF32 off);
# 2. the loss alone at batch 64, fused against the reference (ms, peak GiB);
# 3. a full training iteration at the COCO-Stuff shapes, batch 64 and 32 (ms/iteration, peak GiB, GPU name),
#    with the loss fused (--loss-path on) and, for batch 64, on the reference path (off: what "auto" takes on CUDA
#    until this table says the fused path is faster there).
# Every step's output goes to OUT as it comes; a step that fails or passes its time limit is reported and the next
# one still runs. The limits add up to 9 minutes, inside one 10-minute device call. The exit status is the number
# of steps that failed (0: every row ran).
set -u
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY=1
  shift
fi
OUT=${1:-benchmarks/results_gpu.txt}
[ "$DRY" = 1 ] && OUT=${1:-benchmarks/results_gpu_dry_run.txt}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
: > "$OUT"
FAILED=0
step() {
  local limit=$1
  shift
  echo "\$ $*" | tee -a "$OUT"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v "it/s" | tee -a "$OUT"
  local status=${PIPESTATUS[0]}
  echo "(exit $status, $((SECONDS - start)) s)" | tee -a "$OUT"
  [ "$status" = 0 ] || FAILED=$((FAILED + 1))
}
if [ "$DRY" = 1 ]; then
  # the same rows at tiny shapes: --device fake, a 6x6 patch grid (48 px with ViT-S/8), M=8, 1-2 steps
  echo "dry run on the CPU through the device harness (no GPU numbers): $(date -u)" | tee -a "$OUT"
  DEV=fake
  EQ=(--batch 2 --grid 6)
  LOSS=(--batch 2 --repeats 1 -- --grid 6 --pool 16 --dim 32)
  TRAIN=(--iters 1 res=48 val_res=48 pool_size=8 dim=32)
  B64=2
  B32=2
else
  { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } | tee -a "$OUT"
  step 30 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  DEV=cuda
  EQ=(--batch 8)
  LOSS=(--batch 64 --repeats 3 --)
  TRAIN=(--iters 5)
  B64=64
  B32=32
fi
step 60 "$PY" benchmarks/fused_equality.py --device "$DEV" "${EQ[@]}"
step 150 "$PY" benchmarks/loss_fused.py "${LOSS[@]}" --device "$DEV"
step 100 "$PY" benchmarks/train_step.py --preset cocostuff27 --batch "$B64" --device "$DEV" --loss-path on "${TRAIN[@]}"
step 100 "$PY" benchmarks/train_step.py --preset cocostuff27 --batch "$B32" --device "$DEV" --loss-path on "${TRAIN[@]}"
step 100 "$PY" benchmarks/train_step.py --preset cocostuff27 --batch "$B64" --device "$DEV" --loss-path off "${TRAIN[@]}"
echo "done: $OUT ($FAILED failed)" | tee -a "$OUT"
exit "$FAILED"
