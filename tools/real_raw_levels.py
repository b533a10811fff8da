"""Mean level per colour of the real camera files in data/real_raw/manifest.csv (black-subtracted, divided by
white - black, as the students see them) against the training mosaics' statistics of a run's normalisation.json;
run from the repository root (docs/deploy.md):
    python tools/real_raw_levels.py runs/table_mobilenetv2_inputs_realistic/input_infill/normalisation.json \
        docs/results/real_raw_levels.json
"""

import json
import sys
from pathlib import Path

import numpy as np

from isp_keras.data import pairs
from isp_keras.raw import bayer, dumps, rawio

MANIFEST = "data/real_raw/manifest.csv"


def levels(mosaic: np.ndarray) -> dict:
    """Mean per Bayer site (R, G, B) of an RGGB mosaic, the statistic of normalisation.json's raw_mean, and the
    mosaic's 99th percentile."""
    mean, _ = bayer.moments_to_stats(bayer.site_moments(mosaic[None, :, :, None], "RGGB"))
    return {"mean_rgb": [round(float(v), 4) for v in mean], "p99": round(float(np.percentile(mosaic, 99)), 4)}


def main(norm_path: str, out: str) -> None:
    train = json.loads(Path(norm_path).read_text())["raw_mean"]
    files = {}
    for pair in pairs.pairs_from_csv(MANIFEST):
        fmt = dumps.SensorFormat.from_sidecar(pair.sidecar) if pair.sidecar else None
        entry = levels(rawio.read_raw(pair.raw, "RGGB", fmt).mosaic)
        entry["green_over_training_green"] = round(entry["mean_rgb"][1] / train[1], 2)
        files[Path(pair.raw).name] = entry
    result = {"training_mean_rgb": [round(v, 4) for v in train], "normalisation": norm_path, "files": files}
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)  # the usage
    main(*sys.argv[1:])
