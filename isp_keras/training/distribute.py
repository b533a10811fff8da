"""tf.distribute strategies by name: default | mirrored | multi_worker | tpu.

- mirrored: one process, all local GPUs (or logical CPU devices when there is no GPU).
- multi_worker: MultiWorkerMirroredStrategy over the cluster in TF_CONFIG. Keras 3 `fit()` fails under it
  (keras-team/keras#20585), so training goes through `custom_loop.fit` (`needs_custom_loop`).
- tpu: TPUStrategy on the TPU at `--tpu` (grpc address, name, or "" / "local" on a TPU VM).

Multi-worker and TPU strategies configure the TensorFlow runtime, so `init` must run at the start of `main`,
before any other TensorFlow work; `get_strategy` then returns the same strategy object.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import tensorflow as tf

from isp_keras.errors import UserError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
_CREATED: dict = {}


def ensure_logical_cpus(n: int) -> None:
    """Split the CPU into n logical devices (must run before TensorFlow initialises its devices)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        pass  # already initialised: keep what exists


def init(name: str, tpu: str = "", cpu_replicas: int = 2) -> tf.distribute.Strategy:
    """Create the strategy for a run; call first thing in `main` (before TensorFlow initialises)."""
    if name == "mirrored" and not tf.config.list_physical_devices("GPU"):
        ensure_logical_cpus(cpu_replicas)
    return get_strategy(name, tpu)


def get_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
    if name not in STRATEGIES:
        raise UserError(f"--strategy={name}: unknown; choose one of {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    key = (name, tpu)
    if key not in _CREATED:
        _CREATED[key] = _create(name, tpu)
    return _CREATED[key]


def _create(name: str, tpu: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return _multi_worker()
    return _tpu(tpu)


def _multi_worker() -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG", "")
    try:
        tf_config = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise UserError(f"--strategy=multi_worker: TF_CONFIG is not valid JSON ({exc})") from None
    if not tf_config.get("cluster") or not tf_config.get("task"):
        raise UserError(
            "--strategy=multi_worker: set TF_CONFIG with 'cluster' and 'task' on every worker "
            "(see notes: laptop -> 8 GPUs -> TPU pod)"
        )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
            )
        )
    except (RuntimeError, ValueError) as exc:
        raise UserError(
            f"--strategy=multi_worker: could not join the cluster in TF_CONFIG "
            f"({str(exc).splitlines()[0][:200]}); create the strategy before other TensorFlow work"
        ) from None


def _tpu(address: str) -> tf.distribute.Strategy:
    where = address or "local"
    if address.startswith("grpc://"):
        _check_reachable(address)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as exc:
        raise UserError(f"--strategy=tpu --tpu={where}: no TPU reachable ({str(exc).splitlines()[0][:200]})") from None
    return tf.distribute.TPUStrategy(resolver)


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """TensorFlow would retry an unreachable TPU worker for minutes; fail in seconds with one line instead."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(address)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 8470), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise UserError(f"--tpu={address}: no TPU worker reachable ({getattr(exc, 'strerror', None) or exc})") from None


def needs_custom_loop(strategy: tf.distribute.Strategy) -> bool:
    """Keras 3 fit() cannot run under MultiWorkerMirroredStrategy (keras-team/keras#20585)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The task that writes checkpoints and results: 'chief', or worker 0 when the cluster has no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def worker_dir(strategy: tf.distribute.Strategy, run_dir):
    """Where this task writes: run_dir for the chief, a private sub-folder for the other workers (their
    checkpoints equal the chief's; they exist only because every worker must run the same save code)."""
    run_dir = Path(run_dir)
    if is_chief(strategy):
        return run_dir
    resolver = strategy.cluster_resolver
    return run_dir / f".{resolver.task_type}-{resolver.task_id}"
