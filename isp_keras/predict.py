"""Classify RAW files with an exported model on LiteRT: `python -m isp_keras.predict --model=DIR/model_int8.tflite
RAW_FILES...`.

A RAW file is a DNG (or any LibRaw format), a headerless sensor dump or PNG/TIFF mosaic (format from the `--raw_*`
flags and/or a sidecar JSON, see isp_keras/raw/dumps.py), or a .npy mosaic [H, W] / [H, W, 1]: float in [0, 1], or
uint16 sensor counts scaled with the manifest's black/white levels, of any size: `--fit=tiles` (default) classifies
every full-resolution model-size tile and averages their probabilities, `--fit=bin` bins the mosaic down in the Bayer
domain, `--fit=center` takes the middle crop. Prints the top-k labels per file (labels.txt and manifest.json beside
the model); --json writes them, --tiles_out every tile's, --overlay_dir a picture per file. A file that cannot be
read is one `error:` line and the others are still classified; the exit status is 2 if any failed.
"""

from __future__ import annotations

import csv
import io
import sys

from isp_keras import cli
from isp_keras.deploy.config import PredictConfig
from isp_keras.errors import UserError


def tiles_csv(results) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    k = max((len(t.top) for r in results for t in r.tiles), default=0)
    writer.writerow(
        ["file", "tile", "y", "x", "size"] + [c for i in range(1, k + 1) for c in (f"label_{i}", f"probability_{i}")]
    )
    for r in results:
        for i, t in enumerate(r.tiles):
            writer.writerow([r.path, i, t.y, t.x, t.size] + [v for label, p in t.top for v in (label, f"{p:.6f}")])
    return buf.getvalue()


def run(cfg: PredictConfig) -> list:
    from tqdm.auto import tqdm

    from isp_keras import fsutil
    from isp_keras.deploy import predict

    results = []
    stream = predict.classify_files(
        cfg.model,
        cfg.files,
        cfg.top_k,
        cfg.num_threads,
        cfg.fit,
        cfg.batch_size,
        cfg.overlay_dir or None,
        raw_format=cfg.sensor_format(),
    )
    for r in stream:
        results.append(r)
        if r.error:
            tqdm.write(f"error: {r.error}", file=sys.stderr)
            continue
        where = f" ({len(r.tiles)} tiles)" if len(r.tiles) > 1 else ""
        tqdm.write(f"{r.path}{where}: " + ", ".join(f"{label} {p:.3f}" for label, p in r.top))
    good = [r for r in results if not r.error]
    if good and cfg.json:
        fsutil.write_json_atomic(cfg.json, {r.path: r.to_json(tiles=False) for r in results})
    if good and cfg.tiles_out:
        if cfg.tiles_out.endswith(".csv"):
            fsutil.write_text_atomic(cfg.tiles_out, tiles_csv(good))
        else:
            fsutil.write_json_atomic(cfg.tiles_out, {r.path: r.to_json() for r in good})
    failed = len(results) - len(good)
    if failed and len(results) == 1:
        sys.exit(2)
    if failed:
        raise UserError(f"{failed} of {len(results)} files failed")
    return results


if __name__ == "__main__":
    cli.main(PredictConfig, run)
