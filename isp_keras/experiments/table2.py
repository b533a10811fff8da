"""Table 2 of the paper (the HDR+ protocol) as one command: real RAW in, agreement with the teacher on the camera's
processed RGB out.

  python -m isp_keras.experiments.table2 --flagfile=flags/hdrplus_resnet18.flags
  python -m isp_keras.experiments.table2 --flagfile=flags/hdrplus_embedded.flags   # synthetic bursts, CPU-sized

For each RAW input (`merged`: the burst's merged DNG; `short`: its reference short-exposure frame) the pairs are cut
into aligned patches and labelled by the teacher on the final RGB patch (cached). Rows, per input: teacher_raw,
teacher_labels (CE on the teacher's argmax) and distilled (hard labels = teacher argmax). There are no ground-truth
labels: top-1 is the top-1 agreement with the teacher, top-5 whether the teacher's class is in the student's top 5,
on the test patches the teacher is confident about. Writes <model_dir>/results.json (rows carry "raw") and
results.md; with --synthesize_bursts=N a missing hdrplus:DIR is first filled with N synthetic bursts made from
the embedded test images, which the teacher never saw.
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.training.config import Table2Config


def run(cfg: Table2Config) -> dict:
    from isp_keras.training import experiments

    return experiments.table2(cfg, cli.command_line())


if __name__ == "__main__":
    cli.main(Table2Config, run)
