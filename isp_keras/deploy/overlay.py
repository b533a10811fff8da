"""A picture of a prediction: the photo (a quick demosaic) with each tile's frame, top class and confidence.

For people who would rather look than read. The demosaic is deliberately crude (one RGB pixel per 2x2 CFA tile,
grey-world white balance, gamma 1/2.2, the 99th percentile as white): it shows what is where, not how the camera's
ISP would render it.
"""

from __future__ import annotations

import io

import numpy as np

from isp_keras import fsutil
from isp_keras.raw.cfa import CFA_PATTERNS

MAX_SIDE = 1600  # larger pictures are shrunk: the labels stay readable and the PNG small
_COLOUR = {"R": 0, "G": 1, "B": 2}


def quick_rgb(mosaic: np.ndarray, cfa: str) -> np.ndarray:
    """float [H, W] mosaic in the `cfa` phase -> uint8 [H/2, W/2, 3] for display."""
    if cfa not in CFA_PATTERNS:
        raise ValueError(f"unknown CFA {cfa!r}")
    h, w = mosaic.shape
    sites = (
        mosaic[: h // 2 * 2, : w // 2 * 2]
        .reshape(h // 2, 2, w // 2, 2)
        .transpose(0, 2, 1, 3)
        .reshape(h // 2, w // 2, 4)
    )
    rgb = np.zeros((h // 2, w // 2, 3), np.float64)
    for site, letter in enumerate(cfa):
        rgb[..., _COLOUR[letter]] += sites[..., site] / cfa.count(letter)
    rgb = np.clip(rgb, 0, None)
    means = rgb.reshape(-1, 3).mean(axis=0)
    rgb *= means.mean() / np.maximum(means, 1e-6)
    rgb /= max(float(np.percentile(rgb, 99)), 1e-6)
    return (np.clip(rgb, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)


def draw(path, mosaic: np.ndarray, cfa: str, boxes: list[tuple[int, int, int, str]]) -> None:
    """Write a PNG of `mosaic` with one frame per (y, x, size, text) box in mosaic coordinates."""
    from PIL import Image, ImageDraw, ImageFont

    rgb = quick_rgb(mosaic, cfa)
    scale = 0.5 * min(1.0, MAX_SIDE / max(rgb.shape[:2]))
    image = Image.fromarray(rgb)
    if scale < 0.5:
        image = image.resize((round(mosaic.shape[1] * scale), round(mosaic.shape[0] * scale)), Image.BILINEAR)
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for y, x, size, text in boxes:
        box = [round(x * scale), round(y * scale), round((x + size) * scale) - 1, round((y + size) * scale) - 1]
        pen.rectangle(box, outline=(255, 255, 0), width=1)
        left, top, right, bottom = pen.textbbox((box[0] + 2, box[1] + 1), text, font=font)
        pen.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
        pen.text((box[0] + 2, box[1] + 1), text, fill=(255, 255, 0), font=font)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    fsutil.write_bytes_atomic(path, buf.getvalue())
