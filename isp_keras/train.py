"""ISP distillation of one student: `python -m isp_keras.train --noise_std=0.1`.

Loads the teacher and data (the embedded default unless told otherwise), computes per-Bayer-site statistics,
evaluates the teacher on clean RGB and on RAW, distils a RAW student from it, fine-tunes it quantisation-aware
(--qat_epochs, so that its int8 export agrees with it; 0 skips), and writes a run directory:
config.json, results.json, student.keras (+ student.json), TensorBoard logs, checkpoints. Rerunning the same
command resumes an interrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from absl import app, flags

from isp_keras import config, experiment, flagdefs
from isp_keras.errors import parse_flags, run_main

FLAGS = flags.FLAGS


def default_model_dir(cfg: config.TrainConfig) -> str:
    return str(Path("runs") / f"distill-{cfg.dataset.replace(':', '_').replace('/', '_')}-noise{cfg.noise_std:g}"
                              f"-{cfg.cfa}-seed{cfg.seed}")


def run(cfg: config.TrainConfig) -> dict:
    start = time.time()
    run_dir = experiment.prepare_run_dir(cfg.model_dir, cfg.overwrite)
    s = experiment.setup(cfg, norm=experiment.resume_normalisation(run_dir, cfg))
    experiment.write_config(run_dir, cfg, s)
    experiment.log_image_panel(run_dir, s)
    rows = experiment.baseline_rows(s)
    row, student = experiment.train_student(s, run_dir / "distilled", "distilled", cfg.alpha, cfg.hard_labels)
    rows.append(row)
    if cfg.qat_epochs:
        qat = dataclasses.replace(s, cfg=dataclasses.replace(cfg, epochs=cfg.qat_epochs, lr=cfg.qat_lr,
                                                             warmup_epochs=0.0))
        row, student = experiment.train_student(qat, run_dir / "qat", "distilled_qat", cfg.alpha, cfg.hard_labels,
                                                start_from=student, quantisation_aware=True)
        rows.append(row)
    experiment.save_student(student, run_dir, s)
    results = experiment.write_results(run_dir, rows, cfg, time.time() - start)
    print(experiment.format_table(rows))
    print(f"wrote {run_dir / experiment.RESULTS} ({results['wall_seconds']:.0f} s)")
    return results


def main(argv):
    del argv
    from isp_keras import distribute

    distribute.init(FLAGS.strategy, FLAGS.tpu, FLAGS.cpu_replicas)  # first: multi_worker/tpu configure TensorFlow
    cfg = config.from_flags(FLAGS)
    if not cfg.model_dir:
        cfg.model_dir = default_model_dir(cfg)
    run(cfg)


def define_flags() -> None:
    flagdefs.define_train_flags()
    flags.DEFINE_integer("qat_epochs", 1, "Quantisation-aware fine-tuning epochs after distillation (int8 rounding "
                         "simulated, BN frozen, weights snapped to the int8 grid); the saved student is then the "
                         "fine-tuned one. 0: save the distilled student as is.")
    flags.DEFINE_float("qat_lr", config.TrainConfig.qat_lr, "Peak learning rate of quantisation-aware fine-tuning "
                       "(cosine, no warmup).")


if __name__ == "__main__":
    define_flags()
    app.run(run_main(main), flags_parser=parse_flags)
