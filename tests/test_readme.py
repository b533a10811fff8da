"""The README's walkthrough runs as written, in order, each command reading what the previous one wrote: the
commands are read from the README itself and run through bash in a copy-free temporary working directory that
only links the checkout's sample files, with tiny settings appended (fewer images, one epoch). Its train step is
also the main command's end-to-end test: the run directory's contract, the printed table, the saved student,
TensorBoard, and the golden rerun; its benchmark step is the deployment benchmark's smoke run (every figure of its
JSON)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "isp_keras.train": "--epochs=1 --train_take=128 --test_take=128 --stats_images=128 --batch_size=32 --lr=0.05 "
    "--log_steps=3",
    "isp_keras.export": "--calibration_samples=16 --parity_take=32 --nodynamic --noparity_gate",
    "isp_keras.predict": "",
    "isp_keras.benchmark": "--runs=3 --warmup=1 --latency_block=1 --agreement_take=32 --calibration_samples=16 "
    "--e2e_images=2 --nomobilenet --full_size_mp=0.02 --full_size_runs=1 --json=bench.json",
}
# The benchmark's ratios: (ratio, numerator latency, denominator latency).
RATIOS = (
    ("int8_over_float32_latency", "int8_latency_ms", "float32_latency_ms"),
    ("dynamic_over_float32_latency", "dynamic_latency_ms", "float32_latency_ms"),
    ("raw_path_speedup_over_isp_path", "isp_path_latency_ms", "raw_path_latency_ms"),
    ("raw_path_speedup_over_tf_isp_path", "tf_isp_path_latency_ms", "raw_path_latency_ms"),
)


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


def test_the_test_command_runs_the_whole_suite_and_the_default_skips_slow_tests():
    """The README's test command is what CI runs, with --slow (every test); a bare `python -m pytest` deselects the
    tests marked slow unless they are named by node id."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^pip install -e \"\.\[test\]\" && (python -m pytest[^#]*?)\s+#", readme, re.M)
    assert command, "README.md: no test command"
    assert command.group(1) == "python -m pytest -q --slow"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert ci == [command.group(1)]

    def collected(*options, target="tests/test_readme.py"):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n0", *options, target],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return {line.split("::")[1] for line in proc.stdout.splitlines() if "::" in line}

    assert "test_walkthrough_runs_in_order" not in collected()
    assert "test_walkthrough_runs_in_order" in collected("--slow")
    assert collected("-m", "slow") == {"test_walkthrough_runs_in_order"}
    named = "tests/test_readme.py::test_walkthrough_runs_in_order"
    assert collected(target=named) == {"test_walkthrough_runs_in_order"}


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
    check_benchmark_figures(json.loads((tmp_path / "bench.json").read_text()))
    # What a person reads: a short table from benchmark, progress on stderr, and no TensorFlow, absl or LiteRT
    # INFO lines (they need --verbosity=1).
    table = [line for line in outputs["isp_keras.benchmark"].splitlines() if line.startswith("| ")]
    assert table[0] == "| figure | value | q1-q3 |" and 5 < len(table) < 40
    assert "benchmark: single-image latency" in errors["isp_keras.benchmark"]
    assert "export: converting to TFLite (int8" in errors["isp_keras.export"]
    for module in ("isp_keras.export", "isp_keras.predict", "isp_keras.benchmark"):
        noise = [line for line in errors[module].splitlines() if INFO_LINE.match(line)]
        assert not noise, (module, noise[:3])

    # Golden: the same train command with the same seed gives the same numbers (CPU, one process); the rows before
    # the quantisation-aware one are made before it starts, so the rerun stops there.
    results = json.loads((tmp_path / "runs" / "train" / "results.json").read_text())
    command = next(c for c in walkthrough() if c.startswith("python -m isp_keras.train"))
    again = run_in(tmp_path, f"{command} {TINY['isp_keras.train']} --qat_epochs=0 --model_dir=runs/again")
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads((tmp_path / "runs" / "again" / "results.json").read_text())
    assert [r["name"] for r in rerun["rows"]] == ["teacher_clean", "teacher_raw", "distilled"]
    for a, b in zip(results["rows"], rerun["rows"], strict=False):
        for k in ("top1", "top5", "agreement"):
            assert abs(a[k] - b[k]) <= 0.5, (a, b)
    # Without the quantisation-aware row the saved student is the distilled one: its kernels are off the int8 grid.
    import keras

    student = keras.saving.load_model(tmp_path / "runs" / "again" / "student.keras", safe_mode=True)
    kernel = student.get_layer("stem_conv").kernel.numpy()
    steps = kernel / (np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) / 127.0)
    assert np.abs(steps - np.round(steps)).max() > 0.1


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


def check_benchmark_figures(fig: dict) -> None:
    """What `benchmark --suite=deploy --json` promises, with the walkthrough's settings (3 single rounds, 32
    agreement mosaics, 2 end-to-end images, a 0.02-megapixel full-size file)."""
    for name in ("keras", "float32", "dynamic", "int8", "raw_path", "isp_path", "tf_isp_path", "isp_only"):
        assert fig[f"{name}_latency_ms"] > 0
    assert fig["latency_rounds"] == 3
    for name, num, den in RATIOS:
        # The median of the per-round ratios within their spread, and the ratio of the two median latencies (the
        # same timings) within the per-round ratios' range.
        lo, q1, q3, hi = (fig[f"{name}_{s}"] for s in ("min", "q1", "q3", "max"))
        assert lo <= q1 <= fig[name] <= q3 <= hi, (name, fig)
        assert lo * (1 - 1e-3) <= fig[num] / fig[den] <= hi * (1 + 1e-3), (name, fig)
    assert 0 <= fig["int8_top1_agreement"] <= 100 and fig["float32_top1_agreement"] == 100.0
    assert fig["agreement_examples"] == 32 and fig["e2e_images"] == 2
    assert fig["int8_bytes"] < fig["float32_bytes"] and fig["keras_bytes"] > 0
    assert 0 <= fig["tf_isp_path_top1"] <= 100 and fig["tf_isp_path_model_bytes"] > 0
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in fig.values())
    # 0.02 megapixels in 32-pixel tiles: 122x162 pixels, 3x5 tiles.
    assert fig["full_size_shape"] == "162x122" and fig["full_size_tiles"] == 3 * 5
    for kind in ("raw", "isp"):
        assert fig[f"full_{kind}_path_latency_ms"] > 0
        assert fig[f"full_{kind}_path_peak_rss_mb"] > fig[f"full_{kind}_path_work_rss_mb"] > 0
    assert fig["full_raw_path_speedup_over_isp_path"] > 0


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
