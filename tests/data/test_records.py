"""Sharded TFRecords: make_records round trip (folder -> records, lossless PNG), byte-exact copy of records,
shard-by-worker reading, shrinking, and one-line errors."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from isp_keras.data import convert, normalisation, pipeline, records, sources
from isp_keras.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def image_folder(tmp_path):
    """PATH/{train,test}/<class>/*.png with random pixels (distinct images, some non-square)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog", "eel"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                shape = (12, 16, 3) if i % 2 else (14, 14, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _decoded(ds):
    """Multiset of (label, sha1 of the decoded pixels) of a (image, label) dataset."""
    return collections.Counter(
        (int(y), hashlib.sha1(np.ascontiguousarray(x)).hexdigest()) for x, y in ds.as_numpy_iterator()
    )


def test_folder_round_trip_is_lossless_and_sharded(image_folder, tmp_path):
    out = tmp_path / "records"
    index = convert.write(f"folder:{image_folder}", out, examples_per_shard=4, fmt="png", progress=False)
    assert index["classes"] == ["cat", "dog", "eel"]
    assert index["splits"]["train"]["count"] == 18 and len(index["splits"]["train"]["files"]) == 5
    assert index["splits"]["test"]["count"] == 9 and len(index["splits"]["test"]["files"]) == 3
    assert index["splits"]["train"]["per_class"] == [6, 6, 6]
    folder = sources.get_source(f"folder:{image_folder}")
    recs = sources.get_source(f"records:{out}")
    for split in ("train", "test"):
        expected = _decoded(folder.split(split))
        assert len(expected) == folder.counts[split]  # all images distinct: the comparison is meaningful
        assert _decoded(recs.split(split)) == expected


def test_records_copy_is_byte_exact(tmp_path):
    out = tmp_path / "copy"
    convert.write("embedded", out, examples_per_shard=16, take=40, progress=False)
    original = list(records.dataset(sources.EMBEDDED_DIR, "train").take(40).as_numpy_iterator())
    copied = list(records.dataset(out, "train").as_numpy_iterator())
    assert sorted(original) == sorted(copied)
    assert len(records.split_files(out, "train")) == 3


def test_shard_by_worker_is_a_partition(tmp_path, image_folder):
    out = tmp_path / "records"
    convert.write(f"folder:{image_folder}", out, examples_per_shard=4, fmt="png", progress=False)
    everything = collections.Counter(list(records.dataset(out, "train").as_numpy_iterator()))
    for workers in (2, 3, 7):  # fewer and more workers than the 5 files
        parts = [
            collections.Counter(list(records.dataset(out, "train", workers, i).as_numpy_iterator()))
            for i in range(workers)
        ]
        assert sum(parts, collections.Counter()) == everything
        assert all(parts), "every worker gets data"


def test_max_size_shrinks_the_shorter_side(image_folder, tmp_path):
    out = tmp_path / "small"
    convert.write(f"folder:{image_folder}", out, fmt="png", max_size=8, progress=False)
    shapes = {tuple(x.shape) for x, _ in sources.get_source(f"records:{out}").split("train").as_numpy_iterator()}
    assert shapes == {(8, 8, 3), (8, 11, 3)}  # 14x14 -> 8x8, 12x16 -> 8x10.67 rounded


def test_records_feed_the_builder(image_folder, tmp_path):
    out = tmp_path / "records"
    convert.write(f"folder:{image_folder}", out, fmt="jpeg", progress=False)
    source = sources.get_source(f"records:{out}")
    norm = normalisation.Normalisation([0.5] * 3, [0.25] * 3, [0.5] * 3, [0.25] * 3)
    cfg = pipeline.PipelineConfig(image_size=8, batch_size=4)
    (student_x, teacher_x), labels = next(iter(pipeline.build(source, "train", cfg, training=True, norm=norm)))
    assert student_x.shape == (4, 8, 8, 3) and teacher_x.shape == (4, 8, 8, 3) and labels.dtype == tf.int32


def test_out_equal_to_source_is_refused(tmp_path):
    with pytest.raises(UserError, match="is the source itself"):
        convert.write("embedded", sources.EMBEDDED_DIR, progress=False)


def test_command_missing_out_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "isp_keras.make_records", "--dataset=embedded"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: --out: required (see --helpfull)"
    assert "Traceback" not in proc.stderr
