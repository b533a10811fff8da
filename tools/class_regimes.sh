#!/usr/bin/env bash
# The class-regime experiment (docs/imagenet-setting.md, "Many and fine-grained classes"), end to end: tune each
# regime's learning rates on held-out training data (1e-4, 3e-4, 1e-3 for every row; 3e-3 too for distilled_kd when
# 1e-3, the grid's top, was its best), then its table over three seeds with the tuned rates. A regime whose tuning is
# already published in docs/results/classes_tune_<regime>[_kd].json is not tuned again. Every step resumes where a
# stopped run left off, so rerunning this script after a stop costs at most one epoch; a table's finished rows kept in
# git with `python tools/run_rows.py save runs/table_classes_<regime>` carry over to a fresh machine.
# Run from the repository root with the data extracted into .cache/ (docs/data.md); results in runs/.
#   nohup bash tools/class_regimes.sh > runs/class_regimes.log 2>&1 &
set -euo pipefail
regimes=${REGIMES:-"imagewoof mini_imagenet tiny_imagenet imagenette"}

# The results.json of a tuning step: the published one, or a run made here.
tune() {
  local name=$1
  shift
  if [[ -f docs/results/classes_tune_$name.json ]]; then
    echo docs/results/classes_tune_$name.json
  else
    python -m isp_keras.experiments.tune "$@" --epochs=1 --model_dir=runs/tune_classes_$name >&2
    echo runs/tune_classes_$name/results.json
  fi
}

for regime in $regimes; do
  files=$(tune $regime --flagfile=flags/classes_$regime.flags)
  if [[ $(python tools/best_lrs.py $files) == *distilled_kd=0.001* ]]; then
    files="$files $(tune ${regime}_kd --flagfile=flags/classes_$regime.flags --rows=distilled_kd --lrs=3e-3)"
  fi
  # Rows finished on another machine (kept with tools/run_rows.py save) are not trained again.
  if [[ -f docs/results/rows/table_classes_$regime.json ]]; then
    python tools/run_rows.py restore runs/table_classes_$regime
  fi
  python -m isp_keras.experiments.table --flagfile=flags/classes_$regime.flags --row_lrs=$(python tools/best_lrs.py $files) \
    --seeds=0,1,2 --model_dir=runs/table_classes_$regime
done
