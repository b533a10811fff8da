"""The single home of the RAW maths: Bayer mosaic, noise, bilinear infill, per-site statistics.

Plain TensorFlow functions, shared by the tf.data pipeline and by the exported serving graph.
Images are float tensors in [0, 1], channels-last, RGB order. A mosaic has one channel.
The CFA pattern string gives the colours at (0,0), (0,1), (1,0), (1,1) of each 2x2 tile.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from isp_keras.raw.cfa import check_cfa

_CHANNEL = {"R": 0, "G": 1, "B": 2}

# Bilinear interpolation kernels: R and B sites sit on a rectangular lattice of step 2, G on a quincunx.
_RB_KERNEL = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], np.float32)
_G_KERNEL = np.array([[0.0, 0.25, 0.0], [0.25, 1.0, 0.25], [0.0, 0.25, 0.0]], np.float32)


def site_index(cfa: str) -> np.ndarray:
    """2x2 array of channel indices (0=R, 1=G, 2=B) of the pattern's tile."""
    cfa = check_cfa(cfa)
    return np.array([[_CHANNEL[cfa[0]], _CHANNEL[cfa[1]]], [_CHANNEL[cfa[2]], _CHANNEL[cfa[3]]]], np.int32)


def cfa_masks(height: int, width: int, cfa: str) -> np.ndarray:
    """One-hot site masks, float32 [height, width, 3]: mask[y, x, c] = 1 where the sensor samples colour c."""
    idx = np.tile(site_index(cfa), (height // 2 + 1, width // 2 + 1))[:height, :width]
    return np.eye(3, dtype=np.float32)[idx]


def _masks_like(x: tf.Tensor, cfa: str) -> tf.Tensor:
    shape = x.shape
    if shape[-3] is None or shape[-2] is None:
        raise ValueError("Bayer ops need a static image height and width")
    return tf.constant(cfa_masks(int(shape[-3]), int(shape[-2]), cfa))


def check_even(height: int, width: int, what: str = "image") -> None:
    if height % 2 or width % 2:
        raise ValueError(f"{what} is {height}x{width}; a Bayer mosaic needs even height and width")


def mosaic(rgb: tf.Tensor, cfa: str = "RGGB") -> tf.Tensor:
    """Sample an RGB image ([..., H, W, 3]) through a Bayer CFA: returns [..., H, W, 1]."""
    masks = _masks_like(rgb, cfa)
    return tf.reduce_sum(rgb * masks, axis=-1, keepdims=True)


def add_noise(raw: tf.Tensor, std: float, seed) -> tf.Tensor:
    """Add zero-mean Gaussian noise of standard deviation `std` with a stateless seed (shape [2] int)."""
    if std == 0:
        return raw
    noise = tf.random.stateless_normal(tf.shape(raw), seed=seed, stddev=std, dtype=raw.dtype)
    return raw + noise


def infill_kernel() -> np.ndarray:
    """The bilinear interpolation kernel of each colour, float32 [3, 3, channel] (R, G, B); symmetric."""
    return np.stack([_RB_KERNEL, _G_KERNEL, _RB_KERNEL], axis=-1)


def _border_weights(height: int, width: int, cfa: str) -> np.ndarray:
    """1 / (kernel mass that falls on existing same-colour samples), per pixel and channel: [H, W, 3].

    It is 1 inside the image; at the borders it renormalises the kernel over the samples that exist."""
    masks = np.pad(cfa_masks(height, width, cfa), [(1, 1), (1, 1), (0, 0)])
    k = infill_kernel()
    mass = sum(k[dy, dx] * masks[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    return (1.0 / mass).astype(np.float32)


def _tile_conv_weights(cfa: str, scale) -> np.ndarray:
    """The bilinear kernels of all four pixel phases as one 3x3 convolution over the space-to-depth mosaic.

    Input channel i*2+j holds the sample at phase (i, j) of each 2x2 tile; output channel (a*2+b)*3+c is colour c
    at phase (a, b), in tf.nn.depth_to_space order. `scale` [3] multiplies colour c (the 1/std of normalisation).
    """
    site, kernel = site_index(cfa), infill_kernel()
    weights = np.zeros((3, 3, 4, 12), np.float64)
    for a in range(2):
        for b in range(2):
            for u in (-1, 0, 1):
                for v in (-1, 0, 1):
                    i, j = (a + u) % 2, (b + v) % 2
                    c = site[i, j]
                    weights[(a + u) // 2 + 1, (b + v) // 2 + 1, i * 2 + j, (a * 2 + b) * 3 + c] += (
                        kernel[u + 1, v + 1, c] * scale[c]
                    )
    return weights.astype(np.float32)


def _affine_infill(raw: tf.Tensor, cfa: str, scale, offset) -> tf.Tensor:
    """(bilinear infill of `raw`) * scale + offset per channel, for a mosaic [B, H, W, 1].

    One convolution over the 2x2 tiles gives the exact result inside the image; only the one-pixel border, where
    the kernel overhangs, is renormalised over the samples that exist (normalised convolution). Done this way so
    that a full-integer (int8) export rounds the interior once, not once per mask/convolution/normalisation step
    (docs/decisions/infill-as-normalised-convolution.md): training and serving both run this function.
    """
    if raw.shape[1] is None or raw.shape[2] is None:
        raise ValueError("Bayer ops need a static image height and width")
    height, width = int(raw.shape[1]), int(raw.shape[2])
    check_even(height, width, "mosaic")
    scale = np.asarray(scale, np.float64)
    offset = np.asarray(offset, np.float64)
    weights = tf.constant(_tile_conv_weights(cfa, scale), raw.dtype)
    bias = tf.constant(np.tile(offset, 4).astype(np.float32), raw.dtype)
    tiles = tf.nn.space_to_depth(raw, 2)
    out = tf.nn.depth_to_space(tf.nn.conv2d(tiles, weights, 1, "SAME") + bias, 2)
    if height < 3 or width < 3:
        return (out - offset) * _border_weights(height, width, cfa) + offset
    gain = _border_weights(height, width, cfa)
    off = tf.constant(offset.astype(np.float32), raw.dtype)

    def fix(strip, g):  # strip = partial sum * scale + offset -> full-mass value * scale + offset
        return (strip - off) * tf.constant(g, raw.dtype) + off

    top = fix(out[:, :1], gain[:1])
    bottom = fix(out[:, -1:], gain[-1:])
    left = fix(out[:, 1:-1, :1], gain[1:-1, :1])
    right = fix(out[:, 1:-1, -1:], gain[1:-1, -1:])
    middle = tf.concat([left, out[:, 1:-1, 1:-1], right], axis=2)
    return tf.concat([top, middle, bottom], axis=1)


def _batched(fn, raw: tf.Tensor, *args) -> tf.Tensor:
    if raw.shape.rank == 3:
        return fn(raw[tf.newaxis], *args)[0]
    return fn(raw, *args)


def infill(raw: tf.Tensor, cfa: str = "RGGB") -> tf.Tensor:
    """Bilinear infill of a mosaic [B, H, W, 1] (or [H, W, 1]) to three channels.

    A sampled value stays; a missing one is the bilinear average of the same-colour samples around it. At the
    image border the average is taken over the samples that exist (normalised convolution), so edge rows are
    neither darkened (zero padding) nor biased towards the inner row (mirror padding).
    """
    return _batched(_affine_infill, raw, check_cfa(cfa), np.ones(3), np.zeros(3))


def site_moments(raw: tf.Tensor, cfa: str = "RGGB") -> tf.Tensor:
    """Sufficient statistics of a batch of mosaics per Bayer site: float64 [3, 3] rows (count, sum, sum of squares)."""
    masks = tf.cast(_masks_like(raw, cfa), tf.float64)
    x = tf.cast(raw, tf.float64)
    axes = tf.range(tf.rank(x) - 1)
    count = tf.reduce_sum(tf.broadcast_to(masks, tf.shape(x * masks)), axis=axes)
    total = tf.reduce_sum(x * masks, axis=axes)
    squares = tf.reduce_sum(x * x * masks, axis=axes)
    return tf.stack([count, total, squares])


def moments_to_stats(moments) -> tuple[np.ndarray, np.ndarray]:
    """(mean[3], std[3]) per Bayer site (R, G, B) from accumulated `site_moments`."""
    count, total, squares = np.asarray(moments, np.float64)
    if np.any(count == 0):
        raise ValueError("no samples for some Bayer site; cannot compute per-site statistics")
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    return mean.astype(np.float32), np.sqrt(var + 1e-12).astype(np.float32)


def normalize(x: tf.Tensor, mean, std) -> tf.Tensor:
    """Per-channel normalisation; for infilled RAW, channel c uses the statistics of Bayer site c."""
    mean = tf.constant(np.asarray(mean, np.float32), x.dtype)
    std = tf.constant(np.asarray(std, np.float32), x.dtype)
    return (x - mean) / std


def raw_to_input(raw: tf.Tensor, cfa: str, mean, std) -> tf.Tensor:
    """What the student sees: infilled mosaic normalised per Bayer site. Used by training and serving alike.

    Equals normalize(infill(raw, cfa), mean, std); the normalisation is folded into the infill's convolution."""
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    return _batched(_affine_infill, raw, check_cfa(cfa), 1.0 / std, -mean / std)


def _pack(raw: tf.Tensor) -> tf.Tensor:
    if raw.shape[1] is None or raw.shape[2] is None:
        raise ValueError("Bayer ops need a static image height and width")
    check_even(int(raw.shape[1]), int(raw.shape[2]), "mosaic")
    return tf.nn.space_to_depth(raw, 2)


def pack(raw: tf.Tensor) -> tf.Tensor:
    """Mosaic [B, H, W, 1] (or [H, W, 1]) -> its 2x2 tiles [B, H/2, W/2, 4], channel i*2+j holding phase (i, j):
    the input of a packed student, whose first layer already holds the infill and the normalisation."""
    return _batched(_pack, raw)


def scale_levels(raw: tf.Tensor, black_level: float, white_level: float) -> tf.Tensor:
    """Integer sensor counts -> float32 mosaic in [0, 1] (black -> 0, white -> 1), as the exported uint16 input
    needs. Not clipped: sensor noise below the black level stays negative, like the simulated training noise."""
    if not white_level > black_level:
        raise ValueError(f"white level {white_level} must be above the black level {black_level}")
    return (tf.cast(raw, tf.float32) - float(black_level)) / float(white_level - black_level)
