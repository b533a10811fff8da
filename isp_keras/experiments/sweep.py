"""The paper's noise sweep (Fig. 2): the Table 1 rows at each noise level, and a plot of top-1 vs noise std.

  python -m isp_keras.experiments.sweep --flagfile=flags/embedded_sweep.flags [--dry_run]

--noise_stds replaces --noise_std. Each level gets its own per-site statistics and one sub-directory per row
(<model_dir>/noise_<std>/<row>/). Writes <model_dir>/results.json as {"sweep": [{"noise_std", "rows"}, ...],
"config", "wall_seconds"}, results.md, and sweep_top1.png (one line per row) beside it. A rerun skips finished rows.
"""

from __future__ import annotations

import time

from absl import app, flags

from isp_keras import experiment, fsutil
from isp_keras.errors import parse_flags, run_main
from isp_keras.experiments import common

FLAGS = flags.FLAGS
KIND = "sweep"


def run(opts: common.Options) -> dict:
    start = time.time()
    levels, seconds = common.run_levels(opts)
    for level in levels:
        common.check_rows(level["rows"])
    config = {k: v for k, v in opts.cfg.to_json().items() if k != "noise_std"}
    results = {"sweep": levels, "config": {**config, "noise_stds": opts.noise_stds},
               "wall_seconds": round(time.time() - start, 2), "experiment": KIND, "command": opts.command,
               "plot": common.PLOT_FILE, "row_seconds": seconds}
    fsutil.write_json_atomic(opts.out / experiment.RESULTS, results)
    title = f"{opts.cfg.dataset}, CFA {opts.cfg.cfa}, {opts.cfg.epochs} epochs per student, seed {opts.cfg.seed}"
    plot = common.plot_sweep(levels, opts.out / common.PLOT_FILE, title)
    print(common.write_markdown(opts, f"Top-1 % ({plot.name}):\n\n{common.format_sweep(levels)}"))
    print(f"wrote {opts.out / experiment.RESULTS}, {opts.out / common.RESULTS_MD} and {plot}")
    return results


main = common.make_main(KIND, run)


if __name__ == "__main__":
    common.define_flags(KIND)
    app.run(run_main(main), flags_parser=parse_flags)
