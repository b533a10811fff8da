"""`python -m isp_keras.train`: under mirrored, refusals (its end-to-end contract, with and without the
quantisation-aware row: test_readme.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from isp_keras import train
from isp_keras.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def run_train(args, cwd=ROOT):
    proc = subprocess.run(
        [sys.executable, "-m", "isp_keras.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return proc


def tiny_args(teacher, run_dir, *extra):
    return [
        f"--teacher={teacher}",
        f"--model_dir={run_dir}",
        "--noise_std=0.1",
        "--epochs=1",
        "--batch_size=64",
        "--train_take=512",
        "--test_take=256",
        "--stats_images=512",
        "--lr=0.05",
        "--log_steps=3",
        *extra,
    ]


def test_a_run_directory_of_another_command_is_refused(tiny_teacher, tmp_path, capsys, run_command):
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"command": "table", "config": {}}')
    assert run_command(TrainConfig, train.run, tiny_args(tiny_teacher, run_dir)) == 2
    err = capsys.readouterr().err
    assert "holds a table run, not a train run" in err and "Traceback" not in err


@pytest.mark.slow
def test_default_flags_run_under_mirrored(tiny_teacher, tmp_path):
    """--strategy=mirrored with the default --qat_epochs: trains on 2 replicas, the quantisation-aware row is skipped
    with a note (its activation ranges are per replica), and a rerun resumes nothing and prints the same table."""
    run_dir = tmp_path / "run"
    proc = run_train(tiny_args(tiny_teacher, run_dir, "--strategy=mirrored", "--train_take=256"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "distilled_qat skipped under --strategy=mirrored" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["teacher_clean", "teacher_raw", "distilled"]
    again = run_train(tiny_args(tiny_teacher, run_dir, "--strategy=mirrored", "--train_take=256"))
    assert again.returncode == 0 and "finished earlier" in again.stdout
    assert json.loads((run_dir / "results.json").read_text())["rows"] == results["rows"]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--alpha=1.5", "--alpha=1.5: must be in [0, 1]"),
        ("--temperature=0", "--temperature=0.0: must be > 0"),
        ("--dataset=nosuch", "unknown dataset 'nosuch'"),
        ("--qat_epochs=-1", "--qat_epochs=-1, --qat_lr=0.002: need qat_epochs >= 0"),
        ("--strategy=nosuch", "--strategy=nosuch: value should be one of"),
        ("--log_steps=0", "--log_steps=0: must be >= 1"),
    ],
)
def test_bad_flags_give_one_line(tiny_teacher, tmp_path, capsys, run_command, flag, message):
    """Parsed as the command parses them, in this process (the command line itself: test_cli_smoke)."""
    assert run_command(TrainConfig, train.run, tiny_args(tiny_teacher, tmp_path / "r", flag)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([x for x in err.splitlines() if x.startswith("error:")]) == 1
    assert not (tmp_path / "r").exists()


def test_cli_smoke(tmp_path):
    """The real command line: a bad flag is one line and exit 2, before TensorFlow does any work."""
    proc = run_train(["--alpha=1.5", f"--model_dir={tmp_path / 'r'}"])
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --alpha=1.5: must be in [0, 1]"
