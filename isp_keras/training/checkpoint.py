"""Atomic per-epoch (and per-step) checkpoints, resume, stop on SIGTERM/Ctrl-C, NaN guard."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import keras

from isp_keras import fsutil
from isp_keras.errors import UserError

CKPT_DIR = "checkpoint"


STATE_NAME = "checkpoint.json"


def save_checkpoint(run_dir, save_fn, state: dict) -> Path:
    """`save_fn(folder)` writes the checkpoint's files into a temporary folder; the files are fsynced, the folder
    is renamed into place and only then does checkpoint.json (the commit record) name it. A kill at any point
    leaves the last complete checkpoint readable. `state` holds `epochs_done` and, when saved mid-epoch, `step`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    base = f"{CKPT_DIR}-{state['epochs_done']:04d}" + (f"-step{state['step']:09d}" if "step" in state else "")
    name, version = base, 1
    while (run_dir / name).exists():  # never delete what the current record may name before replacing it
        name, version = f"{base}-v{version}", version + 1
    tmp = run_dir / f".{name}.partial"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_fn(tmp)
        fsutil.fsync_tree(tmp)
        os.replace(tmp, run_dir / name)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, fsutil.WriteError):
            raise
        raise fsutil.write_error(run_dir / name, exc, "could not write the checkpoint") from exc
    fsutil.fsync_dir(run_dir)
    fsutil.write_json_atomic(run_dir / STATE_NAME, {**state, "folder": name})
    _remove_stale(run_dir, keep=name)
    return run_dir / name


def _remove_stale(run_dir: Path, keep: str) -> None:
    """Older checkpoints and leftovers of killed saves: everything checkpoint-like except the committed one."""
    for path in run_dir.iterdir():
        stale = path.name.startswith(f"{CKPT_DIR}-") or (
            path.name.startswith(f".{CKPT_DIR}-") and path.name.endswith(".partial")
        )
        if stale and path.is_dir() and path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


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


class Stopped(UserError):
    """Training stopped by a signal after saving a checkpoint; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class AtomicCheckpoint(keras.callbacks.Callback):
    """Save complete checkpoints via `save_fn(folder)` (see `save_checkpoint`): every `every_epochs` epochs and
    after the last, every `every_steps` optimizer steps, and when SIGTERM/SIGINT arrives (then training stops).

    Mid-epoch saves (steps, signals) need `steps_per_epoch`, and the caller must be able to resume mid-epoch;
    without it a signal stops training at the next batch and keeps the previous checkpoint. A second Ctrl-C
    interrupts at once. Nothing is saved once the loss is NaN/Inf (see StopOnNaN): the last good one stays.
    """

    def __init__(
        self,
        run_dir,
        save_fn,
        extra_state=None,
        steps_per_epoch: int | None = None,
        every_steps: int = 0,
        every_epochs: int = 1,
    ):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.save_fn = save_fn
        self.extra_state = extra_state or {}
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps if steps_per_epoch else 0
        self.every_epochs = max(every_epochs, 1)
        self.terminated = False
        self.signal = None
        self.saved_step = None
        self._previous_handlers = {}
        self._healthy = True

    def on_train_begin(self, logs=None):
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not in the main thread
                pass

    def on_train_end(self, logs=None):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum, _frame):
        self.terminated = True
        self.signal = signum
        # A second signal takes the usual path (Ctrl-C: KeyboardInterrupt) instead of waiting for the batch.
        signal.signal(signum, self._previous_handlers.get(signum, signal.SIG_DFL))

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _save(self, epochs_done: int, logs, step: int | None = None):
        logs = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        state = {"epochs_done": epochs_done, **self.extra_state, "logs": logs}
        if step is not None:
            state["step"] = step
        save_checkpoint(self.run_dir, self.save_fn, state)
        self.saved_step = step

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._healthy = False
        if not self._healthy:
            return
        if self.terminated:
            self.model.stop_training = True
        due = self.every_steps and (self._step() % self.every_steps == 0)
        if self.steps_per_epoch and (self.terminated or due):
            step = self._step()
            if step % self.steps_per_epoch:  # at an epoch's end, on_epoch_end saves it
                self._save(step // self.steps_per_epoch, logs, step)

    def on_epoch_end(self, epoch, logs=None):
        if not self._healthy or (self.terminated and not self.steps_per_epoch):
            return
        step = self._step() if self.steps_per_epoch else None
        if step is not None and step % self.steps_per_epoch:
            return  # stopped mid-epoch: on_train_batch_end saved that step
        last = epoch + 1 == self.params.get("epochs")
        due = self.every_steps and step % self.every_steps == 0
        if self.terminated or last or due or (epoch + 1) % self.every_epochs == 0:
            self._save(epoch + 1, logs, step)


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


class StopOnNaN(keras.callbacks.Callback):
    """Stop at the first non-finite loss. `bad_step` is the optimizer step (counted from the start of training,
    resumed runs included) whose loss was NaN/Inf; AtomicCheckpoint saves nothing after it."""

    def __init__(self):
        super().__init__()
        self.bad_step = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True
