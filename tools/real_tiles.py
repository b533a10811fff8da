"""Real sensor frames tile by tile, for int8 on real data: `npy` cuts the files of data/real_raw/manifest.csv named
by their group into an export's model-size tiles (the model's CFA phase, the `predict --fit=tiles` grid) and saves
them as a representative set for `export --representative`; `agree` compares two `predict --tiles_out` CSV files of
the same files (e.g. int8 against float32) per file and by the second file's top-1 lead over its top-2. Run from the
repository root (docs/results/predict_infiniteisp_realistic.md):
    python tools/real_tiles.py npy runs/export_realistic_infill cal.npy infiniteisp_indoor1 infiniteisp_outdoor1
    python tools/real_tiles.py agree int8_tiles.csv float32_tiles.csv
"""

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from isp_keras.data import pairs
from isp_keras.deploy import predict, tiles
from isp_keras.raw import dumps

MANIFEST = "data/real_raw/manifest.csv"
LEADS = (0.0, 0.02, 0.05, 0.1)


def npy(export_dir: str, out: str, *groups: str) -> None:
    manifest = json.loads((Path(export_dir) / "manifest.json").read_text())
    size = manifest["input"]["shape"][1]
    chosen = [p for p in pairs.pairs_from_csv(MANIFEST) if p.group in groups]
    missing = set(groups) - {p.group for p in chosen}
    if missing:
        sys.exit(f"{MANIFEST}: no group {sorted(missing)}")
    cut = []
    for pair in chosen:
        fmt = dumps.SensorFormat.from_sidecar(pair.sidecar) if pair.sidecar else None
        mosaic, _ = predict.read_mosaic(pair.raw, manifest, fmt)
        fitted, windows, _ = tiles.fit(mosaic, size, "tiles", pair.raw)
        cut += [tiles.cut(fitted, window) for window in windows]
        print(f"{pair.raw}: {len(windows)} tiles")
    samples = np.stack(cut)[..., None].astype(np.float32)
    np.save(out, samples)
    print(f"wrote {out}: {samples.shape}, mean {samples.mean():.4f}")


def agree(first: str, second: str) -> None:
    a, b = (list(csv.DictReader(open(path, newline=""))) for path in (first, second))
    if [(r["file"], r["tile"]) for r in a] != [(r["file"], r["tile"]) for r in b]:
        sys.exit(f"{first}, {second}: not the same files and tiles")
    same = [x["label_1"] == y["label_1"] for x, y in zip(a, b, strict=True)]
    per_file = defaultdict(list)
    for row, s in zip(b, same, strict=True):
        per_file[row["file"]].append(s)
    print("| file | same top-1 / tiles |\n|---|---:|")
    for name, flags in per_file.items():
        print(f"| {Path(name).name} | {sum(flags)} / {len(flags)} |")
    print(f"| all | {sum(same)} / {len(same)} |\n")
    lead = np.array([float(r["probability_1"]) - float(r["probability_2"]) for r in b])
    print(f"| {Path(second).name}: top-1 lead over top-2 | tiles | same top-1 |\n|---|---:|---:|")
    for lo, hi in zip(LEADS, (*LEADS[1:], np.inf), strict=True):
        inside = (lead >= lo) & (lead < hi)
        print(f"| [{lo:g}, {hi:g}) | {inside.sum()} | {np.array(same)[inside].sum()} |")


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "npy":
        npy(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "agree":
        agree(*sys.argv[2:])
    else:
        sys.exit(__doc__)  # the usage
