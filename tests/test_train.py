"""`python -m isp_keras.train` end to end on a tiny real slice: outputs, table == results.json, reproducibility."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def parse_table(stdout):
    rows = {}
    for line in stdout.splitlines():
        m = re.match(r"\| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows[m.group(1)] = tuple(float(v) for v in m.groups()[1:])
    return rows


@pytest.mark.slow
def test_train_end_to_end_writes_the_contract(tiny_teacher, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(tiny_args(tiny_teacher, run_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= {"rows", "config", "wall_seconds"} and results["wall_seconds"] > 0
    assert [r["name"] for r in results["rows"]] == ["teacher_clean", "teacher_raw", "distilled", "distilled_qat"]
    assert results["config"]["qat_epochs"] == 1
    for row in results["rows"]:
        assert set(row) == {"name", "top1", "top5", "agreement", "agreement_top5"}
        assert all(0.0 <= row[k] <= 100.0 for k in ("top1", "top5", "agreement", "agreement_top5"))
        assert row["top1"] <= row["top5"] and row["agreement"] <= row["agreement_top5"]
    clean = results["rows"][0]
    assert clean["agreement"] == 100.0 and clean["top1"] > 14.0  # above chance (10%) by > 2 sigma at n=256
    assert results["config"]["noise_std"] == 0.1 and results["config"]["alpha"] == 0.9

    # The printed table says what results.json says.
    table = parse_table(proc.stdout)
    assert set(table) == {r["name"] for r in results["rows"]}
    for row in results["rows"]:
        assert table[row["name"]] == pytest.approx((row["top1"], row["top5"], row["agreement"]), abs=0.006)

    # The run directory: resolved config, the student alone, serving metadata, TensorBoard logs.
    config = json.loads((run_dir / "config.json").read_text())
    assert config["command"] == "train" and config["config"]["teacher"] == str(tiny_teacher)
    assert len(json.loads((run_dir / "normalisation.json").read_text())["raw_mean"]) == 3
    import keras

    student = keras.saving.load_model(run_dir / "student.keras", safe_mode=True)
    assert student.input_shape == (None, 32, 32, 3) and student.output_shape == (None, 10)
    # The saved student is the quantisation-aware one: every kernel sits on its per-output-channel int8 grid, and
    # its BN layers are trainable again (frozen only during the fine-tuning).
    kernels = [layer.kernel.numpy() for layer in student.layers if hasattr(layer, "kernel")]
    assert len(kernels) > 3
    for kernel in kernels:
        steps = kernel / (np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) / 127.0)
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert all(layer.trainable for layer in student.layers)
    meta = json.loads((run_dir / "student.json").read_text())
    assert meta["cfa"] == "RGGB" and meta["image_size"] == 32 and meta["sensor"] == "gaussian"
    tags = _tensorboard_tags(run_dir)
    assert {
        "train/loss",
        "train/ce",
        "train/kd",
        "train/top1",
        "train/agreement",
        "validation/top1",
        "validation/agreement",
        "test/top1",
    } <= tags["scalars"]
    assert any("rgb | mosaic | infill" in t for t in tags["images"])
    # Training scalars every --log_steps steps (8 steps per epoch here, logged every 3 and at the epoch end), and
    # one global step: the quantisation-aware row goes on where the distilled row ended.
    distilled = _scalar_steps(run_dir / "distilled" / "logs" / "train", "train/loss")
    qat = _scalar_steps(run_dir / "distilled_qat" / "logs" / "train", "train/loss")
    assert distilled == [3, 6, 8] and qat == [9, 12, 15, 16]
    assert _scalar_steps(run_dir / "distilled" / "logs" / "validation", "validation/top1") == [8]
    assert _scalar_steps(run_dir / "distilled_qat" / "logs" / "validation", "validation/agreement") == [16]

    # Golden: the same command with the same seed gives the same numbers (CPU, one process).
    again = run_train(tiny_args(tiny_teacher, run_dir, "--overwrite"))
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads((run_dir / "results.json").read_text())
    for a, b in zip(results["rows"], rerun["rows"]):
        for k in ("top1", "top5", "agreement"):
            assert abs(a[k] - b[k]) <= 0.5, (a, b)


def _scalar_steps(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in Path(log_dir).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        if tag in acc.Tags().get("tensors", []):
            steps += [event.step for event in acc.Tensors(tag)]
    return sorted(set(steps))


def _tensorboard_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = set(), set()
    for events in Path(run_dir).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("tensors", []):
            (images if tag.startswith("rgb") else scalars).add(tag)
    return {"scalars": scalars, "images": images}


@pytest.mark.slow
def test_without_qat_the_distilled_student_is_saved(tiny_teacher, tmp_path):
    """--qat_epochs=0: no fine-tuning row, and the saved student is the distilled one (kernels off the int8 grid)."""
    run_dir = tmp_path / "run"
    proc = run_train(tiny_args(tiny_teacher, run_dir, "--qat_epochs=0", "--train_take=256"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["teacher_clean", "teacher_raw", "distilled"]
    import keras

    student = keras.saving.load_model(run_dir / "student.keras", safe_mode=True)
    kernel = student.get_layer("stem_conv").kernel.numpy()
    steps = kernel / (np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) / 127.0)
    assert np.abs(steps - np.round(steps)).max() > 0.1


def test_a_run_directory_of_another_command_is_refused(tiny_teacher, tmp_path):
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"command": "table", "config": {}}')
    proc = run_train(tiny_args(tiny_teacher, run_dir))
    assert proc.returncode == 2
    assert "holds a table run, not a train run" in proc.stderr and "Traceback" not in proc.stderr


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
def test_bad_flags_give_one_line(tiny_teacher, tmp_path, flag, message):
    proc = run_train(tiny_args(tiny_teacher, tmp_path / "r", flag))
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len([x for x in proc.stderr.splitlines() if x.startswith("error:")]) == 1
