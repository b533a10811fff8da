"""Classify RAW files with an exported model on LiteRT (the library behind `python -m isp_keras.predict`).

A RAW file is a DNG (or any LibRaw format; read with raw.rawio in the model's CFA phase) or a .npy mosaic
[H, W] / [H, W, 1]: float in [0, 1], or uint16 sensor counts scaled with the manifest's black/white levels.
A photo of any size is fitted to the model's input by deploy.tiles (`tiles`: the mean of full-resolution tiles'
probabilities, the paper's protocol; `bin`: Bayer-domain binning and a centre crop; `center`: the middle crop).
Tiles go through LiteRT in batches, so memory is bounded by the decoded mosaic plus one batch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from isp_keras import fsutil
from isp_keras.deploy import runtime, serving, tiles
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


def read_mosaic(path, manifest: dict, raw_format=None) -> tuple[np.ndarray, tuple[int, int]]:
    """A RAW file as a float32 [H, W] mosaic in the model's CFA phase, and the (rows, cols) cropped from the file's
    visible area to reach that phase; UserError naming the file and the problem. `raw_format`: a raw.dumps
    SensorFormat for headerless dumps and mosaic images (over their sidecars)."""
    path = Path(path)
    offset = (0, 0)
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

        image = rawio.read_raw(path, cfa=manifest["cfa"], fmt=raw_format)
        mosaic, offset = image.mosaic, image.offset
    h, w = mosaic.shape
    if h % 2 or w % 2:
        raise UserError(f"{path}: mosaic is {h}x{w}; a Bayer mosaic needs even height and width")
    if not np.all(np.isfinite(mosaic)):
        raise UserError(f"{path}: the mosaic holds NaN or Inf values")
    return mosaic.astype(np.float32, copy=False), offset


def top_k(probs: np.ndarray, labels: list, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(labels[i] if i < len(labels) else str(i), float(probs[i])) for i in order]


@dataclasses.dataclass
class TileResult:
    y: int  # top-left row and column in the file's visible sensor area, and the side there (binning: the
    x: int  # area the binned input covers)
    size: int
    top: list  # [(label, probability)], best first


@dataclasses.dataclass
class FileResult:
    path: str
    top: list = dataclasses.field(default_factory=list)  # the file's top-k: mean of the tiles' probabilities
    tiles: list = dataclasses.field(default_factory=list)
    mosaic_shape: tuple = (0, 0)
    fit: str = "tiles"
    bin_factor: int = 1
    error: str = ""

    def to_json(self, tiles: bool = True) -> dict:
        if self.error:
            return {"error": self.error}
        out = {
            "top": _ranked(self.top),
            "fit": self.fit,
            "bin_factor": self.bin_factor,
            "mosaic_shape": list(self.mosaic_shape),
            "tile_count": len(self.tiles),
        }
        if tiles:
            out["tiles"] = [{"y": t.y, "x": t.x, "size": t.size, "top": _ranked(t.top)} for t in self.tiles]
        return out


def _ranked(top) -> list:
    return [{"label": label, "probability": p} for label, p in top]


def load(model_path, num_threads: int = 2) -> tuple[runtime.TFLiteRunner, list, dict]:
    """(runner, labels, manifest) of an exported model; UserError if it cannot classify mosaic tiles."""
    if not Path(model_path).is_file():
        raise UserError(f"--model={model_path}: no such file")
    labels, manifest = read_export_info(model_path)
    runner = runtime.TFLiteRunner(model_path, num_threads=num_threads)
    shape = runner.input_shape
    if len(shape) != 3 or shape[-1] != 1 or shape[0] != shape[1]:
        raise UserError(f"--model={model_path}: takes input {list(shape)}; predict needs a square [H, W, 1] mosaic")
    if shape[0] % 2:
        raise UserError(
            f"--model={model_path}: takes {shape[0]}x{shape[1]} mosaics; tiles need even sides to keep the CFA phase"
        )
    return runner, labels, manifest


def classify(
    runner, labels, manifest, path, k=5, fit="tiles", batch_size=32, overlay=None, raw_format=None
) -> FileResult:
    """One file's prediction; UserError naming the file if it cannot be read or fitted."""
    mosaic, (dy, dx) = read_mosaic(path, manifest, raw_format)
    size = runner.input_shape[0]
    fitted, windows, factor = tiles.fit(mosaic, size, fit, str(path))
    total, results = 0.0, []
    for chunk, batch in tiles.batches(fitted, windows, batch_size):
        probs = runner.invoke(batch)
        total = total + probs.sum(axis=0, dtype=np.float64)
        for window, p in zip(chunk, probs, strict=True):
            results.append(
                TileResult(dy + window.y * factor, dx + window.x * factor, size * factor, top_k(p, labels, k))
            )
    if overlay is not None:
        from isp_keras.deploy import overlay as picture

        boxes = [(t.y - dy, t.x - dx, t.size, f"{t.top[0][0].split(',')[0][:20]} {t.top[0][1]:.2f}") for t in results]
        picture.draw(overlay, mosaic, manifest["cfa"], boxes)
    return FileResult(str(path), top_k(total / len(windows), labels, k), results, mosaic.shape, fit, factor)


def overlay_name(folder: Path, path, used: set) -> Path:
    """`<file name>.png` in `folder`, numbered when two inputs share a name."""
    name, n = f"{Path(path).name}.png", 1
    while name in used:
        n += 1
        name = f"{Path(path).name}.{n}.png"
    used.add(name)
    return folder / name


def classify_files(
    model_path, files, k=5, num_threads=2, fit="tiles", batch_size=32, overlay_dir=None, progress=True, raw_format=None
):
    """Yield a FileResult per file; a file that fails is reported in its result's `error`, the rest go on."""
    from tqdm.auto import tqdm

    if fit not in tiles.FITS:
        raise UserError(f"--fit={fit}: must be one of {', '.join(tiles.FITS)}")
    runner, labels, manifest = load(model_path, num_threads)
    folder = fsutil.make_dir(overlay_dir, "overlay_dir") if overlay_dir else None
    used: set = set()
    for path in tqdm(files, desc="predict", unit="file", disable=not progress or len(files) < 2, leave=False):
        target = overlay_name(folder, path, used) if folder is not None else None
        try:
            yield classify(runner, labels, manifest, path, k, fit, batch_size, target, raw_format)
        except UserError as exc:
            message = str(exc)
            yield FileResult(str(path), error=message if message.startswith(f"{path}:") else f"{path}: {message}")


def predict(model_path, files, k: int = 5, num_threads: int = 2, **kwargs) -> dict:
    """{file: FileResult} for each RAW file (see classify_files)."""
    return {r.path: r for r in classify_files(model_path, files, k, num_threads, progress=False, **kwargs)}


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


def write_results(results: list, json_path: str = "", tiles_path: str = "") -> None:
    """--json (every file's top-k, or its error) and --tiles_out (.csv or .json: every tile); nothing if no file
    was classified."""
    good = [r for r in results if not r.error]
    if not good:
        return
    if json_path:
        fsutil.write_json_atomic(json_path, {r.path: r.to_json(tiles=False) for r in results})
    if tiles_path.endswith(".csv"):
        fsutil.write_text_atomic(tiles_path, tiles_csv(good))
    elif tiles_path:
        fsutil.write_json_atomic(tiles_path, {r.path: r.to_json() for r in good})
