"""Table 1 of the paper as one command: teacher baselines and RAW students, same data, split, seed and budget.

  python -m isp_keras.experiments.table --flagfile=flags/embedded.flags [--dry_run]

Rows: teacher_clean (teacher on clean RGB, the upper bound), teacher_raw (teacher on RAW, no training), gt_labels
(student, CE on ground truth, alpha=1), teacher_labels (CE on the teacher's argmax, alpha=1) and distilled
(alpha, T from the flags). Every student starts from the teacher's weights. Writes <model_dir>/results.json (core
schema), results.md, and one sub-directory per row (TensorBoard logs side by side). A rerun skips finished rows.
"""

from __future__ import annotations

import time

from absl import app, flags

from isp_keras import experiment
from isp_keras.errors import parse_flags, run_main
from isp_keras.experiments import common

FLAGS = flags.FLAGS
KIND = "table"


def run(opts: common.Options) -> dict:
    start = time.time()
    levels, seconds = common.run_levels(opts)
    rows = levels[0]["rows"]
    results = experiment.write_results(opts.out, rows, opts.cfg, time.time() - start,
                                       extra={"experiment": KIND, "command": opts.command, "row_seconds": seconds})
    print(common.write_markdown(opts, experiment.format_table(rows)))
    print(f"wrote {opts.out / experiment.RESULTS} and {opts.out / common.RESULTS_MD}")
    return results


main = common.make_main(KIND, run)


if __name__ == "__main__":
    common.define_flags(KIND)
    app.run(run_main(main), flags_parser=parse_flags)
