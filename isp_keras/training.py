"""Shared training machinery: optimizer schedule, atomic per-epoch checkpoints, resume, NaN guard."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import keras

from isp_keras import fsutil

CKPT_DIR = "checkpoint"
STATE_NAME = "checkpoint.json"


def sgd(steps: int, lr: float, weight_decay: float, warmup_steps: int = 0) -> keras.optimizers.Optimizer:
    """Nesterov SGD with linear warmup then cosine decay to 0; no weight decay on BN and biases."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else lr, decay_steps=max(steps - warmup_steps, 1),
        warmup_target=lr if warmup_steps else None, warmup_steps=warmup_steps)
    opt = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=weight_decay or None)
    if weight_decay:
        opt.exclude_from_weight_decay(var_names=["bn", "bias", "beta", "gamma"])
    return opt


def save_checkpoint(run_dir, save_fn, state: dict) -> Path:
    """`save_fn(folder)` writes the checkpoint's files into a temporary folder; the folder is renamed into place
    and only then does checkpoint.json (the commit record) name it. A kill at any point leaves the last
    complete checkpoint readable."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"{CKPT_DIR}-{state['epochs_done']:04d}"
    tmp = run_dir / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_fn(tmp)
    final = run_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    previous = read_checkpoint_state(run_dir)
    fsutil.write_json_atomic(run_dir / STATE_NAME, {**state, "folder": name})
    if previous and previous["folder"] != name and (run_dir / previous["folder"]).exists():
        shutil.rmtree(run_dir / previous["folder"])
    return final


def read_checkpoint_state(run_dir) -> dict | None:
    """The last complete checkpoint's record (with `path`), or None."""
    path = Path(run_dir) / STATE_NAME
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError:
        return None
    folder = Path(run_dir) / state.get("folder", "")
    if not state.get("folder") or not folder.is_dir():
        return None
    state["path"] = str(folder)
    return state


class AtomicCheckpoint(keras.callbacks.Callback):
    """After every epoch save a complete checkpoint via `save_fn(folder)` (see `save_checkpoint`). On SIGTERM,
    training stops at the next batch; the partial epoch is not saved, the previous checkpoint stays."""

    def __init__(self, run_dir, save_fn, extra_state=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.save_fn = save_fn
        self.extra_state = extra_state or {}
        self.terminated = False

    def on_train_begin(self, logs=None):
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not in the main thread
            pass

    def _on_sigterm(self, *_):
        self.terminated = True

    def on_train_batch_end(self, batch, logs=None):
        if self.terminated:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.terminated:
            return
        logs = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        save_checkpoint(self.run_dir, self.save_fn, {"epochs_done": epoch + 1, **self.extra_state, "logs": logs})


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


class StopOnNaN(keras.callbacks.Callback):
    """Stop at the first non-finite loss, naming the step; the last complete checkpoint stays untouched."""

    def __init__(self):
        super().__init__()
        self.bad_step = None
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = self._step
            self.model.stop_training = True
