"""normalisation: the RAW input scale (per-site standardisation mapped into the teacher's input moments) against
NumPy, the choice between teacher, unit and auto, and the round trip through a file."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from isp_keras.data import normalisation
from isp_keras.errors import UserError

NORM = normalisation.Normalisation(
    raw_mean=[0.3, 0.4, 0.2], raw_std=[0.2, 0.25, 0.15], rgb_mean=[0.5] * 3, rgb_std=[0.5] * 3
)


def test_student_stats_standardise_then_map_into_the_input_moments():
    norm = dataclasses.replace(NORM, input_mean=[-0.1, 0.05, -0.2], input_std=[0.55, 0.6, 0.5])
    raw = np.random.default_rng(0).uniform(-0.1, 1.1, (1000, 3))
    mean, std = norm.student_stats()
    got = (raw - np.asarray(mean)) / np.asarray(std)
    expected = (raw - np.asarray(norm.raw_mean)) / np.asarray(norm.raw_std) * np.asarray(norm.input_std)
    np.testing.assert_allclose(got, expected + np.asarray(norm.input_mean), atol=1e-12)


def test_unit_input_moments_leave_the_per_site_statistics_as_they_are():
    assert NORM.student_stats() == (NORM.raw_mean, NORM.raw_std)


def test_student_stats_after_a_tone_curve_use_the_curve_statistics():
    norm = dataclasses.replace(NORM, curve=[0.0, 1.0], curve_mean=[0.5] * 3, curve_std=[0.3] * 3, input_std=[0.5] * 3)
    mean, std = norm.student_stats(curve=True)
    np.testing.assert_allclose(std, [0.6] * 3)
    np.testing.assert_allclose(mean, [0.5] * 3)


def test_teacher_input_moments_of_the_tflite_normalisation():
    mean, std = normalisation.teacher_input_moments([0.45, 0.45, 0.4], [0.28, 0.27, 0.29], [0.5] * 3, [0.5] * 3)
    np.testing.assert_allclose(mean, [-0.1, -0.1, -0.2])
    np.testing.assert_allclose(std, [0.56, 0.54, 0.58])


def test_auto_maps_a_tflite_teacher_and_leaves_a_standardised_one():
    data_mean, data_std = [0.45, 0.45, 0.4], [0.28, 0.27, 0.29]
    tflite = normalisation.with_input_scale(NORM, data_mean, data_std, "auto")
    np.testing.assert_allclose(tflite.input_std, [0.56, 0.54, 0.58])
    standardised = dataclasses.replace(NORM, rgb_mean=[0.44, 0.46, 0.41], rgb_std=[0.27, 0.28, 0.3])
    kept = normalisation.with_input_scale(standardised, data_mean, data_std, "auto")
    assert (kept.input_mean, kept.input_std) == ([0.0] * 3, [1.0] * 3)
    forced = normalisation.with_input_scale(standardised, data_mean, data_std, "teacher")
    assert forced.input_std != [1.0] * 3
    unit = normalisation.with_input_scale(NORM, data_mean, data_std, "unit")
    assert (unit.input_mean, unit.input_std) == ([0.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="unknown RAW input scale"):
        normalisation.with_input_scale(NORM, data_mean, data_std, "other")


def test_round_trip_and_files_written_without_input_moments(tmp_path):
    norm = dataclasses.replace(NORM, input_mean=[-0.1, 0.0, 0.1], input_std=[0.5, 0.6, 0.7])
    normalisation.save_normalisation(tmp_path / "n.json", norm)
    assert normalisation.load_normalisation(tmp_path / "n.json") == norm
    old = {k: v for k, v in norm.to_json().items() if not k.startswith("input_")}
    assert normalisation.Normalisation(**old).student_stats() == (norm.raw_mean, norm.raw_std)
    with pytest.raises(UserError, match="input_std=.*must be > 0"):
        normalisation.check_normalisation(dataclasses.replace(norm, input_std=[0.5, 0.0, 0.5]), "x")
