"""Classify RAW files with an exported model on LiteRT: `python -m isp_keras.predict --model=DIR/model_int8.tflite
RAW_FILES...`.

A RAW file is a DNG (or any LibRaw format), a headerless sensor dump or PNG/TIFF mosaic (format from the `--raw_*`
flags and/or a sidecar JSON, see isp_keras/raw/dumps.py), or a .npy mosaic [H, W] / [H, W, 1]: float in [0, 1], or
uint16 sensor counts scaled with the manifest's black/white levels. Prints the top-k labels per file (labels.txt and
manifest.json beside the model); --json also writes them.
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.deploy.config import PredictConfig


def run(cfg: PredictConfig) -> dict:
    from isp_keras import fsutil
    from isp_keras.deploy import predict

    results = predict.predict(cfg.model, cfg.files, cfg.top_k, cfg.num_threads, cfg.sensor_format())
    for path, ranked in results.items():
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked))
    if cfg.json:
        fsutil.write_json_atomic(
            cfg.json, {p: [{"label": lbl, "probability": prob} for lbl, prob in r] for p, r in results.items()}
        )
    return results


if __name__ == "__main__":
    cli.main(PredictConfig, run)
