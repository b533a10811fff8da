"""The README's walkthrough runs as written, in order, each command reading what the previous one wrote: the
commands are read from the README itself and run through bash in a copy-free temporary working directory that
only links the checkout's sample files, with tiny settings appended (fewer images, one epoch). Its train step is
also the main command's end-to-end test: the run directory's contract, the printed table, the saved student,
TensorBoard, and the golden rerun."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "isp_keras.train": "--epochs=1 --train_take=128 --test_take=128 --stats_images=128 --batch_size=32 --lr=0.05 "
    "--log_steps=3",
    "isp_keras.export": "--calibration_samples=16 --parity_take=32 --nodynamic --noparity_gate",
    "isp_keras.predict": "",
    "isp_keras.benchmark": "--runs=10 --warmup=1 --latency_block=5 --agreement_take=32 --calibration_samples=16 "
    "--e2e_images=2 --nomobilenet --full_size_mp=0.02 --full_size_runs=1",
}


# absl's INFO lines (I1207 12:00:00.0 ...), LiteRT's and the converter's own prints.
INFO_LINE = re.compile(r"^(I\d{4} |INFO: |fully_quantize:)")


def walkthrough() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough -->\s*```bash\n(.*?)```\s*<!-- /walkthrough -->", text, re.S)
    assert block, "README.md: no walkthrough block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_walkthrough_commands_are_known():
    commands = walkthrough()
    modules = [re.match(r"python -m (\S+)", c).group(1) for c in commands if c.startswith("python -m")]
    assert modules == list(TINY), modules
    assert any(c.startswith("tensorboard --logdir runs/") for c in commands)


@pytest.mark.slow
def test_walkthrough_runs_in_order(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(ROOT / "data" / "samples")
    outputs, errors = {}, {}
    for command in walkthrough():
        if not command.startswith("python -m"):
            continue
        module = command.split()[2]
        proc = run_in(tmp_path, f"{command} {TINY[module]}")
        assert proc.returncode == 0, f"{command}: {proc.stderr[-3000:]}"
        outputs[module] = proc.stdout
        errors[module] = proc.stderr
    check_train_run(tmp_path / "runs" / "train", outputs["isp_keras.train"])
    assert (tmp_path / "export" / "model_int8.tflite").is_file()
    predictions = [line for line in outputs["isp_keras.predict"].splitlines() if line.startswith("data/samples/")]
    assert len(predictions) == 4 and all(line.count(",") == 4 for line in predictions)
    assert "int8_over_float32_latency" in outputs["isp_keras.benchmark"]
    # What a person reads: a short table from benchmark, progress on stderr, and no TensorFlow, absl or LiteRT
    # INFO lines (they need --verbosity=1).
    table = [line for line in outputs["isp_keras.benchmark"].splitlines() if line.startswith("| ")]
    assert table[0] == "| figure | value | q1-q3 |" and 5 < len(table) < 40
    assert "benchmark: single-image latency" in errors["isp_keras.benchmark"]
    assert "export: converting to TFLite (int8" in errors["isp_keras.export"]
    for module in ("isp_keras.export", "isp_keras.predict", "isp_keras.benchmark"):
        noise = [line for line in errors[module].splitlines() if INFO_LINE.match(line)]
        assert not noise, (module, noise[:3])

    # Golden: the same train command with the same seed gives the same numbers (CPU, one process).
    results = json.loads((tmp_path / "runs" / "train" / "results.json").read_text())
    command = next(c for c in walkthrough() if c.startswith("python -m isp_keras.train"))
    again = run_in(tmp_path, f"{command} {TINY['isp_keras.train']} --overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads((tmp_path / "runs" / "train" / "results.json").read_text())
    for a, b in zip(results["rows"], rerun["rows"]):
        for k in ("top1", "top5", "agreement"):
            assert abs(a[k] - b[k]) <= 0.5, (a, b)


def run_in(folder: Path, command: str) -> subprocess.CompletedProcess:
    """A README command line through bash in `folder`, its output captured."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True, env=env, timeout=900)


def check_train_run(run_dir: Path, stdout: str) -> None:
    """What `python -m isp_keras.train` promises: results.json (the contract), the printed table, the run directory
    (config, normalisation, the quantisation-aware student alone with its serving metadata) and TensorBoard."""
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= {"rows", "config", "wall_seconds"} and results["wall_seconds"] > 0
    assert [r["name"] for r in results["rows"]] == ["teacher_clean", "teacher_raw", "distilled", "distilled_qat"]
    assert results["config"]["qat_epochs"] == 1
    for row in results["rows"]:
        assert set(row) == {"name", "top1", "top5", "agreement", "agreement_top5"}
        assert all(0.0 <= row[k] <= 100.0 for k in ("top1", "top5", "agreement", "agreement_top5"))
        assert row["top1"] <= row["top5"] and row["agreement"] <= row["agreement_top5"]
    clean = results["rows"][0]
    assert clean["agreement"] == 100.0 and clean["top1"] > 60.0  # the embedded teacher: 85 % on the test set
    assert results["config"]["noise_std"] == 0.1 and results["config"]["alpha"] == 0.9

    # The printed table says what results.json says.
    table = parse_table(stdout)
    assert set(table) == {r["name"] for r in results["rows"]}
    for row in results["rows"]:
        assert table[row["name"]] == pytest.approx((row["top1"], row["top5"], row["agreement"]), abs=0.006)

    # The run directory: resolved config, the student alone, serving metadata, TensorBoard logs.
    config = json.loads((run_dir / "config.json").read_text())
    assert config["command"] == "train" and config["config"]["teacher"] == "embedded"
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
    # Training scalars every --log_steps steps (4 steps per epoch here, logged every 3 and at the epoch end), and
    # one global step: the quantisation-aware row goes on where the distilled row ended.
    distilled = _scalar_steps(run_dir / "distilled" / "logs" / "train", "train/loss")
    qat = _scalar_steps(run_dir / "distilled_qat" / "logs" / "train", "train/loss")
    assert distilled == [3, 4] and qat == [6, 8]
    assert _scalar_steps(run_dir / "distilled" / "logs" / "validation", "validation/top1") == [4]
    assert _scalar_steps(run_dir / "distilled_qat" / "logs" / "validation", "validation/agreement") == [8]


def parse_table(stdout):
    rows = {}
    for line in stdout.splitlines():
        m = re.match(r"\| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows[m.group(1)] = tuple(float(v) for v in m.groups()[1:])
    return rows


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
