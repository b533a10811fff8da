"""Synthetic HDR+-like bursts from RGB images (embedded CIFAR-10 by default): a merged DNG and short-exposure
payload frames per burst, in the HDR+ dataset layout, for Table 2 without the real data."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import tensorflow as tf

from isp_keras import fsutil
from isp_keras.errors import UserError
from isp_keras.raw import bayer, rawio


@functools.cache
def _burst_fn(frames: int, short_exposure: float, cfa: str):
    from isp_keras.raw import sensor

    @tf.function
    def burst(rgb, seed):
        """Merged (long, `frames`-averaged noise) and payload (short, single-frame noise) mosaics of one scene."""
        unprocess_seed, level_seed, merged_seed, payload_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 4)
        )
        cam, meta = sensor.unprocess(rgb, unprocess_seed)
        shot, read = sensor.random_noise_levels(level_seed)
        merged = sensor.expose(cam, merged_seed, cfa=cfa, exposure=1.0, noise_levels=(shot / frames, read / frames))
        seeds = tf.random.experimental.stateless_split(payload_seed, frames)
        payload = tf.stack(
            [
                sensor.expose(cam, seeds[k], cfa=cfa, exposure=short_exposure, noise_levels=(shot, read))
                for k in range(frames)
            ]
        )
        return merged[..., 0], payload[..., 0], meta

    return burst


def _counts(x: np.ndarray, black: int, white: int) -> np.ndarray:
    return np.clip(np.round(black + x * (white - black)), 0, white).astype(np.uint16)


# Bit depths of the synthetic files: a 12-bit merged DNG and 10-bit payload frames with non-zero black levels.
MERGED_LEVELS = (256, 4095)
PAYLOAD_LEVELS = (64, 1023)


def synthesize_bursts(
    out_dir,
    images: np.ndarray,
    labels=None,
    *,
    tiles: int = 2,
    frames: int = 3,
    short_exposure: float = 0.25,
    cfa: str = "RGGB",
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Write HDR+-like bursts made from sRGB images (uint8 [N, s, s, 3]), `tiles` x `tiles` images per frame.

    Per burst: merged.dng (12-bit), payload_N000.dng ... (10-bit, `short_exposure`, noisier), reference_frame.txt
    and final.jpg = LibRaw's ISP (rawpy.postprocess: camera WB, colour matrix, AHD demosaic, sRGB gamma) run on
    merged.dng. Scenes are unprocessed with `sensor.py` (random colour matrix and white balance per burst, stored
    in the DNG as ColorMatrix1 and AsShotNeutral). Also writes labels.csv (burst, tile, label) when labels are
    given. The folder appears only when complete. Returns the number of bursts.
    """
    import rawpy
    from PIL import Image
    from tqdm import tqdm

    cfa = bayer.check_cfa(cfa)
    images = np.asarray(images)
    per = tiles * tiles
    count = len(images) // per
    if count < 1:
        raise UserError(f"synthetic bursts: need at least {per} images, got {len(images)}")
    side = images.shape[1] * tiles
    if side < rawio.MIN_SIDE:
        raise UserError(
            f"synthetic bursts: frames of {side} px are below LibRaw's minimum {rawio.MIN_SIDE}; use more tiles"
        )
    out = Path(out_dir)
    burst_fn = _burst_fn(frames, float(short_exposure), cfa)
    rng = np.random.default_rng(seed)
    label_rows = ["burst,tile,label"]
    with fsutil.atomic_dir(out) as tmp:
        for b in tqdm(range(count), desc="synthetic bursts", unit="burst", disable=not progress):
            group = images[b * per : (b + 1) * per]
            frame = np.concatenate(
                [np.concatenate(list(group[r * tiles : (r + 1) * tiles]), axis=1) for r in range(tiles)], axis=0
            )
            merged, payload, meta = burst_fn(tf.constant(frame, tf.float32) / 255.0, tf.constant([seed, b], tf.int64))
            folder = tmp / f"burst_{b:05d}"
            folder.mkdir()
            wb = [float(meta["red_gain"]), 1.0, float(meta["blue_gain"])]
            # DNG ColorMatrix1 is XYZ -> camera = (sRGB -> camera) @ (XYZ -> sRGB).
            matrix = meta["rgb2cam"].numpy().astype(np.float64) @ rawio.XYZ_TO_SRGB
            rawio.write_dng(
                folder / "merged.dng",
                _counts(merged.numpy(), *MERGED_LEVELS),
                cfa,
                MERGED_LEVELS[0],
                MERGED_LEVELS[1],
                wb_gains=wb,
                color_matrix=matrix,
            )
            for k, shot in enumerate(payload.numpy()):
                rawio.write_dng(
                    folder / f"payload_N{k:03d}.dng",
                    _counts(shot, *PAYLOAD_LEVELS),
                    cfa,
                    PAYLOAD_LEVELS[0],
                    PAYLOAD_LEVELS[1],
                    wb_gains=wb,
                    color_matrix=matrix,
                )
            fsutil.write_text_atomic(folder / "reference_frame.txt", f"{int(rng.integers(frames))}\n")
            with rawpy.imread(str(folder / "merged.dng")) as raw:
                final = raw.postprocess(
                    use_camera_wb=True,
                    no_auto_bright=True,
                    bright=float(meta["rgb_gain"]),
                    output_bps=8,
                    user_flip=0,
                    gamma=(2.4, 12.92),
                )
            Image.fromarray(final).save(folder / "final.jpg", quality=95)
            if labels is not None:
                label_rows += [f"{folder.name},{t},{int(labels[b * per + t])}" for t in range(per)]
        if labels is not None:
            fsutil.write_text_atomic(tmp / "labels.csv", "\n".join(label_rows) + "\n")
    return count


def embedded_images(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images (uint8) and labels of a split of the embedded CIFAR-10 subset."""
    from isp_keras.data import sources

    source = sources.get_source("embedded")
    images, labels = [], []
    for image, label in source.split(split).take(count):
        images.append(image.numpy())
        labels.append(int(label))
    if len(images) < count:
        raise UserError(f"embedded {split}: has {len(images)} images, {count} asked for")
    return np.stack(images), np.asarray(labels)
