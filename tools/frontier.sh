#!/usr/bin/env bash
# Students cheaper than the teacher (docs/deploy.md, "Smaller students"), end to end: each MobileNetV1 file as a
# student of the MobileNetV2 teacher (flags/frontier_mobilenetv2.flags); the same network distilled from its own RGB
# self (the paper's recipe, flags/imagenette.flags) and then judged by MobileNetV2 on RAW (its student_raw row); the
# deploy benchmark of the MobileNetV2-distilled student (int8 latency and size, RAW path against LibRaw + MobileNetV2
# at 224 px); then the frontier table and plot. Every step resumes (a finished table row is not trained again, a
# written benchmark is kept). Run from the repository root with Imagenette in .cache/imagenette (docs/data.md):
#   nohup bash tools/frontier.sh > runs/frontier.log 2>&1 &
set -euo pipefail
models=../shared/models/imagenet-tflite
out=runs/frontier
students=${STUDENTS:-"mobilenet_v1_0.25_128 mobilenet_v1_0.5_160 mobilenet_v1_0.75_192"}

# A student's finished tables and benchmark, copied into docs/results/ (frontier_<student>_<part>, bench_deploy_...).
publish() {
  local name=$1 dir=$out/$1
  for part in from_mobilenetv2 self self_judged; do
    if [[ -f $dir/$part/results.json ]]; then
      cp $dir/$part/results.json docs/results/frontier_${name}_$part.json
      cp $dir/$part/results.md docs/results/frontier_${name}_$part.md
    fi
  done
  cp $dir/bench.json docs/results/bench_deploy_frontier_$name.json
}
for student in $students; do
  file=$models/${student}_quant.tflite
  dir=$out/$student
  python -m isp_keras.experiments.table --flagfile=flags/frontier_mobilenetv2.flags --student_init=$file \
    --model_dir=$dir/from_mobilenetv2
  python -m isp_keras.experiments.table --flagfile=flags/imagenette.flags --teacher=$file --rows=distilled \
    --model_dir=$dir/self
  python -m isp_keras.experiments.table --flagfile=flags/frontier_mobilenetv2.flags \
    --student_init=$dir/self/distilled/student.keras --rows=student_raw --model_dir=$dir/self_judged
  if [[ ! -f $dir/bench.json ]]; then
    python -m isp_keras.benchmark --suite=deploy --student=$dir/from_mobilenetv2/distilled --nomobilenet \
      --full_size_mp=0 --json=$dir/bench.json
  fi
  publish $student
done
# MobileNetV2 itself: the paper's student (the teacher's own architecture and weights), for the frontier's top end.
dir=$out/mobilenet_v2_1.0_224
python -m isp_keras.experiments.table --flagfile=flags/frontier_mobilenetv2.flags --student_init= \
  --rows=teacher_clean,teacher_raw,distilled --model_dir=$dir/from_mobilenetv2
if [[ ! -f $dir/bench.json ]]; then
  python -m isp_keras.benchmark --suite=deploy --student=$dir/from_mobilenetv2/distilled --nomobilenet \
    --full_size_mp=0 --json=$dir/bench.json
fi
publish mobilenet_v2_1.0_224
python tools/frontier.py docs/results/frontier_mobilenetv2 $out
