"""tf.data service: the command starts a dispatcher and two workers; a distributed epoch of the RAW pipeline sees
every example exactly once; bad addresses are one-line user errors."""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isp_keras.data import convert, normalisation, pipeline, sources
from isp_keras.data import service as data_service
from isp_keras.errors import UserError

REPO = Path(__file__).resolve().parents[2]
NORM = normalisation.Normalisation([0.4, 0.45, 0.4], [0.25, 0.25, 0.25], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service():
    """`python -m isp_keras.data_service --workers=2` in its own process, as a user would start it."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "isp_keras.data_service", f"--port={port}", "--workers=2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    line = proc.stdout.readline()
    assert "2 local worker(s)" in line, proc.stderr.read()[-2000:] if proc.poll() is not None else line
    yield f"grpc://localhost:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def small_records(tmp_path_factory):
    """96 + 96 real CIFAR-10 images in 4 shards per split (file splits are what the dispatcher hands out)."""
    out = tmp_path_factory.mktemp("records") / "cifar96"
    convert.write("embedded", out, examples_per_shard=24, take=96, progress=False)
    return sources.get_source(f"records:{out}")


def _examples(ds):
    """Multiset of (label, checksum of the teacher input, checksum of the student input) per example."""
    out = collections.Counter()
    for (student_x, teacher_x), labels in ds:
        for s, t, y in zip(student_x.numpy(), teacher_x.numpy(), labels.numpy()):
            out[(int(y), round(float(t.sum()), 2), round(float(s.sum()), 2))] += 1
    return out


def test_distributed_epoch_sees_every_example_exactly_once(service, small_records):
    cfg = pipeline.PipelineConfig(image_size=32, batch_size=16, noise_std=0.0)
    local = _examples(pipeline.build(small_records, "test", cfg, training=False, norm=NORM))
    remote = _examples(
        data_service.distribute(pipeline.build(small_records, "test", cfg, training=False, norm=NORM), service)
    )
    assert sum(local.values()) == 96 and len(local) == 96  # distinct examples, so the check is meaningful
    assert remote == local


def test_training_stream_each_epoch_exactly_once(service, small_records):
    """The whole training stream (2 epochs, RAW simulation on the workers): every example exactly once per epoch.
    Without RGB augmentation and noise, examples are recognisable by their pixels."""
    cfg = pipeline.PipelineConfig(image_size=32, batch_size=8, noise_std=0.0, augment=False)
    ds = pipeline.build(small_records, "train", cfg, training=True, norm=NORM, steps_per_epoch=12, epochs=2)
    local = _examples(ds)
    assert sum(local.values()) == 192 and set(local.values()) == {2} and len(local) == 96
    assert _examples(data_service.distribute(ds, service)) == local


def test_noisy_training_batches_from_the_service(service, small_records):
    cfg = pipeline.PipelineConfig(image_size=32, batch_size=8, noise_std=0.1)
    ds = pipeline.build(small_records, "train", cfg, training=True, norm=NORM, steps_per_epoch=12, epochs=1)
    batches = list(data_service.distribute(ds, service))
    assert len(batches) == 12
    for (student_x, teacher_x), labels in batches:
        assert student_x.shape == (8, 32, 32, 3) and teacher_x.shape == (8, 32, 32, 3) and labels.shape == (8,)
        assert np.all(np.isfinite(student_x.numpy()))


@pytest.mark.parametrize("address", ["localhost:5050", "http://localhost:5050", "grpc://localhost"])
def test_bad_address_is_a_user_error(address):
    with pytest.raises(UserError, match="--data_service=.*grpc://HOST:PORT"):
        data_service.parse_address(address)


def test_unreachable_dispatcher_is_a_user_error():
    with pytest.raises(UserError, match="no dispatcher reachable"):
        data_service.check_reachable(f"grpc://127.0.0.1:{_free_port()}", timeout=1.0)
