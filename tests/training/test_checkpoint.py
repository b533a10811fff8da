"""checkpoint.py: LR schedule, atomic checkpoints (never half-written), step/epoch/signal checkpointing, NaN guard."""

from __future__ import annotations

import json
import os
import signal

import keras
import numpy as np
import pytest

from isp_keras import fsutil
from isp_keras.errors import UserError
from isp_keras.training import checkpoint, schedule


def _write(name, text):
    def save(folder):
        (folder / name).write_text(text)

    return save


def test_save_checkpoint_commits_and_removes_the_previous(tmp_path):
    first = checkpoint.save_checkpoint(tmp_path, _write("w.txt", "one"), {"epochs_done": 1})
    state = checkpoint.read_checkpoint_state(tmp_path)
    assert state["epochs_done"] == 1 and (first / "w.txt").read_text() == "one"
    second = checkpoint.save_checkpoint(tmp_path, _write("w.txt", "two"), {"epochs_done": 1, "step": 15})
    state = checkpoint.read_checkpoint_state(tmp_path)
    assert state["step"] == 15 and state["path"] == str(second)
    assert not first.exists(), "the superseded checkpoint is removed once the new one is committed"
    assert sorted(p.name for p in tmp_path.iterdir()) == [second.name, checkpoint.STATE_NAME]


def test_failed_save_keeps_the_last_complete_checkpoint(tmp_path):
    good = checkpoint.save_checkpoint(tmp_path, _write("w.txt", "good"), {"epochs_done": 1})

    def crash(folder):
        (folder / "w.txt").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(fsutil.WriteError) as info:
        checkpoint.save_checkpoint(tmp_path, crash, {"epochs_done": 2})
    assert str(info.value) == (
        f"{tmp_path / 'checkpoint-0002'}: could not write the checkpoint: No space left on "
        f"device (the disk is full); any previous version is kept"
    )
    state = checkpoint.read_checkpoint_state(tmp_path)
    assert state["path"] == str(good) and (good / "w.txt").read_text() == "good"
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_saving_the_same_step_again_never_deletes_the_committed_one(tmp_path):
    first = checkpoint.save_checkpoint(tmp_path, _write("w.txt", "a"), {"epochs_done": 0, "step": 7})
    seen = []

    def save(folder):  # while the second copy is written, the committed first one must still be there
        seen.append((first / "w.txt").read_text())
        (folder / "w.txt").write_text("b")

    second = checkpoint.save_checkpoint(tmp_path, save, {"epochs_done": 0, "step": 7})
    assert seen == ["a"] and second != first and not first.exists()
    assert checkpoint.read_checkpoint_state(tmp_path)["path"] == str(second) and (second / "w.txt").read_text() == "b"


def test_commit_record_pointing_nowhere_is_no_checkpoint(tmp_path):
    (tmp_path / checkpoint.STATE_NAME).write_text(json.dumps({"epochs_done": 4, "folder": "checkpoint-0004"}))
    assert checkpoint.read_checkpoint_state(tmp_path) is None
    (tmp_path / checkpoint.STATE_NAME).write_text("{not json")
    assert checkpoint.read_checkpoint_state(tmp_path) is None


def test_sgd_warmup_then_cosine():
    opt = schedule.sgd(steps=100, lr=0.1, weight_decay=5e-4, warmup_steps=10)
    opt.build([keras.Variable(np.zeros(2, "float32"))])

    def lr_at(step):
        opt.iterations.assign(step)
        return float(opt.learning_rate)

    assert lr_at(0) == pytest.approx(0.0, abs=1e-7)
    assert lr_at(5) == pytest.approx(0.05, rel=1e-5)
    assert lr_at(10) == pytest.approx(0.1, rel=1e-5)
    assert lr_at(55) == pytest.approx(0.05, rel=1e-4)  # half-way through the cosine
    assert lr_at(100) == pytest.approx(0.0, abs=1e-6)


def _tiny_model(lr=0.01):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, 3, n).astype("int32")


def _saver(model):
    def save(folder):
        model.save_weights(folder / "m.weights.h5")

    return save


def test_step_and_epoch_intervals(tmp_path):
    model = _tiny_model()
    x, y = _data(64)  # 8 steps of 8 per epoch
    saved = []

    class Spy(checkpoint.AtomicCheckpoint):
        def _save(self, epochs_done, logs, step=None):
            saved.append((epochs_done, step))
            super()._save(epochs_done, logs, step)

    ckpt = Spy(tmp_path, _saver(model), steps_per_epoch=8, every_steps=3, every_epochs=2)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[ckpt], verbose=0)
    # Steps 3, 6 | 9, 12, 15 | 18, 21, 24(=end of the last epoch); epoch 2 by every_epochs; epoch 3 as the last.
    assert saved == [(0, 3), (0, 6), (1, 9), (1, 12), (1, 15), (2, 16), (2, 18), (2, 21), (3, 24)]
    state = checkpoint.read_checkpoint_state(tmp_path)
    assert state["epochs_done"] == 3 and state["step"] == 24


def test_sigterm_saves_mid_epoch_and_stops(tmp_path):
    model = _tiny_model()
    x, y = _data(64)
    before = signal.getsignal(signal.SIGTERM)

    class SendTerm(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    ckpt = checkpoint.AtomicCheckpoint(tmp_path, _saver(model), steps_per_epoch=8)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[SendTerm(), ckpt], verbose=0)
    assert ckpt.terminated and ckpt.signal == signal.SIGTERM
    state = checkpoint.read_checkpoint_state(tmp_path)
    assert state["step"] == 3 and state["epochs_done"] == 0, "saved at the batch the signal arrived, not later"
    assert int(model.optimizer.iterations.numpy()) == 3, "training stopped right after that batch"
    assert signal.getsignal(signal.SIGTERM) is before, "the previous handler is restored after fit"
    err = checkpoint.Stopped("stopped", signal.SIGTERM)
    assert isinstance(err, UserError) and err.exit_code == 143


def test_sigterm_without_steps_per_epoch_keeps_previous_checkpoint(tmp_path):
    model = _tiny_model()
    x, y = _data(64)

    class SendTerm(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    ckpt = checkpoint.AtomicCheckpoint(tmp_path, _saver(model))
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[SendTerm(), ckpt], verbose=0)
    state = checkpoint.read_checkpoint_state(tmp_path)
    assert ckpt.terminated and state["epochs_done"] == 1 and "step" not in state


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    model = _tiny_model(lr=0.01)
    x, y = _data(64)
    x, y = np.concatenate([x, x]), np.concatenate([y, y])
    x[8 * 10 + 3] = np.nan  # in the 11th batch: step 11
    nan_guard = checkpoint.StopOnNaN()
    ckpt = checkpoint.AtomicCheckpoint(tmp_path, _saver(model), steps_per_epoch=16, every_steps=4)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, callbacks=[ckpt, nan_guard], verbose=0)
    assert nan_guard.bad_step == 11
    assert int(model.optimizer.iterations.numpy()) == 11, "stopped at the NaN step"
    state = checkpoint.read_checkpoint_state(tmp_path)
    assert state["step"] == 8, "nothing is saved after the NaN (no step-12 or epoch-end save)"
    restored = _tiny_model()
    restored.load_weights(os.path.join(state["path"], "m.weights.h5"))
    assert all(np.isfinite(w).all() for w in restored.get_weights())
