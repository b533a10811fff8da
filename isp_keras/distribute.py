"""tf.distribute strategies by name. Mirrored over logical CPU devices when there is no GPU."""

from __future__ import annotations

import tensorflow as tf

from isp_keras.errors import UserError

STRATEGIES = ("default", "mirrored")


def ensure_logical_cpus(n: int) -> None:
    """Split the CPU into n logical devices (must run before TensorFlow initialises its devices)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        pass  # already initialised: keep what exists


def get_strategy(name: str) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise UserError(f"--strategy={name}: unknown; choose one of {', '.join(STRATEGIES)}")
