"""Classify RAW files with an exported model on LiteRT (the library behind `python -m isp_keras.predict`).

A RAW file is a DNG (or any LibRaw format; read with raw.rawio in the model's CFA phase) or a .npy mosaic
[H, W] / [H, W, 1]: float in [0, 1], or uint16 sensor counts scaled with the manifest's black/white levels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from isp_keras.deploy import runtime, serving
from isp_keras.errors import UserError
from isp_keras.raw import bayer


def read_export_info(model_path) -> tuple[list, dict]:
    """(labels, manifest) of the export directory holding `model_path`."""
    folder = Path(model_path).parent
    manifest_path, labels_path = folder / serving.MANIFEST, folder / serving.LABELS
    for path in (manifest_path, labels_path):
        if not path.exists():
            raise UserError(
                f"--model={model_path}: no {path.name} beside it (use a directory written by isp_keras.export)"
            )
    try:
        manifest = json.loads(manifest_path.read_text())
        manifest["cfa"], manifest["input"]["shape"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{manifest_path}: not an export manifest ({type(exc).__name__}: {exc})") from None
    labels = labels_path.read_text().splitlines()
    return labels, manifest


def read_mosaic(path, manifest: dict, raw_format=None) -> np.ndarray:
    """A RAW file as the model's float32 input [H, W, 1]; UserError naming the file and the problem."""
    path = Path(path)
    size = manifest["input"]["shape"][1:3]
    if path.suffix.lower() == ".npy":
        try:
            mosaic = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable .npy array ({exc})") from None
        if mosaic.ndim == 3 and mosaic.shape[-1] == 1:
            mosaic = mosaic[..., 0]
        if mosaic.ndim != 2:
            raise UserError(f"{path}: shape {mosaic.shape}; a mosaic is [H, W] or [H, W, 1]")
        if mosaic.dtype == np.uint16:
            levels = manifest["uint16_input"]
            mosaic = bayer.scale_levels(mosaic, levels["black_level"], levels["white_level"]).numpy()
        elif mosaic.dtype not in (np.float32, np.float64):
            raise UserError(f"{path}: dtype {mosaic.dtype}; expected float32 in [0, 1] or uint16 sensor counts")
    else:
        from isp_keras.raw import rawio

        mosaic = rawio.read_raw(path, cfa=manifest["cfa"], fmt=raw_format).mosaic
    h, w = mosaic.shape
    if h % 2 or w % 2:
        raise UserError(f"{path}: mosaic is {h}x{w}; a Bayer mosaic needs even height and width")
    if [h, w] != list(size):
        raise UserError(f"{path}: mosaic is {h}x{w} but the model takes {size[0]}x{size[1]}")
    if not np.all(np.isfinite(mosaic)):
        raise UserError(f"{path}: the mosaic holds NaN or Inf values")
    return mosaic.astype(np.float32)[..., np.newaxis]


def top_k(probs: np.ndarray, labels: list, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(labels[i] if i < len(labels) else str(i), float(probs[i])) for i in order]


def predict(model_path, files, k: int = 5, num_threads: int = 2, raw_format=None) -> dict:
    """{file: [(label, probability), ...]} for each RAW file, best first."""
    if not Path(model_path).is_file():
        raise UserError(f"--model={model_path}: no such file")
    labels, manifest = read_export_info(model_path)
    runner = runtime.TFLiteRunner(model_path, num_threads=num_threads)
    results = {}
    for path in files:
        probs = runner.invoke(read_mosaic(path, manifest, raw_format)[np.newaxis])[0]
        results[str(path)] = top_k(probs, labels, k)
    return results
