"""The paper's first-layers ablation (Table 3): distil into only the first k stages/blocks, the rest frozen.

  python -m isp_keras.experiments.ablation --flagfile=flags/embedded_ablation.flags [--dry_run]

Rows: teacher_clean and teacher_raw (context), finetune_first_K for each --finetune_ks value (the stem and the first
K residual stages / inverted-residual blocks train; later layers, BatchNorm statistics included, and the classifier
stay exactly the teacher's) and finetune_all (every layer trains). Same data, split, seed and budget for every row,
each from the teacher's weights. Writes results.json (core schema), results.md and one sub-directory per row.
"""

from __future__ import annotations

import time

from absl import app, flags

from isp_keras import experiment
from isp_keras.errors import parse_flags, run_main
from isp_keras.experiments import common

FLAGS = flags.FLAGS
KIND = "ablation"


def run(opts: common.Options) -> dict:
    start = time.time()
    levels, seconds = common.run_levels(opts)
    rows = levels[0]["rows"]
    ks = [r.finetune_first for r in opts.rows if r.finetune_first]
    results = experiment.write_results(opts.out, rows, opts.cfg, time.time() - start,
                                       extra={"experiment": KIND, "finetune_ks": ks, "command": opts.command,
                                              "row_seconds": seconds})
    print(common.write_markdown(opts, experiment.format_table(rows)))
    print(f"wrote {opts.out / experiment.RESULTS} and {opts.out / common.RESULTS_MD}")
    return results


main = common.make_main(KIND, run)


if __name__ == "__main__":
    common.define_flags(KIND)
    app.run(run_main(main), flags_parser=parse_flags)
