"""Table 2 on real sensor files: trained RAW students' agreement with their teacher on real RAW/RGB pairs.

  python -m isp_keras.experiments.real_raw --pairs=raw:../shared/raw \
      --students=distilled=runs/table_fast/seed_0/distilled,teacher_labels=runs/table_fast/seed_0/teacher_labels

Each RAW file is cut into aligned tiles of the students' input size; the teacher labels the RGB tile (for raw:DIR,
LibRaw's rendering of the same file), the students and the teacher itself classify the RAW tile. Prints and writes
<out>/results.md and results.json: agreement and top-5 agreement on the tiles the teacher is sure of, the number of
tiles each figure rests on, overall and per file (see isp_keras/deploy/agreement.py).
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.deploy.config import RealRawConfig


def run(cfg: RealRawConfig) -> dict:
    from isp_keras.deploy import agreement

    result = agreement.evaluate(
        cfg.pairs,
        cfg.students,
        cfg.out,
        cfg.teacher,
        cfg.mode,
        cfg.min_teacher_prob,
        cfg.batch_size,
        cli.command_line(),
        cfg.sensor_format(),
        cfg.bin,
    )
    print(agreement.format_table(result), end="")
    return result


if __name__ == "__main__":
    cli.main(RealRawConfig, run)
