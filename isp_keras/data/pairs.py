"""RAW/RGB pairs -> aligned patches with teacher labels, cached as sharded TFRecords (the HDR+ protocol).

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
import functools
import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import logging

from isp_keras import console, fsutil
from isp_keras.data import records
from isp_keras.errors import UserError
from isp_keras.raw import bayer, dumps, rawio, render

FORMAT = "isp_keras.pairs/1"
COMPRESSION = "GZIP"
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
# Training keeps decoded patches in memory (cache + shuffle buffer) only up to this many bytes.
MEMORY_BUDGET = 1 << 30


@dataclasses.dataclass
class Pair:
    raw: str
    rgb: str
    group: str
    problem: str | None = None  # found while listing (e.g. a burst without its reference frame)
    sidecar: str | None = None  # a dump's format JSON kept elsewhere (the manifest's `format` column)


# ---------------------------------------------------------------- listing pairs


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


# ---------------------------------------------------------------- one pair -> aligned patches


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


# ---------------------------------------------------------------- the cache


@dataclasses.dataclass
class BuildConfig:
    pairs: str  # csv:FILE | hdrplus:DIR
    out: str
    mode: str = "merged"
    cfa: str = "RGGB"
    patch_size: int = 256
    test_fraction: float = 0.2
    seed: int = 0
    min_teacher_prob: float = 0.8
    strict: bool = False
    shards: int = 4
    batch_size: int = 64
    max_patches_per_pair: int = 0  # 0: all; else a seeded sample per pair (a 12 MP HDR+ frame has ~180 of 256 px)
    raw_format: dumps.SensorFormat | None = None  # of headerless dumps / mosaic images, over their sidecars

    # What a command's config (the pairs command, Table 2) passes on as it is.
    SHARED = (
        "pairs",
        "cfa",
        "patch_size",
        "test_fraction",
        "seed",
        "min_teacher_prob",
        "strict",
        "max_patches_per_pair",
    )

    @classmethod
    def of(cls, cfg, out: str, mode: str) -> BuildConfig:
        """The cache settings of a command config holding the SHARED fields (and the `--raw_*` flags if it has
        them: raw.config.RawFormatOptions)."""
        raw_format = cfg.sensor_format() if hasattr(cfg, "sensor_format") else None
        return cls(out=out, mode=mode, raw_format=raw_format, **{name: getattr(cfg, name) for name in cls.SHARED})

    def validate(self) -> BuildConfig:
        if self.mode not in MODES:
            raise UserError(f"--mode={self.mode}: must be one of {', '.join(MODES)}")
        if self.max_patches_per_pair < 0:
            raise UserError(f"--max_patches_per_pair={self.max_patches_per_pair}: must be >= 0")
        if self.patch_size < 2 or self.patch_size % 2:
            raise UserError(f"--patch_size={self.patch_size}: must be even (the Bayer pattern tiles 2x2)")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"--test_fraction={self.test_fraction}: must be in (0, 1)")
        if not 0.0 <= self.min_teacher_prob < 1.0:
            raise UserError(f"--min_teacher_prob={self.min_teacher_prob}: must be in [0, 1)")
        self.cfa = bayer.check_cfa(self.cfa)
        return self


def _file_id(path) -> list:
    try:
        st = os.stat(path)
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def cache_key(cfg: BuildConfig, pairs: list[Pair], teacher_path: str) -> str:
    """What the cache depends on: the input files (name, size, mtime; a RAW's sidecar JSON too), the teacher file and
    the settings. Without a RAW format or sidecars the key is what it was before they existed, so old caches stay
    valid."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "strict", "shards", "batch_size")}
    if settings["raw_format"] is None:
        del settings["raw_format"]
    items = []
    for p in pairs:
        sidecar = p.sidecar or dumps.sidecar_path(p.raw)
        items.append([_file_id(p.raw), _file_id(p.rgb), p.group, p.problem] + ([_file_id(sidecar)] if sidecar else []))
    blob = json.dumps({"settings": settings, "pairs": items, "teacher": _file_id(teacher_path)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_index(cache_dir) -> dict:
    return records.read_json_index(cache_dir, FORMAT, "pairs cache")


def _example(raw: np.ndarray, rgb: np.ndarray, label: int, prob: float, group: str) -> bytes:
    feature = {
        "raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw.astype("<f4").tobytes()])),
        "rgb": tf.train.Feature(bytes_list=tf.train.BytesList(value=[rgb.astype(np.uint8).tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "prob": tf.train.Feature(float_list=tf.train.FloatList(value=[float(prob)])),
        "group": tf.train.Feature(bytes_list=tf.train.BytesList(value=[group.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


class _SplitWriter:
    """Round-robin shards of one split, plus counts and the per-site moments of its mosaics."""

    def __init__(self, folder: Path, split: str, shards: int, cfa: str, num_classes: int):
        self.names = [f"{split}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
        options = tf.io.TFRecordOptions(compression_type=COMPRESSION)
        self.writers = [tf.io.TFRecordWriter(str(folder / n), options) for n in self.names]
        self.folder, self.cfa = folder, cfa
        self.count, self.per_class = 0, [0] * num_classes
        self.moments = np.zeros((3, 3))
        self.rgb_sum, self.rgb_sq = np.zeros(3), np.zeros(3)

    def write(self, raw, rgb, label, prob, group):
        self.writers[self.count % len(self.writers)].write(_example(raw, rgb, label, prob, group))
        self.count += 1
        self.per_class[int(label)] += 1

    def add_stats(self, raws: np.ndarray, rgbs: np.ndarray):
        self.moments += bayer.site_moments(tf.constant(raws[..., None]), self.cfa).numpy()
        x = rgbs.reshape(-1, 3).astype(np.float64) / 255.0
        self.rgb_sum += x.sum(0)
        self.rgb_sq += (x * x).sum(0)

    def close(self) -> dict:
        for w in self.writers:
            w.close()
        return {
            "count": self.count,
            "per_class": self.per_class,
            "files": {n: records.sha256_file(self.folder / n) for n in self.names},
        }


def check_patch_size(teacher, patch_size: int, source: str) -> None:
    """The teacher (and so the student, its clone) must take whole patches: a RAW patch cannot be resized."""
    shape = teacher.input_shape[0] if isinstance(teacher.input_shape, list) else teacher.input_shape
    h, w = tuple(shape[1:3])
    if (h is not None and h != patch_size) or (w is not None and w != patch_size):
        raise UserError(
            f"--patch_size={patch_size}: the teacher {source} takes {h}x{w} images and the student (its "
            f"clone) sees whole RAW patches, which cannot be resized; use --patch_size={h}"
        )


def _teacher_probs(teacher, rgbs: np.ndarray, rgb_mean, rgb_std, channel_order: str, batch_size: int) -> np.ndarray:
    probs = []
    for start in range(0, len(rgbs), batch_size):
        x = tf.constant(rgbs[start : start + batch_size], tf.float32) / 255.0
        x = bayer.normalize(x, rgb_mean, rgb_std)
        if channel_order == "BGR":
            x = x[..., ::-1]
        probs.append(tf.nn.softmax(teacher(x, training=False), axis=-1).numpy())
    return np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)


def build_cache(
    cfg: BuildConfig, teacher, spec, teacher_path: str, pairs: list[Pair] | None = None, progress: bool = True
) -> dict:
    """Build (or reuse) the patch cache of `cfg.pairs`; returns its index. See the module docstring."""
    from tqdm import tqdm

    cfg.validate()
    check_patch_size(teacher, cfg.patch_size, teacher_path)
    pairs = list_pairs(cfg.pairs, cfg.mode) if pairs is None else pairs
    if not pairs:
        raise UserError(f"{cfg.pairs}: no RAW/RGB pairs")
    out = Path(cfg.out)
    key = cache_key(cfg, pairs, teacher_path)
    if (out / "index.json").exists():
        try:
            index = read_index(out)
        except UserError as exc:
            logging.warning("%s; rebuilding the cache", exc)
            index = None
        if index is not None and index.get("key") == key:
            console.progress("%s: reusing the cached patches (same inputs and settings)", out)
            return index
    num_classes = int(spec.num_classes)
    test_groups = split_groups([p.group for p in pairs], cfg.test_fraction, cfg.seed)
    with fsutil.atomic_dir(out) as tmp:
        writers = {s: _SplitWriter(tmp, s, cfg.shards, cfg.cfa, num_classes) for s in ("train", "test")}
        skipped, dropped, read = [], 0, 0
        for pair in tqdm(pairs, desc=f"patches {cfg.mode}", unit="pair", disable=not progress):
            try:
                mosaic, rgb = aligned_pair(pair, cfg.cfa, cfg.raw_format)
            except UserError as exc:
                if cfg.strict:
                    raise UserError(f"{exc} (--strict: stopping; no cache written)") from None
                logging.warning("skipping pair %s: %s", pair.group, exc)
                skipped.append({"raw": pair.raw, "rgb": pair.rgb, "group": pair.group, "error": str(exc)})
                continue
            read += 1
            raws, rgbs, _ = cut_patches(mosaic, rgb, cfg.patch_size)
            if 0 < cfg.max_patches_per_pair < len(raws):
                pick = np.sort(
                    np.random.default_rng([cfg.seed, zlib.crc32(pair.group.encode())]).choice(
                        len(raws), cfg.max_patches_per_pair, replace=False
                    )
                )
                raws, rgbs = raws[pick], rgbs[pick]
            if not len(raws):
                logging.warning(
                    "pair %s: %dx%d is smaller than one %d px patch",
                    pair.group,
                    mosaic.shape[1],
                    mosaic.shape[0],
                    cfg.patch_size,
                )
                continue
            probs = _teacher_probs(teacher, rgbs, spec.rgb_mean, spec.rgb_std, spec.channel_order, cfg.batch_size)
            split = "test" if pair.group in test_groups else "train"
            keep = np.ones(len(raws), bool) if split == "train" else probs.max(-1) > cfg.min_teacher_prob
            dropped += int((~keep).sum())
            for i in np.flatnonzero(keep):
                writers[split].write(raws[i], rgbs[i], int(probs[i].argmax()), float(probs[i].max()), pair.group)
            if split == "train":
                writers["train"].add_stats(raws, rgbs)
        train = writers["train"]
        splits = {s: w.close() for s, w in writers.items()}
        if read == 0:
            raise UserError(
                f"{cfg.pairs}: none of the {len(pairs)} pairs could be read (first error: "
                f"{skipped[0]['error'] if skipped else 'none'})"
            )
        for split, info in splits.items():
            if info["count"] == 0:
                raise UserError(
                    f"{cfg.pairs}: the {split} split has no patches (pairs read: {read}; test patches "
                    f"dropped below teacher probability {cfg.min_teacher_prob}: {dropped})"
                )
        raw_mean, raw_std = bayer.moments_to_stats(train.moments)
        n_rgb = train.moments[0].sum() or 1.0
        rgb_mean = train.rgb_sum / n_rgb
        rgb_std = np.sqrt(np.maximum(train.rgb_sq / n_rgb - rgb_mean**2, 1e-12))
        index = {
            "format": FORMAT,
            "compression": COMPRESSION,
            "key": key,
            "config": dataclasses.asdict(cfg),
            "teacher": teacher_path,
            "classes": list(spec.classes or range(num_classes)),
            "patch_size": cfg.patch_size,
            "cfa": cfg.cfa,
            "mode": cfg.mode,
            "pairs": len(pairs),
            "pairs_read": read,
            "test_groups": sorted(test_groups),
            "test_dropped_low_prob": dropped,
            "skipped": {"count": len(skipped), "files": skipped},
            "raw_stats": {"mean": [float(v) for v in raw_mean], "std": [float(v) for v in raw_std]},
            "rgb_stats": {"mean": rgb_mean.tolist(), "std": rgb_std.tolist()},
            "splits": splits,
        }
        fsutil.write_json_atomic(tmp / "index.json", index)
    console.progress(
        "%s: %d train / %d test patches from %d pairs (%d skipped, %d low-confidence test patches dropped)",
        out,
        splits["train"]["count"],
        splits["test"]["count"],
        read,
        len(skipped),
        dropped,
    )
    return index


def _parse(serialized, *, size: int):
    ex = tf.io.parse_single_example(
        serialized,
        {
            "raw": tf.io.FixedLenFeature([], tf.string),
            "rgb": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    raw = tf.reshape(tf.io.decode_raw(ex["raw"], tf.float32, little_endian=True), [size, size, 1])
    rgb = tf.reshape(tf.io.decode_raw(ex["rgb"], tf.uint8), [size, size, 3])
    return raw, tf.image.convert_image_dtype(rgb, tf.float32), tf.cast(ex["label"], tf.int32)


def dataset(cache_dir, split: str) -> tf.data.Dataset:
    """(mosaic float32 [s, s, 1], RGB float32 [s, s, 3] in [0, 1], teacher label int32) in a deterministic order."""
    index = read_index(cache_dir)
    if split not in index["splits"]:
        raise UserError(f"{cache_dir}: no split {split!r}")
    root = Path(cache_dir)
    files = []
    for name in index["splits"][split]["files"]:
        if not (root / name).exists():
            raise UserError(f"{root / name}: listed in index.json but missing")
        files.append(str(root / name))
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=COMPRESSION),
        cycle_length=min(len(files), 4),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.map(functools.partial(_parse, size=index["patch_size"]), num_parallel_calls=AUTOTUNE)


def batches(
    cache_dir, split: str, *, batch_size: int, cfa: str, norm, training: bool, seed: int = 0, start_step: int = 0
) -> tf.data.Dataset:
    """Model batches ((student_input, teacher_input), teacher label). Training: an endless seeded reshuffled
    stream of whole batches, starting at global step `start_step` (for resumption)."""
    from isp_keras.data import pipeline

    ds = dataset(cache_dir, split)
    if training:
        index = read_index(cache_dir)
        count = index["splits"][split]["count"]
        per_patch = index["patch_size"] ** 2 * (4 + 3)
        if count * per_patch <= MEMORY_BUDGET:
            ds = ds.cache()
        buffer = max(1, min(count, MEMORY_BUDGET // per_patch))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and start_step:
        ds = ds.skip(start_step)
    ds = ds.map(
        functools.partial(pipeline.to_model_inputs, cfa=cfa, norm=norm, mode="distill"),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(AUTOTUNE)


# ---------------------------------------------------------------- synthetic HDR+-like bursts


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
