"""The paper's first-layers ablation (Table 3): distil into only the first k stages/blocks, the rest frozen.

  python -m isp_keras.experiments.ablation --flagfile=flags/embedded_ablation.flags [--dry_run]

Rows: teacher_clean and teacher_raw (context), finetune_first_K for each --finetune_ks value (the stem and the first
K residual stages / inverted-residual blocks train; later layers, BatchNorm statistics included, and the classifier
stay exactly the teacher's) and finetune_all (every layer trains). Same data, split, seed and budget for every row.
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.training.config import AblationConfig


def run(cfg: AblationConfig) -> dict:
    from isp_keras.training import experiments

    return experiments.table(cfg, "ablation", cli.command_line())


if __name__ == "__main__":
    cli.main(AblationConfig, run)
