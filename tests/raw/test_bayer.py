"""RAW ops against NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from isp_keras.raw import bayer
from isp_keras.raw.cfa import CFA_PATTERNS

CFAS = CFA_PATTERNS


def np_mosaic(rgb, cfa):
    h, w = rgb.shape[-3:-1]
    out = np.zeros(rgb.shape[:-1] + (1,), np.float32)
    for y in range(h):
        for x in range(w):
            c = "RGB".index(cfa[2 * (y % 2) + (x % 2)])
            out[..., y, x, 0] = rgb[..., y, x, c]
    return out


def np_infill(raw, cfa):
    """Bilinear demosaic by definition: a sampled value stays; a missing one is the mean of the same-colour
    samples among its 8 neighbours that lie inside the image."""
    h, w = raw.shape[:2]
    colour = np.array([["RGB".index(cfa[2 * (y % 2) + (x % 2)]) for x in range(w)] for y in range(h)])
    out = np.zeros((h, w, 3), np.float64)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                if colour[y, x] == c:
                    out[y, x, c] = raw[y, x, 0]
                    continue
                vals = [
                    raw[yy, xx, 0]
                    for yy in range(y - 1, y + 2)
                    for xx in range(x - 1, x + 2)
                    if 0 <= yy < h and 0 <= xx < w and colour[yy, xx] == c
                ]
                out[y, x, c] = np.mean(vals)
    return out


@pytest.mark.parametrize("cfa", CFAS)
def test_mosaic_matches_numpy(cfa):
    rgb = np.random.default_rng(0).random((2, 6, 8, 3), dtype=np.float32)
    got = bayer.mosaic(tf.constant(rgb), cfa).numpy()
    assert got.shape == (2, 6, 8, 1) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np_mosaic(rgb, cfa))


@pytest.mark.parametrize("cfa", CFAS)
def test_infill_matches_numpy_including_borders(cfa):
    raw = np.random.default_rng(1).random((3, 8, 10, 1), dtype=np.float32)
    got = bayer.infill(tf.constant(raw), cfa).numpy()
    assert got.shape == (3, 8, 10, 3) and got.dtype == np.float32
    err = max(np.abs(got[i] - np_infill(raw[i], cfa)).max() for i in range(3))
    assert err < 1e-6, err


def test_infill_single_image_rank3():
    raw = np.random.default_rng(2).random((4, 6, 1), dtype=np.float32)
    np.testing.assert_allclose(bayer.infill(tf.constant(raw), "GRBG").numpy(), np_infill(raw, "GRBG"), atol=1e-6)


@pytest.mark.parametrize("cfa", CFAS)
def test_constant_colour_survives_mosaic_and_infill(cfa):
    colour = np.array([0.2, 0.55, 0.9], np.float32)
    rgb = np.broadcast_to(colour, (1, 6, 6, 3)).copy()
    out = bayer.infill(bayer.mosaic(tf.constant(rgb), cfa), cfa).numpy()
    np.testing.assert_allclose(out, rgb, atol=1e-6)  # edges included: no darkened border rows


def test_noise_is_stateless_and_has_the_asked_std():
    raw = tf.zeros([64, 64, 1])
    a = bayer.add_noise(raw, 0.1, tf.constant([1, 2], tf.int64)).numpy()
    b = bayer.add_noise(raw, 0.1, tf.constant([1, 2], tf.int64)).numpy()
    c = bayer.add_noise(raw, 0.1, tf.constant([1, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.01
    assert abs(a.std() - 0.1) < 0.01 and abs(a.mean()) < 0.01
    assert bayer.add_noise(raw, 0.0, tf.constant([1, 2])) is raw


@pytest.mark.parametrize("cfa", ["RGGB", "GBRG"])
def test_site_statistics_match_numpy(cfa):
    rgb = np.random.default_rng(3).random((5, 6, 8, 3), dtype=np.float32) * np.array([1.0, 0.5, 0.25], np.float32)
    raw = bayer.mosaic(tf.constant(rgb), cfa)
    half = [bayer.site_moments(raw[:2], cfa).numpy(), bayer.site_moments(raw[2:], cfa).numpy()]
    mean, std = bayer.moments_to_stats(half[0] + half[1])  # accumulates over batches
    ref = np_mosaic(rgb, cfa)[..., 0]
    colour = np.array([["RGB".index(cfa[2 * (y % 2) + (x % 2)]) for x in range(8)] for y in range(6)])
    for c in range(3):
        vals = ref[:, colour == c]
        assert abs(mean[c] - vals.mean()) < 1e-5
        assert abs(std[c] - vals.std()) < 1e-5


def test_normalize_and_raw_to_input():
    raw = np.random.default_rng(4).random((2, 4, 4, 1), dtype=np.float32)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    got = bayer.raw_to_input(tf.constant(raw), "BGGR", mean, std).numpy()
    ref = np.stack([np_infill(r, "BGGR") for r in raw])
    np.testing.assert_allclose(got, (ref - mean) / std, atol=1e-5)


def test_bad_cfa_and_odd_size():
    with pytest.raises(ValueError, match="CFA"):
        bayer.check_cfa("RGBG")
    with pytest.raises(ValueError, match="even"):
        bayer.check_even(31, 32)
    masks = bayer.cfa_masks(3, 5, "RGGB")
    assert masks.shape == (3, 5, 3) and masks.sum() == 15
