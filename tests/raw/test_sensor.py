"""sensor: the unprocessing steps invert the forward ISP steps (NumPy references), noise has the stated variance,
short exposures are darker and noisier, and --sensor=realistic plugs into the tf.data builder deterministically."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from isp_keras.data import pipeline, sources
from isp_keras.raw import bayer, sensor


def np_srgb_decode(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def np_smoothstep(x):
    return 3 * x**2 - 2 * x**3


def test_tone_and_gamma_inverses_match_numpy():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(np_smoothstep(sensor.inverse_smoothstep(x).numpy()), x, atol=1e-5)
    np.testing.assert_allclose(sensor.srgb_to_linear(x).numpy(), np_srgb_decode(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sensor.linear_to_srgb(sensor.srgb_to_linear(x)).numpy(), x, atol=1e-5)


def test_random_ccm_is_seeded_and_keeps_white():
    a = sensor.random_ccm(tf.constant([1, 2])).numpy()
    b = sensor.random_ccm(tf.constant([1, 2])).numpy()
    c = sensor.random_ccm(tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)
    # A convex mix of the reference cameras times sRGB->XYZ, row-normalised: check against NumPy for one mix.
    w = tf.random.stateless_uniform([4, 1, 1], tf.constant([1, 2]), 1e-8, 1.0).numpy()
    ref = (sensor.XYZ_TO_CAMS * w).sum(0) / w.sum(0) @ sensor.RGB_TO_XYZ
    np.testing.assert_allclose(a, ref / ref.sum(1, keepdims=True), rtol=1e-5)


def test_unprocess_inverts_a_simple_isp():
    """Re-apply WB gains, camera->sRGB, gamma and tone curve in NumPy: the original image comes back."""
    rgb = np.random.default_rng(0).uniform(0.05, 0.7, (16, 16, 3)).astype(np.float32)
    cam, meta = sensor.unprocess(tf.constant(rgb), tf.constant([5, 6]))
    cam = cam.numpy()
    gains = np.array([meta["red_gain"], 1.0, meta["blue_gain"]]) * float(meta["rgb_gain"])
    lin = (cam * gains) @ np.linalg.inv(meta["rgb2cam"].numpy()).T
    srgb = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.maximum(lin, 1e-8) ** (1 / 2.4) - 0.055)
    back = np_smoothstep(np.clip(srgb, 0, 1))
    inside = (cam > 1e-4).all(-1) & (cam < 0.999).all(-1)
    assert inside.mean() > 0.8
    np.testing.assert_allclose(back[inside], rgb[inside], atol=2e-3)


def test_noise_variance_is_shot_times_signal_plus_read():
    signal, shot, read = 0.3, 4e-3, 1e-4
    cam = tf.fill([256, 256, 3], signal)
    raw = sensor.expose(cam, tf.constant([7, 8]), cfa="RGGB", exposure=1.0, noise_levels=(shot, read)).numpy()
    assert raw.shape == (256, 256, 1)
    assert raw.mean() == pytest.approx(signal, abs=2e-3)
    assert raw.var() == pytest.approx(signal * shot + read, rel=0.03)


def test_short_exposure_is_darker_and_noisier():
    cam = tf.fill([256, 256, 3], 0.4)
    seed = tf.constant([1, 1])
    levels = (4e-3, 1e-4)
    full = sensor.expose(cam, seed, cfa="RGGB", exposure=1.0, noise_levels=levels).numpy()
    short = sensor.expose(cam, seed, cfa="RGGB", exposure=0.25, noise_levels=levels).numpy()
    assert short.mean() == pytest.approx(0.25 * full.mean(), rel=0.02)
    snr = lambda x: x.mean() / x.std()  # noqa: E731
    assert snr(short) < 0.6 * snr(full)


def test_expose_mosaics_with_bayer_mosaic():
    cam = tf.random.stateless_uniform([8, 8, 3], [0, 1])
    raw = sensor.expose(cam, tf.constant([2, 3]), cfa="GRBG", noise_levels=(0.0, 0.0))
    np.testing.assert_array_equal(raw.numpy(), np.minimum(bayer.mosaic(cam, "GRBG").numpy(), 1.0))


def test_realistic_pipeline_is_deterministic():
    source = sources.get_source("embedded")
    cfg = pipeline.PipelineConfig(image_size=32, batch_size=16, take=32, sensor="realistic", cache=False)
    first = [raw.numpy() for raw, _, _ in pipeline.build(source, "test", cfg, training=False, norm=None, mode="mosaic")]
    again = [raw.numpy() for raw, _, _ in pipeline.build(source, "test", cfg, training=False, norm=None, mode="mosaic")]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    gauss = next(
        iter(
            pipeline.build(
                source, "test", dataclasses.replace(cfg, sensor="gaussian"), training=False, norm=None, mode="mosaic"
            )
        )
    )[0].numpy()
    # Linear camera RAW is much darker than the gamma-encoded sRGB the Gaussian sensor samples.
    assert np.concatenate(first).mean() < 0.6 * gauss.mean()
    with pytest.raises(ValueError, match="unknown sensor"):
        pipeline.raw_simulator(dataclasses.replace(cfg, sensor="film"))


def test_sensor_flag_is_checked():
    from isp_keras.errors import UserError
    from isp_keras.training.config import TrainConfig

    assert TrainConfig(sensor="realistic").validate().sensor == "realistic"
    with pytest.raises(UserError, match="--sensor=film: must be gaussian or realistic"):
        TrainConfig(sensor="film").validate()
