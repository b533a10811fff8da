"""RAW/RGB pairs (the HDR+ protocol): listing them and cutting each into aligned patches. The teacher-labelled patch
cache built from them is data/pair_cache.py; synthetic HDR+-like bursts, data/synthetic_bursts.py.

Inputs are pairs (RAW file, processed RGB file, group id), from a CSV manifest or from an HDR+ burst folder:

  csv:FILE       a CSV with a header `raw,rgb,group`; paths relative to the CSV's folder; an empty rgb (or
                 `libraw`) renders the RGB from the RAW file with LibRaw (raw.render); an optional `format` column
                 names a dump's sidecar JSON kept apart from it (e.g. for files in a read-only folder).
  raw:DIR        every RAW file in DIR (not recursive: camera formats, and dumps/mosaic images with a sidecar JSON),
                 each its own group, the RGB rendered by LibRaw: a folder of camera files without JPEGs gives the
                 paper's "full ISP discarded" pairs.
  hdrplus:DIR    one sub-folder per burst (the group id is the folder name), either self-contained
                   DIR/<burst>/merged.dng, final.jpg, payload_N000.dng ..., reference_frame.txt
                 or the published dataset's split layout
                   DIR/bursts/<burst>/payload_N*.dng, reference_frame.txt
                   DIR/results*/<burst>/merged.dng, final.jpg
                 mode `merged`: RAW = merged.dng; mode `short`: RAW = the reference payload frame
                 (payload frames sorted by name, index from reference_frame.txt). RGB = final.jpg in both.

The RAW is read with `rawio.read_raw` (canonical CFA phase; headerless dumps and mosaic images take their format
from `--raw_*` flags over a sidecar JSON per file, see raw/dumps.py); the RGB is cropped by the same offset and must
then have the same size (raw.render explains why LibRaw's rendering is pixel-aligned with the mosaic). Both are cut
into aligned non-overlapping `patch_size` squares (the mosaic's 2x2 phase is kept because the patch size is even).
Groups are split 80/20 with a seed (no group in both splits). The teacher labels each RGB patch; the test split keeps
only patches whose top teacher probability exceeds `min_teacher_prob`.

Build a cache on its own (Table 2 builds its caches itself):
  python -m isp_keras.pairs --pairs=hdrplus:DIR --out=CACHE --teacher=T.keras [--mode=short] [--patch_size=256]
  [--strict]; `--synthesize_bursts=N` first fills a missing hdrplus:DIR with synthetic bursts made from the
  embedded test images.

Cache directory (written under a temporary name, renamed when complete, so a half-built cache is never read):
  index.json   {"format": "isp_keras.pairs/1", "key": ..., "splits": {...}, "skipped": {...}, "raw_stats": ...}
  {split}-{i:05d}-of-{n:05d}.tfrecord   GZIP; features raw (float32 bytes), rgb (uint8 bytes), label, prob, group
A later build with the same inputs and settings (the `key`) reuses the cache without decoding the RAW files again.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from isp_keras.errors import UserError
from isp_keras.raw import dumps, rawio, render

MODES = ("merged", "short")
LIBRAW = "libraw"  # Pair.rgb of a pair whose RGB is rendered from its RAW file
# What raw:DIR lists: DNG and the camera formats LibRaw reads most often, and any file with a sidecar JSON (a sensor
# dump or mosaic image, raw.dumps).
CAMERA_SUFFIXES = (
    ".dng",
    ".cr2",
    ".cr3",
    ".nef",
    ".nrw",
    ".arw",
    ".srw",
    ".orf",
    ".rw2",
    ".raf",
    ".pef",
    ".3fr",
    ".iiq",
)
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class Pair:
    raw: str
    rgb: str
    group: str
    problem: str | None = None  # found while listing (e.g. a burst without its reference frame)
    sidecar: str | None = None  # a dump's format JSON kept elsewhere (the manifest's `format` column)


def pairs_from_csv(path) -> list[Pair]:
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read the manifest ({exc})") from None
    if not rows or not {"raw", "rgb", "group"} <= set(rows[0]):
        raise UserError(f"{path}: the manifest needs a header raw,rgb,group and at least one row")
    base = path.parent
    return [
        Pair(
            str(base / r["raw"]),
            str(base / r["rgb"]) if r["rgb"] not in ("", LIBRAW) else LIBRAW,
            str(r["group"]),
            sidecar=str(base / r["format"]) if r.get("format") else None,
        )
        for r in rows
    ]


def pairs_from_raw_folder(root) -> list[Pair]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"raw:{root}: not a directory")
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and (p.suffix.lower() in CAMERA_SUFFIXES or (p.suffix != ".json" and dumps.sidecar_path(p)))
    )
    if not files:
        raise UserError(
            f"raw:{root}: no RAW files (camera formats {', '.join(CAMERA_SUFFIXES)}, or files with a sidecar JSON)"
        )
    return [Pair(str(p), LIBRAW, p.name) for p in files]


def _payload_frame(burst: Path) -> tuple[str, str | None]:
    frames = sorted(burst.glob("payload_N*.dng"))
    ref_file = burst / "reference_frame.txt"
    if not frames:
        return str(burst / "payload_N000.dng"), f"{burst}: no payload_N*.dng frames"
    try:
        ref = int(ref_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return str(frames[0]), f"{ref_file}: missing or not an integer frame index"
    if not 0 <= ref < len(frames):
        return str(frames[0]), f"{ref_file}: frame {ref} but the burst has {len(frames)} payload frames"
    return str(frames[ref]), None


def pairs_from_hdrplus(root, mode: str = "merged") -> list[Pair]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"hdrplus:{root}: not a directory")
    if (root / "bursts").is_dir():
        bursts = sorted(p for p in (root / "bursts").iterdir() if p.is_dir())
        results = sorted(p for p in root.glob("results*") if p.is_dir())

        def result_dir(burst):
            return next((r / burst.name for r in results if (r / burst.name).is_dir()), burst)
    else:
        bursts = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

        def result_dir(burst):
            return burst

    if not bursts:
        raise UserError(f"hdrplus:{root}: no burst folders")
    pairs = []
    for burst in bursts:
        final = result_dir(burst) / "final.jpg"
        if mode == "merged":
            pairs.append(Pair(str(result_dir(burst) / "merged.dng"), str(final), burst.name))
        else:
            raw, problem = _payload_frame(burst)
            pairs.append(Pair(raw, str(final), burst.name, problem))
    return pairs


def list_pairs(spec: str, mode: str = "merged") -> list[Pair]:
    kind, _, arg = spec.partition(":")
    if kind == "csv" and arg:
        return pairs_from_csv(arg)
    if kind == "hdrplus" and arg:
        return pairs_from_hdrplus(arg, mode)
    if kind == "raw" and arg:
        return pairs_from_raw_folder(arg)
    raise UserError(f"--pairs={spec!r}: use csv:FILE, hdrplus:DIR or raw:DIR")


def load_rgb(path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable RGB image ({str(exc)[:120]})") from None


def aligned_pair(pair: Pair, cfa: str, raw_format: dumps.SensorFormat | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mosaic float32 [h, w] in the canonical phase, RGB uint8 [h, w, 3] cropped the same way)."""
    if pair.problem:
        raise UserError(pair.problem)
    if pair.sidecar:
        raw_format = dumps.SensorFormat.from_sidecar(pair.sidecar).merged(raw_format)
    img = rawio.read_raw(pair.raw, cfa, raw_format)
    rgb = render.libraw_srgb(pair.raw, raw_format) if pair.rgb == LIBRAW else load_rgb(pair.rgb)
    if rgb.shape[:2] != tuple(img.visible_shape):
        raise UserError(
            f"{pair.rgb}: RGB is {rgb.shape[1]}x{rgb.shape[0]} but the RAW {pair.raw} has a visible area "
            f"of {img.visible_shape[1]}x{img.visible_shape[0]}; they must match"
        )
    rows, cols = rawio.canonical_crop(*img.visible_shape, img.offset)
    return img.mosaic, rgb[rows, cols]


def cut_patches(mosaic: np.ndarray, rgb: np.ndarray, size: int):
    """Non-overlapping aligned patches on a grid from the top-left:
    ([n, s, s] float32, [n, s, s, 3] uint8, [(y, x), ...])."""
    h, w = mosaic.shape
    spots = [(y, x) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
    raw = (
        np.stack([mosaic[y : y + size, x : x + size] for y, x in spots])
        if spots
        else np.zeros((0, size, size), np.float32)
    )
    rgbs = (
        np.stack([rgb[y : y + size, x : x + size] for y, x in spots])
        if spots
        else np.zeros((0, size, size, 3), np.uint8)
    )
    return raw, rgbs, spots


def split_groups(groups, test_fraction: float, seed: int) -> set:
    """The test groups: a seeded `test_fraction` of the distinct groups (at least one, if there are two or more)."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_test = int(round(len(unique) * test_fraction))
    if len(unique) >= 2:
        n_test = min(max(n_test, 1), len(unique) - 1)
    return {unique[i] for i in order[:n_test]}
