"""deploy.overlay: the quick demosaic against NumPy, and the picture's size and frames."""

from __future__ import annotations

import numpy as np
from PIL import Image

from isp_keras.deploy import overlay


def test_quick_rgb_takes_each_colour_from_its_sites():
    # GRBG tile: G R / B G; a red-and-blue-free scene is green, a grey one stays grey after grey-world balance
    tile = np.array([[0.2, 0.8], [0.1, 0.4]], np.float32)  # G=0.2,0.4 -> 0.3; R=0.8; B=0.1
    rgb = overlay.quick_rgb(np.tile(tile, (4, 6)), "GRBG")
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert np.all(rgb == rgb[0, 0]) and np.all(rgb[0, 0] == 255)  # balanced to grey, 99th percentile is white
    ramp = np.linspace(0.05, 1.0, 8 * 8, dtype=np.float32).reshape(8, 8)
    mosaic = np.kron(ramp, np.ones((2, 2), np.float32))  # every colour sees the same value: grey ramp
    rgb = overlay.quick_rgb(mosaic, "RGGB")
    assert np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2])
    ramp = ramp.astype(np.float64)
    white = np.percentile(np.stack([ramp] * 3, axis=-1), 99)  # over all three channels
    expected = np.clip(ramp / white, 0, 1) ** (1 / 2.2) * 255 + 0.5
    np.testing.assert_array_equal(rgb[..., 0], expected.astype(np.uint8))


def test_draw_frames_each_tile(tmp_path):
    mosaic = np.full((64, 128), 0.1, np.float32)
    path = tmp_path / "shot.png"
    overlay.draw(path, mosaic, "RGGB", [(0, 0, 64, "goldfish 0.91"), (0, 64, 64, "tench 0.55")])
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (32, 64, 3)
    yellow = np.all(image == (255, 255, 0), axis=-1)
    assert yellow[31, 0] and yellow[31, 31] and yellow[31, 32] and yellow[31, 63]  # bottom edges of both frames
    assert not yellow[20, 16]


def test_large_photos_are_shrunk(tmp_path):
    path = tmp_path / "big.png"
    overlay.draw(path, np.zeros((2000, 4000), np.float32), "RGGB", [(0, 0, 1000, "x")])
    assert Image.open(path).size == (overlay.MAX_SIDE, overlay.MAX_SIDE // 2)
