"""student_file: the student.json schema, written and read back; older files read with defaults; refusals."""

from __future__ import annotations

import json

import pytest

from isp_keras.data import normalisation
from isp_keras.errors import UserError
from isp_keras.training import student_file

NORM = normalisation.Normalisation([0.3, 0.4, 0.2], [0.2, 0.25, 0.15], [0.5] * 3, [0.5] * 3, input_std=[0.6] * 3)


def description(**changes):
    base = dict(cfa="GRBG", image_size=32, classes=["a", "b"], normalisation=NORM, student_input="packed")
    return student_file.StudentFile(**{**base, **changes})


def test_round_trip(tmp_path):
    written = description(sensor="realistic", wnids=["n1", "n2"], teacher="t.tflite", dataset="folder:x")
    student_file.write(tmp_path / "student.json", written)
    assert json.loads((tmp_path / "student.json").read_text())["version"] == student_file.VERSION
    assert student_file.read(tmp_path / "student.json") == written


def test_a_file_from_before_the_newer_fields_reads_with_their_defaults(tmp_path):
    old = {"cfa": "RGGB", "image_size": 32, "classes": ["a", "b"], "normalisation": NORM.to_json()}
    del old["normalisation"]["input_std"]
    (tmp_path / "student.json").write_text(json.dumps(old))
    (tmp_path / "config.json").write_text(json.dumps({"command": "train", "config": {"dataset": "records:r"}}))
    got = student_file.read(tmp_path / "student.json")
    assert (got.student_input, got.sensor, got.dataset, got.version) == ("infill", "gaussian", "records:r", 1)
    assert got.normalisation.input_std == [1.0] * 3


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"sensor": "film"}, "sensor 'film' is neither gaussian nor realistic"),
        ({"student_input": "tiles"}, "student_input 'tiles' is neither infill nor packed"),
        ({"cfa": "RGBG"}, "RGBG"),
        ({"version": 2}, "version 2 is newer than this isp_keras reads (1)"),
        ({"colour": "red"}, "unknown field(s) colour"),
    ],
)
def test_bad_descriptions_are_one_line_naming_the_file(tmp_path, changes, words):
    (tmp_path / "s.json").write_text(json.dumps({**description().to_json(), **changes}))
    with pytest.raises(UserError) as info:
        student_file.read(tmp_path / "s.json")
    assert str(info.value).startswith(f"{tmp_path / 's.json'}: not a student description") and words in str(info.value)
    (tmp_path / "s.json").write_text(json.dumps({**description().to_json(), "image_size": 33}))
    with pytest.raises(UserError, match="image_size 33 is odd"):
        student_file.read(tmp_path / "s.json")
