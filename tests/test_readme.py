"""The README's walkthrough runs as written, in order, each command reading what the previous one wrote: the
commands are read from the README itself and run through bash in a copy-free temporary working directory that
only links the checkout's sample files, with tiny settings appended (fewer images, one epoch)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "isp_keras.train": "--epochs=1 --train_take=128 --test_take=128 --stats_images=128 --batch_size=32 --lr=0.05",
    "isp_keras.export": "--calibration_samples=16 --parity_take=32 --nodynamic --noparity_gate",
    "isp_keras.predict": "",
    "isp_keras.benchmark": "--runs=10 --warmup=1 --latency_block=5 --agreement_take=32 --calibration_samples=16 "
    "--e2e_images=2 --nomobilenet",
}


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
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    outputs = {}
    for command in walkthrough():
        if not command.startswith("python -m"):
            continue
        module = command.split()[2]
        proc = subprocess.run(
            ["bash", "-c", f"{command} {TINY[module]}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert proc.returncode == 0, f"{command}: {proc.stderr[-3000:]}"
        outputs[module] = proc.stdout
    results = json.loads((tmp_path / "runs" / "train" / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["teacher_clean", "teacher_raw", "distilled", "distilled_qat"]
    assert (tmp_path / "export" / "model_int8.tflite").is_file()
    predictions = [line for line in outputs["isp_keras.predict"].splitlines() if line.startswith("data/samples/")]
    assert len(predictions) == 4 and all(line.count(",") == 4 for line in predictions)
    assert "int8_over_float32_latency" in outputs["isp_keras.benchmark"]
