"""Sharded TFRecords of encoded RGB images + labels, with a small JSON index (the embedded default's format).

Layout of a records directory:
  index.json                      {"format": "isp_keras.records/1", "classes": [...], "splits": {split: {...}}}
  {split}-{i:05d}-of-{n:05d}.tfrecord
Each record is a tf.train.Example with `image` (encoded JPEG/PNG bytes) and `label` (int64).
A directory is written under a temporary name and renamed when complete, so a half-written cache is never trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import tensorflow as tf

from isp_keras import fsutil
from isp_keras.errors import UserError

FORMAT = "isp_keras.records/1"
# GZIP: JPEG payloads barely shrink, but their repeated headers do (CIFAR-10: 2.9x smaller).
COMPRESSION = "GZIP"
_FEATURES = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}


def _example(image_bytes: bytes, label: int) -> bytes:
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }
        )
    ).SerializeToString(deterministic=True)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_records(out_dir, classes, splits: dict, num_shards: dict | int = 1, extra: dict | None = None) -> dict:
    """Write {split: iterable of (encoded_bytes, label)} as sharded TFRecords; returns the index. With no
    `classes` the data is unlabelled and every label is -1.

    Examples are dealt round-robin to shards. The directory appears only when complete.
    """
    out_dir = Path(out_dir)
    index = {"format": FORMAT, "compression": COMPRESSION, "classes": list(classes), "splits": {}, **(extra or {})}
    with fsutil.atomic_dir(out_dir) as tmp:
        for split, examples in splits.items():
            n = num_shards if isinstance(num_shards, int) else num_shards.get(split, 1)
            names = [f"{split}-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
            options = tf.io.TFRecordOptions(compression_type=COMPRESSION)
            writers = [tf.io.TFRecordWriter(str(tmp / name), options) for name in names]
            count = 0
            per_class = [0] * len(classes)
            for image_bytes, label in examples:
                unlabelled = not classes and int(label) < 0  # no classes: unlabelled data, label -1
                if not unlabelled and not 0 <= int(label) < len(classes):
                    raise ValueError(f"label {label} out of range for {len(classes)} classes")
                writers[count % n].write(_example(image_bytes, label))
                if not unlabelled:
                    per_class[int(label)] += 1
                count += 1
            for w in writers:
                w.close()
            index["splits"][split] = {
                "count": count,
                "per_class": per_class,
                "files": {name: sha256_file(tmp / name) for name in names},
            }
        fsutil.write_json_atomic(tmp / "index.json", index)
    return index


def read_json_index(folder, fmt: str, what: str) -> dict:
    """The index.json of a folder this project wrote (records, pairs cache), checked for its format tag."""
    path = Path(folder) / "index.json"
    if not path.exists():
        raise UserError(f"{folder}: not a {what} (no index.json)")
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: corrupt index ({exc})") from None
    if index.get("format") != fmt:
        raise UserError(f"{path}: unknown {what} format {index.get('format')!r}")
    return index


def read_index(records_dir) -> dict:
    return read_json_index(records_dir, FORMAT, "records directory")


def split_files(records_dir, split: str) -> list[str]:
    index = read_index(records_dir)
    if split not in index["splits"]:
        raise UserError(f"{records_dir}: no split {split!r} (has {', '.join(index['splits'])})")
    root = Path(records_dir).resolve()
    files = []
    for name in index["splits"][split]["files"]:
        path = (root / name).resolve()
        if root not in path.parents:
            raise UserError(f"{records_dir}/index.json: file {name!r} escapes the records directory")
        if not path.exists():
            raise UserError(f"{path}: listed in index.json but missing")
        files.append(str(path))
    return files


def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    ex = tf.io.parse_single_example(serialized, _FEATURES)
    return ex["image"], tf.cast(ex["label"], tf.int32)


def dataset(records_dir, split: str, num_workers: int = 1, worker_index: int = 0) -> tf.data.Dataset:
    """(encoded_bytes, label) in a deterministic order; sharded by file (or by record with one file) per worker."""
    files = split_files(records_dir, split)
    compression = read_index(records_dir).get("compression", "")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if num_workers > 1 and len(files) >= num_workers:
        ds = ds.shard(num_workers, worker_index)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 4),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if num_workers > 1 and len(files) < num_workers:
        ds = ds.shard(num_workers, worker_index)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
