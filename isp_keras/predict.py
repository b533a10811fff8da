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

import sys

from isp_keras import cli
from isp_keras.deploy.config import PredictConfig
from isp_keras.errors import UserError


def run(cfg: PredictConfig) -> list:
    from tqdm.auto import tqdm

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
    predict.write_results(results, cfg.json, cfg.tiles_out)
    failed = sum(1 for r in results if r.error)
    if failed and len(results) == 1:
        sys.exit(2)
    if failed:
        raise UserError(f"{failed} of {len(results)} files failed")
    return results


if __name__ == "__main__":
    cli.main(PredictConfig, run)
