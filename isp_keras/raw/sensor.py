"""A realistic sensor simulator: "unprocess" an sRGB image into plausible linear camera RAW and add sensor noise.

After Brooks et al., "Unprocessing Images for Learned Raw Denoising" (CVPR 2019): invert the tone curve and the
sRGB gamma, map linear sRGB to a random camera colour space, undo a random white balance (keeping highlights from
turning magenta), sample through the Bayer CFA (`bayer.mosaic`) and add heteroscedastic noise
(variance = shot * signal + read), with levels drawn per image. A short exposure scales the signal before the
noise, so the same scene comes out darker and noisier. Plain TensorFlow functions with stateless seeds: usable
in tf.data (`simulate_raw`, selected by `--sensor=realistic`) and eagerly to write synthetic DNG bursts.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from isp_keras.raw import bayer

# XYZ -> camera matrices of four real cameras (Adobe DNG ColorMatrix values, as used by Brooks et al.).
XYZ_TO_CAMS = np.array(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
    ],
    np.float32,
)
# Linear sRGB (D65) -> XYZ.
RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    np.float32,
)

# Noise levels are variances in units of the white level (Brooks et al.'s ranges for real phone/DSLR sensors).
SHOT_RANGE = (1e-4, 1.2e-2)
READ_SLOPE, READ_INTERCEPT, READ_SPREAD = 2.18, 1.20, 0.26


def inverse_smoothstep(x):
    """Inverse of the global tone curve 3x^2 - 2x^3 on [0, 1]."""
    x = tf.clip_by_value(x, 0.0, 1.0)
    return 0.5 - tf.sin(tf.asin(1.0 - 2.0 * x) / 3.0)


def srgb_to_linear(x):
    x = tf.clip_by_value(x, 0.0, 1.0)
    return tf.where(x <= 0.04045, x / 12.92, tf.pow((x + 0.055) / 1.055, 2.4))


def linear_to_srgb(x):
    x = tf.clip_by_value(x, 0.0, 1.0)
    return tf.where(x <= 0.0031308, x * 12.92, 1.055 * tf.pow(tf.maximum(x, 1e-8), 1.0 / 2.4) - 0.055)


def random_ccm(seed):
    """A random linear sRGB -> camera matrix [3, 3]: a random convex mix of real XYZ->camera matrices times
    sRGB->XYZ, rows normalised to 1 so that white stays white before the white balance."""
    weights = tf.random.stateless_uniform([len(XYZ_TO_CAMS), 1, 1], seed, 1e-8, 1.0)
    xyz2cam = tf.reduce_sum(XYZ_TO_CAMS * weights, axis=0) / tf.reduce_sum(weights, axis=0)
    rgb2cam = tf.matmul(xyz2cam, RGB_TO_XYZ)
    return rgb2cam / tf.reduce_sum(rgb2cam, axis=-1, keepdims=True)


def random_gains(seed):
    """(rgb_gain, red_gain, blue_gain): overall brightening and the camera's white-balance multipliers."""
    s1, s2, s3 = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    rgb_gain = 1.0 / tf.random.stateless_normal([], s1, mean=0.8, stddev=0.1)
    red = tf.random.stateless_uniform([], s2, 1.9, 2.4)
    blue = tf.random.stateless_uniform([], s3, 1.5, 1.9)
    return rgb_gain, red, blue


def random_noise_levels(seed):
    """(shot, read) variances: log-uniform shot level, read level on the log-linear line fitted to real sensors."""
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    log_shot = tf.random.stateless_uniform([], s1, math.log(SHOT_RANGE[0]), math.log(SHOT_RANGE[1]))
    log_read = READ_SLOPE * log_shot + READ_INTERCEPT + tf.random.stateless_normal([], s2, stddev=READ_SPREAD)
    return tf.exp(log_shot), tf.exp(log_read)


def apply_ccm(image, ccm):
    return tf.tensordot(image, tf.cast(ccm, image.dtype), axes=[[-1], [-1]])


def safe_invert_gains(image, rgb_gain, red_gain, blue_gain):
    """Divide by the white-balance gains, but let bright (near-saturated) pixels keep their value so that
    highlights stay neutral after the camera's WB is applied again."""
    gains = tf.stack([1.0 / red_gain, 1.0, 1.0 / blue_gain]) / rgb_gain
    gray = tf.reduce_mean(image, axis=-1, keepdims=True)
    inflection = 0.9
    mask = tf.square(tf.maximum(gray - inflection, 0.0) / (1.0 - inflection))
    safe = tf.maximum(mask + (1.0 - mask) * gains, gains)
    return image * safe


def unprocess(rgb, seed):
    """sRGB [..., H, W, 3] in [0, 1] -> (linear camera RGB in [0, 1], metadata). `metadata`: rgb2cam [3, 3],
    rgb_gain, red_gain, blue_gain (what a camera would store as colour matrix and as-shot white balance)."""
    ccm_seed, gain_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    rgb2cam = random_ccm(ccm_seed)
    rgb_gain, red, blue = random_gains(gain_seed)
    linear = srgb_to_linear(inverse_smoothstep(rgb))
    cam = tf.clip_by_value(apply_ccm(linear, rgb2cam), 0.0, 1.0)
    cam = tf.clip_by_value(safe_invert_gains(cam, rgb_gain, red, blue), 0.0, 1.0)
    return cam, {"rgb2cam": rgb2cam, "rgb_gain": rgb_gain, "red_gain": red, "blue_gain": blue}


def add_sensor_noise(raw, seed, shot, read):
    """Heteroscedastic Gaussian approximation of Poisson shot noise plus read noise: var = shot * signal + read."""
    variance = tf.maximum(raw, 0.0) * shot + read
    return raw + tf.sqrt(variance) * tf.random.stateless_normal(tf.shape(raw), seed, dtype=raw.dtype)


def expose(cam, seed, *, cfa: str, exposure: float = 1.0, noise_levels=None, noise_scale: float = 1.0):
    """Camera RGB -> noisy mosaic [..., H, W, 1] of an exposure `exposure` (1 = full, 0.25 = two stops short),
    clipped at the white level. `noise_levels`: (shot, read) variances, drawn from `seed` when None."""
    level_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shot, read = noise_levels if noise_levels is not None else random_noise_levels(level_seed)
    raw = bayer.mosaic(cam, cfa) * exposure
    noisy = add_sensor_noise(raw, noise_seed, shot * noise_scale**2, read * noise_scale**2)
    return tf.minimum(noisy, 1.0)


def simulate_raw(rgb, label, noise_seed, *, cfa: str, exposure: float = 1.0):
    """tf.data step with the signature of `datasets.simulate_raw`: realistic RAW from the RGB crop."""
    unprocess_seed, expose_seed = tf.unstack(tf.random.experimental.stateless_split(noise_seed, 2))
    cam, _ = unprocess(rgb, unprocess_seed)
    return expose(cam, expose_seed, cfa=cfa, exposure=exposure), rgb, label
