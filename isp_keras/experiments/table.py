"""Table 1 of the paper: the teacher baselines and RAW students trained with GT labels, teacher labels and
distillation, all from the teacher's weights on the same data and budget.

  python -m isp_keras.experiments.table --flagfile=flags/embedded.flags [--dry_run]

Writes <model_dir>/results.json, results.md and one sub-directory per row (default model_dir: runs/table);
a rerun skips finished rows and resumes an interrupted one.
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.training.config import TableConfig


def run(cfg: TableConfig) -> dict:
    from isp_keras.training import experiments

    return experiments.table(cfg, "table", cli.command_line())


if __name__ == "__main__":
    cli.main(TableConfig, run)
