"""deploy.tiles: tile grids, Bayer binning and centre crops against NumPy loops; the CFA phase is kept."""

from __future__ import annotations

import numpy as np
import pytest

from isp_keras.deploy import tiles
from isp_keras.errors import UserError


def bayer_upscale(mosaic: np.ndarray, factor: int) -> np.ndarray:
    """Each 2x2 CFA tile repeated factor x factor times, interleaved so every site keeps its colour."""
    h, w = mosaic.shape
    sites = mosaic.reshape(h // 2, 1, 2, w // 2, 1, 2)
    return np.broadcast_to(sites, (h // 2, factor, 2, w // 2, factor, 2)).reshape(h * factor, w * factor)


def test_grid_is_centred_even_and_non_overlapping():
    windows = tiles.grid(70, 103, 32)
    assert [(w.y, w.x) for w in windows] == [(2, 2), (2, 34), (2, 66), (34, 2), (34, 34), (34, 66)]
    assert all(w.size == 32 and w.y % 2 == 0 and w.x % 2 == 0 for w in windows)
    assert tiles.grid(64, 64, 32)[-1] == tiles.Window(32, 32, 32)
    assert tiles.center_window(70, 103, 32) == tiles.Window(18, 34, 32)


def test_bin_matches_a_loop_and_keeps_the_phase():
    rng = np.random.default_rng(0)
    mosaic = rng.random((26, 38)).astype(np.float32)
    factor = 3
    binned = tiles.bin_mosaic(mosaic, factor)
    assert binned.shape == (8, 12) and binned.dtype == np.float32
    for y in range(8):
        for x in range(12):
            by, bx, sy, sx = y // 2, x // 2, y % 2, x % 2
            sites = [
                mosaic[2 * factor * by + 2 * i + sy, 2 * factor * bx + 2 * j + sx]
                for i in range(factor)
                for j in range(factor)
            ]
            assert binned[y, x] == pytest.approx(np.mean(sites, dtype=np.float64), abs=1e-6)
    # a mosaic whose colours are constants (R=1, G=2, B=3 in RGGB) stays that mosaic
    rggb = np.tile(np.array([[1.0, 2.0], [2.0, 3.0]], np.float32), (12, 12))
    np.testing.assert_array_equal(tiles.bin_mosaic(rggb, 3), rggb[:8, :8])


def test_bin_undoes_a_bayer_upscale_exactly():
    mosaic = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    big = bayer_upscale(mosaic, 4)
    fitted, windows, factor = tiles.fit(np.pad(big, ((0, 6), (0, 2))), 32, "bin", "photo")
    assert factor == 4 and windows == [tiles.Window(0, 0, 32)]
    np.testing.assert_array_equal(tiles.cut(fitted, windows[0]), mosaic)


def test_fit_and_batches():
    mosaic = np.arange(64 * 96, dtype=np.float32).reshape(64, 96)
    fitted, windows, factor = tiles.fit(mosaic, 32, "tiles", "photo")
    assert factor == 1 and len(windows) == 6
    batches = list(tiles.batches(fitted, windows, 4))
    assert [len(c) for c, _ in batches] == [4, 2] and batches[0][1].shape == (4, 32, 32, 1)
    np.testing.assert_array_equal(batches[1][1][1, ..., 0], mosaic[32:, 64:])
    _, (center,), _ = tiles.fit(mosaic, 32, "center", "photo")
    assert center == tiles.Window(16, 32, 32)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((31, 64), "photo: mosaic is 31x64; a Bayer mosaic needs even height and width"),
        ((30, 64), "photo: mosaic is 30x64, smaller than the model's 32x32 input"),
    ],
)
def test_bad_sizes(shape, message):
    for how in tiles.FITS:
        with pytest.raises(UserError, match=message):
            tiles.fit(np.zeros(shape, np.float32), 32, how, "photo")
