"""The patch cache of RAW/RGB pairs: aligned patches cut from each pair, labelled by the teacher on the RGB patch,
split by group, written once as sharded TFRecords with an index (rebuilt only when its inputs or settings change),
and read back as tf.data batches for Table 2."""

from __future__ import annotations

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
from isp_keras.data.pairs import AUTOTUNE, MODES, Pair, aligned_pair, cut_patches, list_pairs, split_groups
from isp_keras.errors import UserError
from isp_keras.raw import bayer, dumps

FORMAT = "isp_keras.pairs/1"
COMPRESSION = "GZIP"
# Training keeps decoded patches in memory (cache + shuffle buffer) only up to this many bytes.
MEMORY_BUDGET = 1 << 30


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
