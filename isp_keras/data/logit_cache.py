"""Teacher-logit caching: run the frozen teacher once over the training split and train from stored logits.

Valid only when the teacher's input is deterministic, i.e. training without random RGB augmentation
(`--noaugment`): the teacher then sees the same centre crop of example i in every epoch, so its logits are a
function of i. The student input keeps its per-epoch noise. The Distiller with `cached_logits=True` takes the
logits in place of the teacher input and skips the teacher forward pass.

Storage: `<cache_dir>/<key>.f32`, raw little-endian float32 rows (example i of the split in source order, one row
of `classes` logits each) plus `<key>.json`; read back as a streaming FixedLengthRecordDataset, so the cache never
has to fit in a graph constant. The key hashes everything the logits depend on (teacher weights file, data
source and split, image size, subset, RGB normalisation), so a changed teacher or data set never reuses stale logits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from isp_keras import fsutil
from isp_keras.data import normalisation, pipeline, records, sources
from isp_keras.errors import UserError


def compute(
    teacher,
    source: sources.Source,
    split: str,
    pcfg: pipeline.PipelineConfig,
    norm: normalisation.Normalisation,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """Logits [N, classes] (float32) of the teacher on the deterministic RGB input of each example, in order."""
    cfg = dataclasses.replace(pcfg, batch_size=batch_size, cache=False, augment=False)
    ds = pipeline.build(source, split, cfg, training=False, norm=norm, mode="rgb")
    forward = tf.function(lambda x: teacher(x, training=False), reduce_retracing=True)
    total = min(source.counts[split], pcfg.take) if pcfg.take else source.counts[split]
    parts = []
    with tqdm(total=total, desc="teacher logits", unit="img", disable=not progress) as bar:
        for x, _ in ds:
            parts.append(forward(x).numpy().astype(np.float32))
            bar.update(len(parts[-1]))
    return np.concatenate(parts) if parts else np.zeros((0, teacher.output_shape[-1]), np.float32)


def cache_key(
    teacher_source: str,
    source: sources.Source,
    split: str,
    pcfg: pipeline.PipelineConfig,
    norm: normalisation.Normalisation,
) -> str:
    path = Path(teacher_source)
    teacher_id = records.sha256_file(path) if path.is_file() else teacher_source
    parts = {
        "teacher": teacher_id,
        "data": source.name,
        "split": split,
        "count": source.counts[split],
        "image_size": pcfg.image_size,
        "take": pcfg.take,
        "rgb_mean": norm.rgb_mean,
        "rgb_std": norm.rgb_std,
        "channel_order": norm.channel_order,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def save(path_stem, logits: np.ndarray, meta: dict) -> None:
    logits = np.ascontiguousarray(logits, dtype="<f4")
    fsutil.write_bytes_atomic(Path(f"{path_stem}.f32"), logits.tobytes())
    fsutil.write_json_atomic(
        Path(f"{path_stem}.json"), {**meta, "rows": int(logits.shape[0]), "classes": int(logits.shape[1])}
    )


def load_meta(path_stem) -> dict | None:
    meta_path, data_path = Path(f"{path_stem}.json"), Path(f"{path_stem}.f32")
    if not meta_path.exists() or not data_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    if data_path.stat().st_size != 4 * meta.get("rows", -1) * meta.get("classes", -1):
        return None  # truncated or foreign file: recompute
    return meta


def dataset(path_stem, classes: int) -> tf.data.Dataset:
    """Rows of a stored cache as float32 [classes] tensors, streamed from disk."""
    ds = tf.data.FixedLengthRecordDataset(f"{path_stem}.f32", record_bytes=4 * classes)
    return ds.map(
        lambda row: tf.io.decode_raw(row, tf.float32, little_endian=True), num_parallel_calls=tf.data.AUTOTUNE
    )


def load_or_compute(
    teacher,
    teacher_source: str,
    source: sources.Source,
    split: str,
    pcfg: pipeline.PipelineConfig,
    norm: normalisation.Normalisation,
    cache_dir,
    progress: bool = True,
) -> tf.data.Dataset:
    """The cached logits of `split` as a dataset for `pipeline.build(teacher_logits=...)`, computing them once."""
    if pcfg.augment:
        raise UserError(
            "--cached_logits: the teacher input must be deterministic, but random RGB augmentation is on; "
            "pass --noaugment"
        )
    stem = Path(cache_dir) / cache_key(teacher_source, source, split, pcfg, norm)
    needed = min(source.counts[split], pcfg.take) if pcfg.take else source.counts[split]
    classes = int(teacher.output_shape[-1])
    meta = load_meta(stem)
    if meta is None or meta["rows"] < needed or meta["classes"] != classes:
        logits = compute(teacher, source, split, pcfg, norm, progress=progress)
        if logits.shape[0] < needed:
            raise UserError(f"{source.name}: the {split} split gave {logits.shape[0]} images, expected {needed}")
        try:
            save(
                stem,
                logits,
                {
                    "teacher": teacher_source,
                    "data": source.name,
                    "split": split,
                    "image_size": pcfg.image_size,
                    "take": pcfg.take,
                },
            )
        except OSError as exc:
            raise UserError(f"{stem}.f32: cannot write the teacher-logit cache ({exc.strerror or exc})") from None
    return dataset(stem, classes)
