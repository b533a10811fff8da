"""raw.render: LibRaw's sRGB rendering of a RAW file is pixel-aligned with the mosaic rawio reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isp_keras.errors import UserError
from isp_keras.raw import rawio, render


@pytest.mark.parametrize("file_cfa", ["RGGB", "GBRG"])
def test_edges_stay_where_the_mosaic_has_them(tmp_path, file_cfa):
    # dark everywhere but a bright rectangle; its edges must be at the same rows and columns in LibRaw's RGB
    h, w, top, left, bottom, right = 60, 80, 20, 30, 44, 62
    counts = np.full((h, w), 200, np.uint16)
    counts[top:bottom, left:right] = 3800
    rawio.write_dng(tmp_path / "box.dng", counts, file_cfa, black_level=100, white_level=4000, wb_gains=(1, 1, 1))
    rgb = render.libraw_srgb(tmp_path / "box.dng")
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    grey = rgb.astype(np.float64).mean(axis=-1)
    bright = grey > (grey.max() + grey.min()) / 2
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (top, bottom, left, right)
    img = rawio.read_raw(tmp_path / "box.dng", "RGGB")
    y, x = rawio.canonical_crop(h, w, img.offset)
    assert np.array_equal(img.mosaic > 0.5, bright[y, x])


def test_camera_white_balance_is_applied(tmp_path):
    # a flat grey scene shot under a light the camera balanced with R x2, B x1.5: LibRaw's output is neutral
    counts = np.zeros((40, 40), np.uint16)
    counts[0::2, 0::2], counts[0::2, 1::2], counts[1::2, 0::2], counts[1::2, 1::2] = 1000, 2000, 2000, 1333
    rawio.write_dng(tmp_path / "grey.dng", counts, "RGGB", black_level=0, white_level=4095, wb_gains=(2.0, 1.0, 1.5))
    rgb = render.libraw_srgb(tmp_path / "grey.dng")[4:-4, 4:-4].reshape(-1, 3).mean(axis=0)
    assert np.ptp(rgb) <= 3, rgb


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"nothing\.dng: no such file"):
        render.libraw_srgb(tmp_path / "nothing.dng")
    (tmp_path / "text.dng").write_text("not a raw file")
    with pytest.raises(UserError, match=r"text\.dng: LibRaw could not render it"):
        render.libraw_srgb(tmp_path / "text.dng")


def test_a_sensor_dump_renders_through_a_temporary_dng(tmp_path):
    h, w, top, left, bottom, right = 60, 80, 20, 30, 44, 62
    counts = np.full((h, w), 200, "<u2")
    counts[top:bottom, left:right] = 3800
    counts.tofile(tmp_path / "box.raw")
    fmt = {"width": w, "height": h, "bits": 12, "cfa": "GRBG", "black": 100, "white": 4000}
    (tmp_path / "box.raw.json").write_text(json.dumps(fmt))
    rgb = render.libraw_srgb(tmp_path / "box.raw")
    rawio.write_dng(tmp_path / "box.dng", counts.astype(np.uint16), "GRBG", 100, 4000)
    np.testing.assert_array_equal(rgb, render.libraw_srgb(tmp_path / "box.dng"))
    bright = rgb.mean(axis=-1) > (rgb.mean(axis=-1).max() + rgb.mean(axis=-1).min()) / 2
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (top, bottom, left, right)
    (tmp_path / "box.raw.json").unlink()
    with pytest.raises(UserError, match="box.raw: a headerless sensor dump needs its format"):
        render.libraw_srgb(tmp_path / "box.raw")
