"""The committed tiny teacher and student (tests/fixtures/tiny) are what their rebuild script makes today."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.mark.slow
def test_tiny_fixtures_can_be_rebuilt(tiny_rebuild, tmp_path):
    import keras

    fixture = tiny_rebuild
    # Built in a fresh process with oneDNN's kernels off, as rebuild.py's docstring says: they are chosen per
    # processor, and on an AMD EPYC they flip 3 of the 128 near-chance teacher_raw predictions.
    build = (
        f"import json, sys; from pathlib import Path; sys.path.insert(0, {str(fixture.HERE)!r}); import rebuild; "
        f"print(json.dumps([str(p) for p in rebuild.build(Path({str(tmp_path / 'built')!r}))]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", build], env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    teacher_path, student_dir = (Path(p) for p in json.loads(done.stdout.strip().splitlines()[-1]))
    fixture.copy(teacher_path.parent, student_dir, tmp_path / "fresh", {})
    committed = fixture.HERE
    for folder, names in (("teacher", fixture.TEACHER_FILES), ("student", fixture.STUDENT_FILES)):
        assert sorted(p.name for p in (committed / folder).iterdir()) == sorted(names)
        assert sorted(p.name for p in (tmp_path / "fresh" / folder).iterdir()) == sorted(names)

    for name in ("teacher/teacher.keras", "student/student.keras"):
        old = keras.saving.load_model(committed / name, compile=False)
        new = keras.saving.load_model(tmp_path / "fresh" / name, compile=False)
        assert [(w.path, w.shape) for w in old.weights] == [(w.path, w.shape) for w in new.weights]

    def load(folder, name):
        return json.loads((folder / "student" / name).read_text())

    old_norm, new_norm = load(committed, "normalisation.json"), load(tmp_path / "fresh", "normalisation.json")
    assert old_norm.keys() == new_norm.keys()
    for key, value in old_norm.items():
        if isinstance(value, list):
            np.testing.assert_allclose(new_norm[key], value, rtol=1e-5, err_msg=key)
    old_meta, new_meta = load(committed, "student.json"), load(tmp_path / "fresh", "student.json")
    assert old_meta["teacher"] == fixture.TEACHER_PLACEHOLDER and new_meta["teacher"] == str(teacher_path)
    assert {k: v for k, v in old_meta.items() if k not in ("teacher", "normalisation")} == {
        k: v for k, v in new_meta.items() if k not in ("teacher", "normalisation")
    }
    # Same recipe, same numbers: within two of the 128 test images (TensorFlow's CPU kernels may round differently
    # on another processor).
    old_rows, new_rows = load(committed, "results.json")["rows"], load(tmp_path / "fresh", "results.json")["rows"]
    assert (
        [r["name"] for r in old_rows] == [r["name"] for r in new_rows] == ["teacher_clean", "teacher_raw", "distilled"]
    )
    for old, new in zip(old_rows, new_rows):
        for key in ("top1", "top5", "agreement"):
            assert abs(old[key] - new[key]) <= 1.6, (old, new)
