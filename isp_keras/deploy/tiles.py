"""Fitting a whole-photo Bayer mosaic to a model's fixed input: tiles, Bayer-domain binning, centre crop.

Every function keeps the CFA phase: the mosaic comes in the model's canonical phase (raw.rawio crops to it), and
every window starts on an even row and column, so each tile, crop or binned image starts with the same 2x2 tile.

- `tiles`: non-overlapping tile x tile windows at full resolution (the paper's protocol), as many as fit, the grid
  centred in the photo; the file's prediction is the mean of the tiles' probabilities.
- `bin_mosaic`: downscale by an integer factor f by averaging the f x f same-colour sites of each 2f x 2f block, which
  is what a sensor's binning mode does and keeps the CFA; then a centre crop.
- `center_crop`: the middle tile x tile window.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from isp_keras.errors import UserError

FITS = ("tiles", "bin", "center")


@dataclasses.dataclass(frozen=True)
class Window:
    y: int  # top-left row in the fitted mosaic (the full mosaic for tiles and center, the binned one for bin)
    x: int
    size: int


def check_fits(height: int, width: int, tile: int, what: str) -> None:
    if height % 2 or width % 2:
        raise UserError(f"{what}: mosaic is {height}x{width}; a Bayer mosaic needs even height and width")
    if height < tile or width < tile:
        raise UserError(f"{what}: mosaic is {height}x{width}, smaller than the model's {tile}x{tile} input")


def _even(n: int) -> int:
    return n // 2 * 2


def grid(height: int, width: int, tile: int) -> list[Window]:
    """Row-major non-overlapping windows covering as much of the mosaic as whole tiles can, centred, even-aligned."""
    rows, cols = height // tile, width // tile
    y0, x0 = _even((height - rows * tile) // 2), _even((width - cols * tile) // 2)
    return [Window(y0 + r * tile, x0 + c * tile, tile) for r in range(rows) for c in range(cols)]


def center_window(height: int, width: int, tile: int) -> Window:
    return Window(_even((height - tile) // 2), _even((width - tile) // 2), tile)


def bin_factor(height: int, width: int, tile: int) -> int:
    """The largest integer factor that leaves both sides >= tile after binning."""
    return max(1, min(height // tile, width // tile))


def bin_mosaic(mosaic: np.ndarray, factor: int) -> np.ndarray:
    """[H, W] -> [H', W'] with H' = 2 * (H // (2 f)): each output site is the mean of the f x f sites of its colour
    in its 2f x 2f block (trailing rows/columns that do not fill a block are dropped)."""
    if factor == 1:
        return mosaic
    h, w = mosaic.shape
    bh, bw = h // (2 * factor), w // (2 * factor)
    blocks = mosaic[: bh * 2 * factor, : bw * 2 * factor].reshape(bh, factor, 2, bw, factor, 2)
    return blocks.mean(axis=(1, 4), dtype=np.float64).reshape(2 * bh, 2 * bw).astype(mosaic.dtype)


def cut(mosaic: np.ndarray, window: Window) -> np.ndarray:
    return mosaic[window.y : window.y + window.size, window.x : window.x + window.size]


def fit(mosaic: np.ndarray, tile: int, how: str, what: str) -> tuple[np.ndarray, list[Window], int]:
    """(the mosaic the windows index, the windows, the binning factor) for `how` in FITS."""
    check_fits(*mosaic.shape, tile, what)
    if how == "tiles":
        return mosaic, grid(*mosaic.shape, tile), 1
    if how == "bin":
        factor = bin_factor(*mosaic.shape, tile)
        binned = bin_mosaic(mosaic, factor)
        return binned, [center_window(*binned.shape, tile)], factor
    if how == "center":
        return mosaic, [center_window(*mosaic.shape, tile)], 1
    raise ValueError(f"fit must be one of {FITS}, got {how!r}")


def batches(mosaic: np.ndarray, windows: list[Window], batch_size: int):
    """(windows, float32 [n, tile, tile, 1]) batches, so memory stays bounded by the batch whatever the photo."""
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        yield chunk, np.stack([cut(mosaic, w) for w in chunk]).astype(np.float32)[..., np.newaxis]
