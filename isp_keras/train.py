"""ISP distillation of one student: `python -m isp_keras.train --noise_std=0.1`.

Loads the teacher and data (the embedded default unless told otherwise), computes per-Bayer-site statistics,
evaluates the teacher on clean RGB and on RAW, distils a RAW student from it, fine-tunes it quantisation-aware
(--qat_epochs, so that its int8 export agrees with it; 0 skips), and writes the run directory (default
runs/train): config.json, results.json, results.md, student.keras (+ student.json), one sub-directory per row
with its checkpoints and TensorBoard logs. Rerunning the same command resumes an interrupted run.
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.training.config import TrainConfig


def run(cfg: TrainConfig) -> dict:
    from isp_keras.training import experiments

    return experiments.train(cfg, cli.command_line())


if __name__ == "__main__":
    cli.main(TrainConfig, run)
