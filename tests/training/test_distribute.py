"""tf.distribute: a Distiller step under MirroredStrategy over two logical CPUs equals the single-device step.

TensorFlow's logical devices must be configured before TF initialises, so the strategy runs in a child process
(this file, run as a script) and reports back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GLOBAL_BATCH = 16


def run_child(*args, timeout=300, env_extra=None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, __file__, *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mirrored_step_equals_single_device(tiny_teacher):
    out = run_child("mirrored_step", tiny_teacher)
    assert out["replicas"] == 2
    assert out["single_loss"] > 0.1  # a real loss, not a degenerate zero
    assert abs(out["mirrored_loss"] - out["single_loss"]) < 1e-4, out
    # Every student variable (kernels, BN gammas/betas and the moving statistics) after one SGD step.
    assert out["max_weight_diff"] < 1e-4, out
    assert out["max_update"] > 1e-3, out  # the step did change the weights, so equality means something


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_two_processes_custom_loop(tiny_teacher):
    """Two worker processes on 127.0.0.1 (TF_CONFIG), MultiWorkerMirroredStrategy, the custom strategy.run loop:
    both workers end with identical weights, equal to one device trained on the same global batches."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "multi_worker", tiny_teacher],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env={**env, "TF_CONFIG": tf_config},
            )
        )
    outs = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=240)
        finally:
            proc.kill()
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    a, b = outs
    assert a["replicas"] == b["replicas"] == 2
    assert a["chief"] and not b["chief"]
    assert a["losses"] == b["losses"]  # the logged loss is the global (all-reduced) one
    assert a["max_worker_diff_to_reference"] < 1e-4 and b["max_worker_diff_to_reference"] < 1e-4, outs
    assert abs(a["losses"][-1] - a["reference_loss"]) < 1e-4, outs
    assert a["max_update"] > 1e-3, outs


def test_unknown_strategy_is_a_user_error():
    from isp_keras.errors import UserError
    from isp_keras.training import distribute

    with pytest.raises(UserError, match="--strategy=bogus"):
        distribute.get_strategy("bogus")


def test_unreachable_tpu_is_a_user_error():
    """The TPU path cannot run here (no TPU); at least an unreachable address fails fast with one line."""
    from isp_keras.errors import UserError
    from isp_keras.training import distribute

    with pytest.raises(UserError, match="--tpu=grpc://127.0.0.1:1: no TPU worker reachable"):
        distribute.get_strategy("tpu", "grpc://127.0.0.1:1")


def test_multi_worker_without_tf_config_is_a_user_error(monkeypatch):
    from isp_keras.errors import UserError
    from isp_keras.training import distribute

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="--strategy=multi_worker: set TF_CONFIG"):
        distribute.get_strategy("multi_worker")


# ---------------------------------------------------------------- child processes


def _batch(teacher, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    size = teacher.input_shape[1]
    student_x = rng.normal(size=(GLOBAL_BATCH, size, size, 3)).astype("float32")
    teacher_x = rng.normal(size=(GLOBAL_BATCH, size, size, 3)).astype("float32")
    labels = rng.integers(0, teacher.output_shape[-1], size=GLOBAL_BATCH).astype("int32")
    return (student_x, teacher_x), labels


def _one_step(strategy, teacher, batch):
    """One Distiller.fit step on the global batch under `strategy`; returns (loss, student weights)."""
    import tensorflow as tf

    from isp_keras.models import students
    from isp_keras.training import distiller, schedule

    with strategy.scope():
        student = students.student_from_teacher(teacher, sync_bn=strategy.num_replicas_in_sync > 1)
        model = distiller.Distiller(student, teacher, alpha=0.9, temperature=4.0)
        model.compile(optimizer=schedule.sgd(10, 0.1, 5e-4))
    ds = tf.data.Dataset.from_tensors(batch)
    history = model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
    return float(history.history["loss"][0]), [v.numpy() for v in student.weights]


def _child_mirrored_step(teacher_path):
    import numpy as np

    from isp_keras.training import distribute

    distribute.ensure_logical_cpus(2)
    import tensorflow as tf

    from isp_keras.models import teachers

    teacher, _ = teachers.load_teacher(teacher_path)
    teachers.freeze(teacher)
    batch = _batch(teacher)
    before = [w.copy() for w in teacher.get_weights()]
    single_loss, single_w = _one_step(tf.distribute.get_strategy(), teacher, batch)
    mirrored = distribute.get_strategy("mirrored")
    mirrored_loss, mirrored_w = _one_step(mirrored, teacher, batch)
    return {
        "replicas": mirrored.num_replicas_in_sync,
        "single_loss": single_loss,
        "mirrored_loss": mirrored_loss,
        "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(single_w, mirrored_w)),
        "max_update": max(float(np.max(np.abs(a - b))) for a, b in zip(single_w, before)),
    }


def _child_multi_worker(teacher_path):
    import numpy as np

    from isp_keras.training import distribute

    strategy = distribute.get_strategy("multi_worker")  # first: it configures the runtime
    import tensorflow as tf

    from isp_keras.models import students, teachers
    from isp_keras.training import custom_loop, distiller, schedule

    teacher, _ = teachers.load_teacher(teacher_path)
    teachers.freeze(teacher)
    (sx, tx), y = _batch(teacher, seed=0)
    (sx2, tx2), y2 = _batch(teacher, seed=1)
    data = ((np.concatenate([sx, sx2]), np.concatenate([tx, tx2])), np.concatenate([y, y2]))
    ds = tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH)
    before = [w.copy() for w in teacher.get_weights()]
    with strategy.scope():
        student = students.student_from_teacher(teacher, sync_bn=strategy.num_replicas_in_sync > 1)
        model = distiller.Distiller(student, teacher, alpha=0.9, temperature=4.0)
        model.compile(optimizer=schedule.sgd(10, 0.1, 5e-4))
    losses = []

    class Record(__import__("keras").callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(logs["loss"])

    custom_loop.fit(model, ds, strategy, epochs=1, steps_per_epoch=2, callbacks=[Record()], verbose=0)
    weights = [v.numpy() for v in student.weights]

    ref_student = students.student_from_teacher(teacher)
    ref = distiller.Distiller(ref_student, teacher, alpha=0.9, temperature=4.0)
    ref.compile(optimizer=schedule.sgd(10, 0.1, 5e-4))
    history = ref.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    ref_weights = [v.numpy() for v in ref_student.weights]
    return {
        "replicas": strategy.num_replicas_in_sync,
        "chief": distribute.is_chief(strategy),
        "losses": losses,
        "reference_loss": float(history.history["loss"][-1]),
        "max_worker_diff_to_reference": max(float(np.max(np.abs(a - b))) for a, b in zip(weights, ref_weights)),
        "max_update": max(float(np.max(np.abs(a - b))) for a, b in zip(weights, before)),
    }


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    result = globals()[f"_child_{command}"](*rest)
    print(json.dumps(result))
