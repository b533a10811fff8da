"""table2: flagfiles parse, bad options fail clearly, and the whole HDR+ path runs end to end on synthetic bursts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from absl import flags

from isp_keras.models import architectures
from isp_keras.models import teachers
from isp_keras.errors import UserError
from isp_keras.experiments import table2

ROOT = Path(__file__).resolve().parent.parent


def _parse(*args):
    fv = flags.FlagValues()
    table2.define_flags(fv)
    fv(["table2", *args])
    return fv


@pytest.mark.parametrize("name,patch", [("hdrplus_resnet18", 256), ("hdrplus_mobilenetv2", 224),
                                        ("hdrplus_embedded", 32)])
def test_flagfiles_parse(name, patch, monkeypatch):
    monkeypatch.chdir(ROOT)
    opts, cfg = table2.options_from_flags(_parse(f"--flagfile=flags/{name}.flags"))
    assert opts.patch_size == patch and opts.modes == ["merged", "short"] and opts.pairs.startswith("hdrplus:")
    assert opts.min_teacher_prob == 0.8 and cfg.alpha == 0.9 and cfg.temperature == 4.0
    assert opts.cache_dir == str(Path(cfg.model_dir) / "cache")


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="--pairs: required"):
        table2.options_from_flags(_parse())
    with pytest.raises(UserError, match="--modes=merged,long"):
        table2.options_from_flags(_parse("--pairs=hdrplus:x", "--modes=merged,long"))
    with pytest.raises(UserError, match="--patch_size=31"):
        table2.options_from_flags(_parse("--pairs=hdrplus:x", "--patch_size=31"))


@pytest.fixture()
def untrained_teacher(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    path = tmp_path / "teacher.keras"
    architectures.build("resnet_tiny", 10, 32).save(path)
    teachers.write_spec(path, teachers.TeacherSpec(32, 10, [0.5] * 3, [0.25] * 3, classes=[str(i) for i in range(10)]))
    return path


def test_patch_size_must_match_the_teacher(tmp_path, untrained_teacher):
    opts, cfg = table2.options_from_flags(_parse(f"--pairs=hdrplus:{tmp_path / 'b'}", "--patch_size=64",
                                                 f"--teacher={untrained_teacher}", f"--model_dir={tmp_path / 'run'}"))
    with pytest.raises(UserError, match="--patch_size=64: the teacher .*teacher.keras takes 32x32"):
        table2.run(opts, cfg)


@pytest.mark.slow
def test_end_to_end_on_synthetic_bursts(tmp_path, untrained_teacher):
    opts, cfg = table2.options_from_flags(_parse(
        f"--pairs=hdrplus:{tmp_path / 'bursts'}", "--synthesize_bursts=10", "--burst_frames=2", "--patch_size=32",
        "--min_teacher_prob=0.0", f"--teacher={untrained_teacher}", f"--model_dir={tmp_path / 'run'}", "--epochs=1",
        "--batch_size=8", "--lr=0.01"))
    results = table2.run(opts, cfg, "test")
    assert [(r["raw"], r["name"]) for r in results["rows"]] == [
        (m, n) for m in ("merged", "short") for n in ("teacher_raw", "teacher_labels", "distilled")]
    for row in results["rows"]:
        assert 0.0 <= row["top1"] <= row["top5"] <= 100.0 and row["top1"] == row["agreement"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["rows"] == results["rows"] and saved["experiment"] == "table2"
    assert saved["caches"]["merged"]["counts"]["train"] + saved["caches"]["merged"]["counts"]["test"] == 40
    assert (tmp_path / "run" / "results.md").read_text().count("| short |") == 3
    assert (tmp_path / "bursts" / "burst_00009" / "final.jpg").exists()
    # Rerunning refuses to overwrite a finished run.
    with pytest.raises(UserError, match="holds a finished run"):
        table2.run(opts, cfg, "test")
