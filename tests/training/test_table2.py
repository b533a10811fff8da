"""table2: flagfiles parse, bad options fail clearly, and the whole HDR+ path runs end to end on synthetic bursts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from isp_keras import config
from isp_keras.errors import UserError
from isp_keras.models import architectures, teachers
from isp_keras.training.config import Table2Config

ROOT = Path(__file__).resolve().parents[2]


def _parse(*args) -> Table2Config:
    """The table2 config from argv, with its own generated flags in a fresh FlagValues (validated)."""
    fv = flags.FlagValues()
    config.define_flags(Table2Config, fv)
    fv(["table2", *args])
    return config.from_flags(Table2Config, fv)


def _table2(cfg: Table2Config) -> dict:
    from isp_keras.training import experiments

    return experiments.table2(cfg, "test")


@pytest.mark.parametrize(
    "name,patch,teacher",
    [
        ("hdrplus_resnet18", 256, "data/teacher/resnet18_imagenet.keras"),
        ("hdrplus_mobilenetv2", 224, "MobileNetV2"),
        ("hdrplus_embedded", 32, "embedded"),
    ],
)
def test_flagfiles_parse(name, patch, teacher, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = _parse(f"--flagfile=flags/{name}.flags")
    assert cfg.patch_size == patch and cfg.modes == ["merged", "short"] and cfg.pairs.startswith("hdrplus:")
    assert cfg.min_teacher_prob == 0.8 and cfg.alpha == 0.9 and cfg.temperature == 4.0
    assert cfg.teacher == teacher and cfg.model_dir.startswith("runs/table2-hdrplus-")
    assert cfg.cache_dir == ""  # the default, <model_dir>/cache/<mode>, is set when the run starts


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="--pairs: required"):
        _parse()
    with pytest.raises(UserError, match="--modes=merged,long"):
        _parse("--pairs=hdrplus:x", "--modes=merged,long")
    with pytest.raises(UserError, match="--patch_size=31"):
        _parse("--pairs=hdrplus:x", "--patch_size=31")
    with pytest.raises(UserError, match="--short_exposure"):
        _parse("--pairs=hdrplus:x", "--short_exposure=0")


def test_cli_bad_option_is_one_line():
    bad = subprocess.run(
        [sys.executable, "-m", "isp_keras.experiments.table2", "--pairs=hdrplus:x", "--modes=merged,long"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --modes=merged,long")
    assert "Traceback" not in bad.stderr


@pytest.fixture()
def untrained_teacher(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    path = tmp_path / "teacher.keras"
    architectures.build("resnet_tiny", 10, 32).save(path)
    teachers.write_spec(path, teachers.TeacherSpec(32, 10, [0.5] * 3, [0.25] * 3, classes=[str(i) for i in range(10)]))
    return path


def test_patch_size_must_match_the_teacher(tmp_path, untrained_teacher):
    cfg = _parse(
        f"--pairs=hdrplus:{tmp_path / 'b'}",
        "--patch_size=64",
        f"--teacher={untrained_teacher}",
        f"--model_dir={tmp_path / 'run'}",
    )
    with pytest.raises(UserError, match="--patch_size=64: the teacher .*teacher.keras takes 32x32"):
        _table2(cfg)


@pytest.mark.slow
@pytest.mark.usefixtures("eager_functions")
def test_end_to_end_on_synthetic_bursts(tmp_path, untrained_teacher, monkeypatch):
    from isp_keras.training import experiment, experiments, rundir

    argv = (
        f"--pairs=hdrplus:{tmp_path / 'bursts'}",
        "--synthesize_bursts=10",
        "--burst_frames=2",
        "--patch_size=32",
        "--min_teacher_prob=0.0",
        f"--teacher={untrained_teacher}",
        f"--model_dir={tmp_path / 'run'}",
        "--epochs=1",
        "--batch_size=8",
        "--lr=0.01",
    )
    results = _table2(_parse(*argv))
    assert [(r["raw"], r["name"]) for r in results["rows"]] == [
        (m, n) for m in ("merged", "short") for n in ("teacher_raw", "teacher_labels", "distilled")
    ]
    for row in results["rows"]:
        assert set(row) == {"raw", "name", "top1", "top5", "agreement", "agreement_top5"}
        assert 0.0 <= row["top1"] <= row["top5"] <= 100.0 and row["top1"] == row["agreement"]
        assert row["top5"] == row["agreement_top5"]  # the labels are the teacher's top-1 on the RGB patch
    saved = json.loads((tmp_path / "run" / rundir.RESULTS).read_text())
    assert saved["rows"] == results["rows"] and saved["experiment"] == "table2" and saved["command"] == "test"
    assert saved["caches"]["merged"]["counts"]["train"] + saved["caches"]["merged"]["counts"]["test"] == 40
    for mode in ("merged", "short"):  # the default cache directory: <model_dir>/cache/<mode>
        assert Path(saved["caches"][mode]["dir"]) == tmp_path / "run" / "cache" / mode
        assert (tmp_path / "run" / mode / rundir.NORM_FILE).exists()
        for name in ("teacher_labels", "distilled"):
            assert (tmp_path / "run" / mode / name / rundir.STUDENT_WEIGHTS).exists()
    assert saved["config"]["cache_dir"] == str(tmp_path / "run" / "cache")
    assert set(saved["row_seconds"]) == {
        f"{m}/{n}" for m in ("merged", "short") for n in ("teacher_raw", "teacher_labels", "distilled")
    }
    assert (tmp_path / "run" / rundir.RESULTS_MD).read_text().count("| short |") == 3
    assert (tmp_path / "bursts" / "burst_00009" / "final.jpg").exists()
    assert json.loads((tmp_path / "run" / rundir.CONFIG_FILE).read_text())["command"] == "table2"

    # Rerunning skips the finished rows (nothing is trained or even set up again) and keeps the same results,
    # caches included; rerunning with a setting that changes numbers is refused, naming the flag.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(experiment, "train_student", no_training)
    monkeypatch.setattr(experiments, "pairs_setup", no_training)
    again = _table2(_parse(*argv))
    assert again["rows"] == results["rows"] and again["caches"] == json.loads(json.dumps(results["caches"]))
    with pytest.raises(UserError, match=r"its rows were made with --lr=0.01 \(now 0.02\)"):
        _table2(_parse(*argv, "--lr=0.02"))
