"""Write any source to sharded TFRecords (encoded RGB + label, GZIP, index.json) for fast, shardable reading.

Records sources are copied byte for byte (no re-encoding); others are decoded and re-encoded (JPEG or lossless
PNG), optionally shrunk so the shorter side is at most `max_size` (aspect kept). Splits are written as `train` and
`test`. Many shards let workers read disjoint files (`records.dataset(num_workers, worker_index)`).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import tensorflow as tf
from tqdm import tqdm

from isp_keras.data import records, sources
from isp_keras.errors import UserError


def _shrink(image, label, *, max_size: int):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    short = tf.minimum(h, w)
    scale = tf.minimum(1.0, max_size / tf.cast(short, tf.float32))
    size = tf.cast(tf.round(tf.cast(tf.stack([h, w]), tf.float32) * scale), tf.int32)
    resized = tf.image.resize(image, tf.maximum(size, 1), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), label


def _encode(image, label, *, fmt: str, quality: int):
    data = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=quality)
    return data, label


def encoded_examples(
    source: sources.Source,
    split: str,
    fmt: str = "jpeg",
    quality: int = 95,
    max_size: int | None = None,
    take: int | None = None,
) -> tf.data.Dataset:
    """(encoded bytes, label) of one split, in the source's order."""
    if _is_copy(source, max_size):
        ds = records.dataset(_records_dir(source), split)
        return ds.take(take) if take else ds
    ds = source.split(split)
    if take:
        ds = ds.take(take)
    if max_size:
        ds = ds.map(functools.partial(_shrink, max_size=max_size), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(functools.partial(_encode, fmt=fmt, quality=quality), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _is_records(source: sources.Source) -> bool:
    return source.name.startswith("records:") or source.name == "embedded"


def _is_copy(source: sources.Source, max_size) -> bool:
    return max_size is None and _is_records(source)


def _records_dir(source: sources.Source) -> str:
    return str(sources.EMBEDDED_DIR) if source.name == "embedded" else source.name.split(":", 1)[1]


def write(
    spec: str,
    out,
    examples_per_shard: int = 1024,
    fmt: str = "jpeg",
    quality: int = 95,
    max_size: int | None = None,
    take: int | None = None,
    progress: bool = True,
) -> dict:
    """Write train and test splits of `spec` to `out`; returns the index (see records.write_records)."""
    source = sources.get_source(spec)
    out = Path(out)
    if _is_records(source) and out.resolve() == Path(_records_dir(source)).resolve():
        raise UserError(f"--out={out}: is the source itself; choose another directory")
    splits, shards = {}, {}
    for name, split in (("train", source.train_split), ("test", source.test_split)):
        count = min(source.counts[split], take) if take else source.counts[split]
        shards[name] = max(1, math.ceil(count / examples_per_shard))
        ds = encoded_examples(source, split, fmt, quality, max_size, take)
        splits[name] = _as_numpy(ds, f"{name} ({count} images)", count, progress)
    extra = {"source": spec, "image_format": "as stored" if _is_copy(source, max_size) else fmt, "max_size": max_size}
    try:
        return records.write_records(out, source.classes, splits, shards, extra=extra)
    except OSError as exc:
        raise UserError(f"--out={out}: cannot write the records ({exc.strerror or exc})") from None
    except tf.errors.OpError as exc:
        raise UserError(f"--dataset={spec}: reading an image failed ({exc.message.splitlines()[0][:200]})") from None


def _as_numpy(ds, what: str, total: int, progress: bool):
    for data, label in tqdm(ds.as_numpy_iterator(), desc=what, total=total, disable=not progress, unit="img"):
        yield bytes(data), int(label)
