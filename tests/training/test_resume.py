"""Kill-and-resume: SIGTERM and SIGKILL a real training process mid-epoch, rerun the same command, and the run
finishes like an uninterrupted one with the same seed; the committed checkpoint is always complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from isp_keras.data import normalisation, pipeline, sources
from isp_keras.training import checkpoint

STEPS_PER_EPOCH = 20  # 320 images / batch 16
EPOCHS = 2
QAT_EPOCHS = 2


def _command(teacher, run_dir):
    return [
        sys.executable,
        "-m",
        "isp_keras.train",
        f"--teacher={teacher}",
        f"--model_dir={run_dir}",
        f"--epochs={EPOCHS}",
        "--batch_size=16",
        "--train_take=320",
        "--test_take=256",
        "--stats_images=128",
        "--lr=0.05",
        "--noise_std=0.1",
        "--seed=3",
        "--checkpoint_steps=5",
        f"--qat_epochs={QAT_EPOCHS}",
    ]


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _start(teacher, run_dir, log):
    return subprocess.Popen(
        _command(teacher, run_dir),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=Path(__file__).resolve().parents[2],
    )


def _committed_step(run_dir, phase: str = "distilled") -> int | None:
    state = checkpoint.read_checkpoint_state(Path(run_dir) / phase)
    return state.get("step") if state else None


def _wait_for_step(proc, run_dir, at_least: int, timeout: float = 240.0, phase: str = "distilled") -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        step = _committed_step(run_dir, phase)
        if step is not None and step >= at_least:
            return step
        if proc.poll() is not None:
            step = _committed_step(run_dir, phase)
            if step is not None and step >= at_least:
                return step
            raise AssertionError(f"training exited with {proc.returncode} before step {at_least}")
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint at step >= {at_least} within {timeout} s")


def _assert_checkpoint_complete(run_dir):
    """What checkpoint.json names loads completely: student weights (HDF5) and optimizer state (pickle-free)."""
    import h5py

    state = checkpoint.read_checkpoint_state(Path(run_dir) / "distilled")
    folder = Path(state["path"])
    with h5py.File(folder / "student.weights.h5", "r") as f:
        assert len(f.keys()) > 0
    with np.load(folder / "optimizer.npz", allow_pickle=False) as npz:
        iterations = [npz[k] for k in sorted(npz.files)][0]
    assert int(iterations) == state["step"], "optimizer state and commit record agree on the step"
    return state


def _student_weights(run_dir):
    import keras

    model = keras.saving.load_model(Path(run_dir) / "student.keras", compile=False, safe_mode=True)
    return model.get_weights()


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tiny_teacher, tmp_path):
    """Stopped three times (SIGTERM in the first distillation epoch, SIGKILL in the second, SIGTERM inside the
    quantisation-aware row), the same command resumes each time and finishes like a run that never stopped: the
    distilled row's student and the final (quantisation-aware) student, moving ranges included."""
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    with open(tmp_path / "straight.log", "wb") as straight_log, open(tmp_path / "killed.log", "wb") as log:
        straight = _start(tiny_teacher, straight_dir, straight_log)  # in parallel with the interrupted one

        # 1. SIGTERM in epoch 1: checkpoint at the current step, one line, exit 128 + 15.
        proc = _start(tiny_teacher, killed_dir, log)
        _wait_for_step(proc, killed_dir, 5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        state = _assert_checkpoint_complete(killed_dir)
        term_step = state["step"]
        assert 5 <= term_step < STEPS_PER_EPOCH and state["epochs_done"] == 0

        # 2. Rerun, then SIGKILL (no chance to save anything) in the middle of epoch 2.
        proc = _start(tiny_teacher, killed_dir, log)
        _wait_for_step(proc, killed_dir, STEPS_PER_EPOCH + 5)
        proc.kill()
        proc.wait(timeout=60)
        state = _assert_checkpoint_complete(killed_dir)
        assert STEPS_PER_EPOCH < state["step"] < EPOCHS * STEPS_PER_EPOCH, "killed mid-epoch"
        assert not (killed_dir / "results.json").exists()

        # 3. Rerun, then SIGTERM in the second quantisation-aware epoch, after the distilled row finished.
        proc = _start(tiny_teacher, killed_dir, log)
        _wait_for_step(proc, killed_dir, STEPS_PER_EPOCH + 5, timeout=300, phase="distilled_qat")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        qat_step = _committed_step(killed_dir, "distilled_qat")
        assert STEPS_PER_EPOCH < qat_step < QAT_EPOCHS * STEPS_PER_EPOCH and not (killed_dir / "results.json").exists()

        # 4. The same command again finishes the run.
        proc = _start(tiny_teacher, killed_dir, log)
        assert proc.wait(timeout=300) == 0, (tmp_path / "killed.log").read_text()[-2000:]
        assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()[-2000:]

    text = (tmp_path / "killed.log").read_text()
    assert f"stopped by signal {int(signal.SIGTERM)} at step {term_step}" in text
    assert f"distilled_qat: stopped by signal {int(signal.SIGTERM)} at step {qat_step}" in text
    assert f"{killed_dir / 'distilled'}: finished earlier" in text
    assert "resuming distilled_qat after epoch 1" in text
    assert "Traceback" not in text
    a = json.loads((straight_dir / "results.json").read_text())
    b = json.loads((killed_dir / "results.json").read_text())
    rows_a, rows_b = {r["name"]: r for r in a["rows"]}, {r["name"]: r for r in b["rows"]}
    assert list(rows_b) == ["teacher_clean", "teacher_raw", "distilled", "distilled_qat"]
    assert rows_a["teacher_raw"] == rows_b["teacher_raw"], "same normalisation and evaluation noise"
    for row in ("distilled", "distilled_qat"):
        for key in ("top1", "top5", "agreement"):
            # 256 test images: one image is 0.39 points; the interrupted run must be within one image's noise.
            assert abs(rows_a[row][key] - rows_b[row][key]) <= 0.4, (row, key, rows_a, rows_b)
    for folder in ("distilled", "."):  # the distilled row's student, and the saved (quantisation-aware) one
        weights_a, weights_b = _student_weights(straight_dir / folder), _student_weights(killed_dir / folder)
        worst = max(float(np.max(np.abs(wa - wb))) for wa, wb in zip(weights_a, weights_b, strict=True))
        print(f"max |weight difference| resumed vs uninterrupted ({folder}): {worst:.3g}")
        assert worst < 1e-3, f"resumed student ({folder}) differs from the uninterrupted one by {worst}"
    # A finished run is not trained again, and is not mixed with a run of other settings.
    cwd = Path(__file__).resolve().parents[2]
    again = subprocess.run(_command(tiny_teacher, killed_dir), capture_output=True, text=True, env=_env(), cwd=cwd)
    assert again.returncode == 0 and f"{killed_dir / 'distilled_qat'}: finished earlier" in again.stdout
    assert json.loads((killed_dir / "results.json").read_text())["rows"] == b["rows"]
    other = subprocess.run(
        [*_command(tiny_teacher, killed_dir), "--lr=0.01"], capture_output=True, text=True, env=_env(), cwd=cwd
    )
    assert other.returncode == 2 and "pass --overwrite" in other.stderr.strip().splitlines()[-1]


def _batches(ds, n):
    return [(x[0].numpy(), y.numpy()) for (x, y) in ds.take(n)]


def test_train_stream_resumes_at_any_step():
    """Data order and per-example noise depend on (seed, epoch, position) only: the stream started at step k
    equals the full stream from step k on, across an epoch boundary."""
    source = sources.get_source("embedded")
    cfg = pipeline.PipelineConfig(image_size=32, batch_size=8, noise_std=0.1, seed=5, take=40)
    norm = normalisation.Normalisation([0.4] * 3, [0.25] * 3, [0.5] * 3, [0.25] * 3)
    full = _batches(pipeline.build(source, "train", cfg, training=True, norm=norm, steps_per_epoch=5, epochs=3), 15)
    resumed = _batches(
        pipeline.build(source, "train", cfg, training=True, norm=norm, steps_per_epoch=5, start_step=3, epochs=3), 12
    )
    assert len(full) == 15 and len(resumed) == 12
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    # Epochs differ from each other (reshuffled, fresh noise) and stop after the last one.
    assert not np.array_equal(full[0][0], full[5][0])
    assert sorted(np.concatenate([y for _, y in full[:5]])) == sorted(np.concatenate([y for _, y in full[5:10]]))
    ds = pipeline.build(source, "train", cfg, training=True, norm=norm, steps_per_epoch=5, start_step=12, epochs=3)
    assert len(_batches(ds, 100)) == 3
