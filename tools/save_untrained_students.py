"""Save the teacher itself as untrained RAW students, infill and packed, for deploy measurements that need no
training: latency, size, and int8 agreement at equal float functions (at initialisation the packed student
computes the infill student's function). Takes train's flags and writes MODEL_DIR/<input>/student.keras (+ .json):
    python tools/save_untrained_students.py --flagfile=flags/imagenette.flags \
        --teacher=../shared/models/imagenet-tflite/tf2_mobilenet_v2_1.0_224_ptq.tflite \
        --model_dir=runs/untrained_mobilenetv2
"""

import dataclasses
from pathlib import Path

from isp_keras import cli
from isp_keras.training.config import TrainConfig

INPUTS = ("infill", "packed")


def run(cfg: TrainConfig) -> None:
    from isp_keras.training import experiment

    for student_input in INPUTS:
        s = experiment.build_setup(dataclasses.replace(cfg, student_input=student_input))
        out = Path(cfg.model_dir) / student_input
        out.mkdir(parents=True, exist_ok=True)
        experiment.save_student(experiment.build_student(s, None, sync_bn=False), out, s)
        print(f"wrote {out / 'student.keras'}")


if __name__ == "__main__":
    cli.main(TrainConfig, run)
