"""Where a curve-adapter student starts, before any training: agreement with the teacher (on clean RGB) of the
packed student whose adapter starts at the identity (the teacher on the infilled RAW), at a gamma 1/2.2 with the
stem normalised by the mosaic's statistics (before the curve was measured), and at the gamma with the stem
normalised by the statistics after the curve (what training now does). Run from the repository root:
    python tools/curve_start.py flags/embedded_inputs_realistic.flags \
        docs/results/curve_start_embedded_realistic.json
"""

import dataclasses
import sys
import time

from absl import flags

from isp_keras import config, fsutil
from isp_keras.training import experiment
from isp_keras.training.config import TableConfig

GAMMA = [round((k / 8) ** (1 / 2.2), 4) for k in range(9)]


def table_config(flagfile: str) -> TableConfig:
    fv = flags.FlagValues()
    config.define_flags(TableConfig, fv)
    fv(["prog", f"--flagfile={flagfile}", "--model_dir=/tmp/curve_start"])
    cfg = config.from_flags(TableConfig, fv)
    return dataclasses.replace(cfg, student_input="packed", raw_adapter="curve", student_inputs=[], seeds=[])


def start(s: experiment.Setup) -> dict:
    metrics = experiment.evaluate(s, experiment.build_student(s, None, False))
    return {**experiment.metric_row("start", metrics), "count": metrics["count"]}


def main(flagfile: str, out: str) -> None:
    began = time.time()
    cfg = table_config(flagfile)
    rows = {}
    s = experiment.build_setup(dataclasses.replace(cfg, raw_adapter_curve=GAMMA))
    raw = experiment.evaluate(s, s.teacher, student_input="infill")
    rows["teacher_raw"] = experiment.metric_row("teacher_raw", raw)
    rows["gamma, normalised after the curve"] = start(s)
    after = s.norm
    s.norm = dataclasses.replace(after, curve_mean=after.raw_mean, curve_std=after.raw_std)
    rows["gamma, normalised on the mosaic"] = start(s)
    s = experiment.build_setup(
        dataclasses.replace(cfg, raw_adapter_curve=[]), norm=dataclasses.replace(after, curve=None)
    )
    rows["identity"] = start(s)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "gamma": GAMMA,
        "normalisation": dataclasses.asdict(after),
        "test_images": rows["identity"].get("count"),
        "rows": {name: {k: v for k, v in row.items() if k != "name"} for name, row in rows.items()},
        "seconds": round(time.time() - began, 1),
    }
    fsutil.write_json_atomic(out, result)
    for name, row in rows.items():
        print(f"{name}: top-1 {row['top1']:.2f}, agreement {row['agreement']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)  # the usage
    main(*sys.argv[1:])
