#!/usr/bin/env bash
# The CamVid runs of results/camvid/: the camvid-cpu preset (which keeps the official operating point, see
# docs/deviations.md) as full HP and three Table 4 ablations, 3 seeds each, trained and evaluated by the command
# line. Each evaluation's eval_test.json is copied unchanged into results/camvid/. Resumable: a finished copy is
# skipped, an interrupted training resumes from its checkpoint.
#   bash tools/camvid_results.sh            (about 7 min per run on 2 CPU cores; 12 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
declare -A VARIANTS=(
  [full]=""
  [no-lhp]="use_lhp=false"
  [no-sp]="use_sp=false"
  [eq1]="objective=self"
)
mkdir -p results/camvid
for name in full no-lhp no-sp eq1; do
  for seed in 0 1 2; do
    dest="results/camvid/${name}_seed${seed}_test.json"
    [ -f "$dest" ] && { echo "done already: $dest"; continue; }
    run="runs/camvid-cpu/${name}_seed${seed}"
    $PY -m hpnb train --preset camvid-cpu --out "$run" --resume seed="$seed" crf=false ${VARIANTS[$name]}
    $PY -m hpnb evaluate "$run" --split test --no-crf
    cp "$run/eval_test.json" "$dest"
  done
done
