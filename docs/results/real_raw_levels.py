"""Mean level per colour of the real camera files in data/real_raw/manifest.csv (black-subtracted, divided by
white - black, as the students see them) against the training mosaics' statistics of a run's normalisation.json;
run from the repository root (docs/deploy.md):
    python docs/results/real_raw_levels.py runs/table_mobilenetv2_inputs_realistic/input_infill/normalisation.json \
        docs/results/real_raw_levels.json
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np

from isp_keras.raw import dumps, rawio

MANIFEST = Path("data/real_raw/manifest.csv")


def levels(mosaic: np.ndarray) -> dict:
    """Mean of the R, G (both sites) and B sites of an RGGB mosaic, and its 99th percentile."""
    r, b = mosaic[0::2, 0::2].mean(), mosaic[1::2, 1::2].mean()
    g = (mosaic[0::2, 1::2].mean() + mosaic[1::2, 0::2].mean()) / 2
    return {"mean_rgb": [round(float(v), 4) for v in (r, g, b)], "p99": round(float(np.percentile(mosaic, 99)), 4)}


def main(norm_path: str, out: str) -> None:
    train = json.loads(Path(norm_path).read_text())["raw_mean"]
    files = {}
    for row in csv.DictReader(MANIFEST.open()):
        fmt = dumps.SensorFormat.from_sidecar(MANIFEST.parent / row["format"]) if row["format"] else None
        image = rawio.read_raw(MANIFEST.parent / row["raw"], "RGGB", fmt)
        entry = levels(image.mosaic)
        entry["green_over_training_green"] = round(entry["mean_rgb"][1] / train[1], 2)
        files[Path(row["raw"]).name] = entry
    result = {"training_mean_rgb": [round(v, 4) for v in train], "normalisation": norm_path, "files": files}
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
