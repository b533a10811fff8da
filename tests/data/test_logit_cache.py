"""Teacher-logit caching: cached logits equal the teacher's on the uncached batches, training from them gives the
same losses and weights as running the teacher, the teacher is skipped, and RGB augmentation is refused."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from isp_keras.data import logit_cache, normalisation, pipeline, sources
from isp_keras.errors import UserError
from isp_keras.models import architectures, students, teachers
from isp_keras.training import distiller, schedule

STEPS, EPOCHS = 4, 2


@pytest.fixture(scope="module")
def parts(tiny_teacher):
    teacher, spec = teachers.load_teacher(str(tiny_teacher))
    teachers.freeze(teacher)
    source = sources.get_source("embedded")
    pcfg = pipeline.PipelineConfig(image_size=32, batch_size=16, noise_std=0.1, seed=3, take=64, augment=False)
    norm = normalisation.Normalisation([0.45, 0.43, 0.40], [0.27, 0.26, 0.28], spec.rgb_mean, spec.rgb_std)
    return teacher, str(tiny_teacher), source, pcfg, norm


def _train_ds(parts, logits):
    _, _, source, pcfg, norm = parts
    return pipeline.build(
        source, "train", pcfg, training=True, norm=norm, steps_per_epoch=STEPS, epochs=EPOCHS, teacher_logits=logits
    )


def _logits(parts, cache_dir):
    teacher, teacher_path, source, pcfg, norm = parts
    return logit_cache.load_or_compute(teacher, teacher_path, source, "train", pcfg, norm, cache_dir, progress=False)


def test_cached_batches_hold_the_teachers_logits(parts, tmp_path):
    teacher = parts[0]
    plain = list(_train_ds(parts, None))
    cached = list(_train_ds(parts, _logits(parts, tmp_path)))
    assert len(plain) == len(cached) == STEPS * EPOCHS
    for ((s1, t1), y1), ((s2, logits), y2) in zip(plain, cached):
        np.testing.assert_array_equal(s1.numpy(), s2.numpy())  # same order, same noise
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
        np.testing.assert_allclose(logits.numpy(), teacher(t1, training=False).numpy(), rtol=1e-5, atol=1e-5)


def _fit(parts, teacher, logits):
    keras.utils.set_random_seed(0)
    student = students.student_from_teacher(parts[0])
    model = distiller.Distiller(student, teacher, alpha=0.9, temperature=4.0, cached_logits=logits is not None)
    model.compile(optimizer=schedule.sgd(STEPS, 0.05, 5e-4))
    history = model.fit(_train_ds(parts, logits), epochs=1, steps_per_epoch=STEPS, verbose=0)
    return history.history, student.get_weights()


def test_training_from_cached_logits_equals_running_the_teacher(parts, tmp_path):
    plain_hist, plain_w = _fit(parts, parts[0], None)
    # A teacher with the wrong number of classes: any forward pass through it would break the KD loss.
    wrong_teacher = architectures.build("resnet_tiny", 3, 32)
    cached_hist, cached_w = _fit(parts, wrong_teacher, _logits(parts, tmp_path))
    for key in ("loss", "ce", "kd", "agreement"):
        np.testing.assert_allclose(cached_hist[key], plain_hist[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(plain_w, cached_w)) < 1e-4
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(plain_w, parts[0].get_weights())) > 1e-3


def test_cache_is_computed_once_and_keyed(parts, tmp_path, monkeypatch):
    _logits(parts, tmp_path)
    assert len(list(tmp_path.glob("*.f32"))) == 1
    monkeypatch.setattr(logit_cache, "compute", lambda *a, **k: pytest.fail("recomputed a valid cache"))
    _logits(parts, tmp_path)
    teacher, path, source, pcfg, norm = parts
    other = dataclasses.replace(pcfg, take=32)
    assert logit_cache.cache_key(path, source, "train", other, norm) != logit_cache.cache_key(
        path, source, "train", pcfg, norm
    )


def test_truncated_cache_is_recomputed(parts, tmp_path):
    _logits(parts, tmp_path)
    data = next(tmp_path.glob("*.f32"))
    data.write_bytes(data.read_bytes()[:100])
    rows = list(_logits(parts, tmp_path).as_numpy_iterator())
    assert len(rows) == 64 and rows[0].shape == (10,)


def test_random_rgb_augmentation_is_refused(parts, tmp_path):
    teacher, path, source, pcfg, norm = parts
    augmented = dataclasses.replace(pcfg, augment=True)
    with pytest.raises(UserError, match="--noaugment"):
        logit_cache.load_or_compute(teacher, path, source, "train", augmented, norm, tmp_path, progress=False)
    with pytest.raises(UserError, match="--noaugment"):
        pipeline.build(source, "train", augmented, training=True, norm=norm, teacher_logits=np.zeros((64, 10)))
