"""Learning rates for the student rows, chosen on training data: each row is trained at every --lrs value on the
training split minus a held-out part (--holdout_fraction, a seeded draw) and scored on that part; the test split
is never read. Ground-truth rows are scored by top-1 accuracy, label-free rows by agreement with the teacher.

  python -m isp_keras.experiments.tune --flagfile=flags/imagenette_fast.flags --epochs=1

Writes <model_dir>/results.json (rows per lr, and "best": the chosen lr per row), results.md with the
`--row_lrs=...` flag to give the table, and one sub-directory per lr and row (default model_dir: runs/tune).
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.training.config import TuneConfig


def run(cfg: TuneConfig) -> dict:
    from isp_keras.training import experiments

    return experiments.table(cfg, "tune", cli.command_line())


if __name__ == "__main__":
    cli.main(TuneConfig, run)
