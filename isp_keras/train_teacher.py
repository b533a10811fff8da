"""Train an RGB teacher (the frozen classifier ISP distillation starts from) and write it with its sidecar JSON.

  python -m isp_keras.train_teacher --dataset=records:.cache/cifar10_full --arch=resnet20 --epochs=20 \
      --out=data/teacher/resnet20_cifar10.keras --model_dir=runs/train_teacher

Resumable: rerun the same command and it continues from the last finished epoch in --model_dir.
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.training.config import TeacherConfig


def run(cfg: TeacherConfig) -> dict:
    from isp_keras.training import teacher

    return teacher.train(cfg)


if __name__ == "__main__":
    cli.main(TeacherConfig, run)
