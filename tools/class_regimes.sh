#!/usr/bin/env bash
# The class-regime experiment (docs/imagenet-setting.md, "Many and fine-grained classes"), end to end: tune each
# regime's learning rates on held-out training data (1e-4, 3e-4, 1e-3 for every row; 3e-3 too for distilled_kd,
# whose best was the grid's top), then its table over three seeds with the tuned rates. Every step resumes where a
# stopped run left off, so rerunning this script after a stop costs at most one epoch.
# Run from the repository root with the data extracted into .cache/ (docs/data.md); results in runs/.
#   nohup bash tools/class_regimes.sh > runs/class_regimes.log 2>&1 &
set -euo pipefail
regimes=${REGIMES:-"imagenette mini_imagenet imagewoof tiny_imagenet"}
for regime in $regimes; do
  python -m isp_keras.experiments.tune --flagfile=flags/classes_$regime.flags --epochs=1 \
    --model_dir=runs/tune_classes_$regime
  python -m isp_keras.experiments.tune --flagfile=flags/classes_$regime.flags --epochs=1 --rows=distilled_kd \
    --lrs=3e-3 --model_dir=runs/tune_classes_${regime}_kd
done
for regime in $regimes; do
  lrs=$(python tools/best_lrs.py runs/tune_classes_$regime/results.json runs/tune_classes_${regime}_kd/results.json)
  python -m isp_keras.experiments.table --flagfile=flags/classes_$regime.flags --row_lrs=$lrs --seeds=0,1,2 \
    --model_dir=runs/table_classes_$regime
done
