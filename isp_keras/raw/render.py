"""The RGB side of a RAW/RGB pair rendered from the RAW file itself with LibRaw (the "full ISP" the student skips).

`libraw_srgb` is LibRaw's postprocess with the camera's as-shot white balance, sRGB primaries and gamma, 8 bits,
and otherwise LibRaw's defaults (AHD demosaic, automatic brightness: 1 % of pixels may clip). Two settings keep it
pixel-aligned with `rawio.read_raw`'s mosaic:
- `user_flip=0`: no rotation to the camera's orientation tag, so output rows and columns are sensor rows and columns;
- no `half_size` and no crop: LibRaw's output covers exactly the visible area (`raw_image_visible`, the active area
  of a DNG), pixel (y, x) at visible pixel (y, x). A file whose output differs in size (non-square pixels, Fuji's
  rotated layouts) is refused rather than silently misaligned.
`rawio.read_raw` then crops the same leading row/column (its `offset`) from both to reach the canonical CFA phase.

Headerless dumps and mosaic images carry no colour metadata; they are written to a temporary DNG with their CFA,
black and white levels and, if the sidecar gives them, white-balance gains, and LibRaw renders that. Their camera RGB
is taken as sRGB (no colour matrix is known), so the colours are approximate; the geometry is exact.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from isp_keras.errors import UserError


def libraw_srgb(path, raw_format=None) -> np.ndarray:
    """uint8 [H, W, 3] sRGB of the file's visible sensor area; UserError naming the file otherwise. `raw_format`:
    the raw.dumps.SensorFormat of a dump or mosaic image (over its sidecar)."""
    from isp_keras.raw import rawio

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    counts = rawio.sensor_counts(path, raw_format)
    if counts is None:
        return _render(path, path)
    counts, fmt = counts
    with tempfile.TemporaryDirectory(prefix="isp_keras_render_") as tmp:
        dng = Path(tmp) / "mosaic.dng"
        try:
            rawio.write_dng(dng, counts.astype(np.uint16), fmt.cfa, fmt.black4(), fmt.white, wb_gains=fmt.wb_gains)
        except ValueError as exc:
            raise UserError(f"{path}: cannot be rendered by LibRaw ({exc})") from None
        return _render(dng, path)


def _render(source: Path, path: Path) -> np.ndarray:
    import rawpy

    from isp_keras.raw import rawio

    try:
        with rawio.quiet_libraw(), rawpy.imread(str(source)) as raw:
            visible = tuple(raw.raw_image_visible.shape)
            rgb = raw.postprocess(use_camera_wb=True, output_color=rawpy.ColorSpace.sRGB, output_bps=8, user_flip=0)
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise UserError(f"{path}: LibRaw could not render it ({type(exc).__name__}: {exc})") from None
    if rgb.shape[:2] != visible:
        raise UserError(
            f"{path}: LibRaw renders {rgb.shape[1]}x{rgb.shape[0]} but the visible sensor area is "
            f"{visible[1]}x{visible[0]}; the pair would not be pixel-aligned"
        )
    return np.ascontiguousarray(rgb, np.uint8)
