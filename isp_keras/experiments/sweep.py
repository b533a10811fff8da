"""The paper's noise sweep (Fig. 2): the Table 1 rows at each noise level, and a plot of top-1 and agreement
vs noise std.

  python -m isp_keras.experiments.sweep --flagfile=flags/embedded_sweep.flags [--dry_run]

--noise_stds replaces --noise_std. Each level gets its own per-site statistics and one sub-directory per row
(<model_dir>/noise_<std>/<row>/). Writes <model_dir>/results.json as {"sweep": [{"noise_std", "rows"}, ...],
"config", "wall_seconds"}, results.md, and sweep_top1.png (one line per row) beside it.
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.training.config import SweepConfig


def run(cfg: SweepConfig) -> dict:
    from isp_keras.training import experiments

    return experiments.table(cfg, "sweep", cli.command_line())


if __name__ == "__main__":
    cli.main(SweepConfig, run)
