"""int8 support: activation ranges for the full-integer export, and quantisation-aware fine-tuning (QAT).

Ranges are chosen here rather than by the TFLite calibrator.

The TFLite converter calibrates each int8 tensor to the global min/max over the representative set, so one rare
extreme value sets the step of the whole tensor. We instead take, for every tensor TFLite will materialise
(the student's input, and each layer output that is not fused into the next op), the mean over calibration
batches of the per-batch min and max (the moving-average ranges of quantisation-aware training, without the
training), and pin them in the graph that is converted with FakeQuant ops. The converter keeps those ranges and
calibrates only the rest (the RAW front end). Measured on the distilled default student: int8 top-1 agreement
with the float student 97.53% with the converter's own ranges, 98.11% with these; 98.41% after one QAT epoch
(docs/decisions/int8-pinned-ranges-and-qat.md).

The float student is not changed: FakeQuant only enters the graph handed to the int8 converter.
"""

from __future__ import annotations

from collections.abc import Collection

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from isp_keras.models import border

INPUT = "__input__"
# TFLite fuses these producer -> consumer pairs into one op, so the producer's output is never an int8 tensor.
_FUSES_INTO = {
    "BatchNormalization": ("Conv2D", "DepthwiseConv2D", "Dense"),
    "ReLU": ("Conv2D", "DepthwiseConv2D", "Dense", "BatchNormalization", "Add"),
}
# Layers whose int8 output TFLite ties to the input's scale: no range of their own.
_SAME_SCALE = ("MaxPooling2D", "ZeroPadding2D", "Reshape", "Flatten", "Dropout")


@keras.saving.register_keras_serializable(package="isp_keras")
class FakeQuant(layers.Layer):
    """Rounds to the 256 levels of [lo, hi] (a range pinned for the int8 converter); identity gradient inside."""

    def __init__(self, lo: float, hi: float, **kwargs):
        super().__init__(**kwargs)
        self.lo, self.hi = float(min(lo, 0.0)), float(max(hi, 0.0))
        if not self.hi > self.lo:
            self.hi = self.lo + 1e-6

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_args(x, min=self.lo, max=self.hi, num_bits=8)

    def get_config(self):
        return {**super().get_config(), "lo": self.lo, "hi": self.hi}


def _consumers(model: keras.Model) -> dict:
    """Layer name -> names of the layers that take its output, read from the functional config."""
    config = model.get_config()
    graph = config.get("layers") if isinstance(config, dict) else None
    if not graph or not all(
        isinstance(layer, dict) and "name" in layer and "inbound_nodes" in layer for layer in graph
    ):
        raise ValueError(f"{type(model).__name__} is not a functional model (no layer graph in its config)")
    consumers = {layer["name"]: [] for layer in config["layers"]}

    def walk(node, name):
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                consumers[node["config"]["keras_history"][0]].append(name)
            for value in node.values():
                walk(value, name)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value, name)

    for layer in config["layers"]:
        walk(layer.get("inbound_nodes", []), layer["name"])
    return consumers


def quantised_layers(model: keras.Model) -> list[str]:
    """Names of the layers whose output is an int8 tensor of its own in the converted model."""
    if not isinstance(model, keras.Model):
        raise ValueError("activation ranges need a functional Keras model")
    consumers = _consumers(model)
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    names = []
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer) or kinds[layer.name] in _SAME_SCALE:
            continue
        after = consumers.get(layer.name, [])
        if len(after) == 1 and kinds[layer.name] in _FUSES_INTO.get(kinds[after[0]], ()):
            continue
        names.append(layer.name)
    return names


def activation_ranges(model: keras.Model, batches) -> dict:
    """{tensor: [lo, hi]}: mean over `batches` (student inputs) of each batch's min and max, 0 always inside."""
    names = quantised_layers(model)
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in names])
    run = tf.function(lambda x: [(tf.reduce_min(t), tf.reduce_max(t)) for t in [x, *probe([x], training=False)]])
    sums = np.zeros((len(names) + 1, 2), np.float64)
    count = 0
    for batch in batches:
        sums += np.array([[float(lo), float(hi)] for lo, hi in run(tf.convert_to_tensor(batch))])
        count += 1
    if not count:
        raise ValueError("activation ranges need at least one calibration batch")
    means = sums / count
    return {name: [min(float(lo), 0.0), max(float(hi), 0.0)] for name, (lo, hi) in zip([INPUT, *names], means)}


def with_ranges(model: keras.Model, ranges: dict) -> keras.Model:
    """The same model (sharing its layers and weights) with FakeQuant pinning `ranges` after each named tensor."""

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if layer.name in ranges:
            out = FakeQuant(*ranges[layer.name], name=f"{layer.name}_range")(out)
        return out

    body = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    x = FakeQuant(*ranges[INPUT], name="input_range")(inputs) if INPUT in ranges else inputs
    return keras.Model(inputs, body(x), name=f"{model.name}_int8_ranges")


# Quantisation-aware fine-tuning (QAT). The student is trained through a copy of its graph that rounds weights
# (per output channel, symmetric, as TFLite's int8 kernels do) and activations (to moving-average ranges) in the
# forward pass, with straight-through gradients; BatchNormalization is frozen so that TFLite's folding of it into
# the convolution matches what was trained. Afterwards the float weights are snapped to their int8 grid, so the
# converter's weight quantisation is exact and only activation rounding remains.

_WEIGHT_AXES = {"DepthwiseConv2D": (2, 3), "Conv2D": (3,), "Dense": (1,)}


def _weight_axes(layer) -> tuple | None:
    for cls in type(layer).__mro__:
        if cls.__name__ in _WEIGHT_AXES:
            return _WEIGHT_AXES[cls.__name__]
    return None


def fake_quant_weight(w, keep_axes: tuple):
    """Symmetric int8 (levels -127..127) per slice along `keep_axes`, straight-through gradient."""
    reduce = [i for i in range(len(w.shape)) if i not in keep_axes]
    scale = tf.maximum(tf.reduce_max(tf.abs(w), axis=reduce, keepdims=True), 1e-12) / 127.0
    q = tf.clip_by_value(tf.round(w / scale), -127.0, 127.0) * scale
    return w + tf.stop_gradient(q - w)


class _QuantisedWeights(layers.Layer):
    """Runs a Conv2D/DepthwiseConv2D/Dense layer (shared, not copied) with its kernel fake-quantised."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, x):
        inner = self.inner
        kernel = fake_quant_weight(inner.kernel, _weight_axes(inner))
        if isinstance(inner, border.FramedConv2D):
            return inner.forward(x, kernel)
        if isinstance(inner, layers.DepthwiseConv2D):
            y = keras.ops.depthwise_conv(
                x, kernel, inner.strides, inner.padding, inner.data_format, inner.dilation_rate
            )
        elif isinstance(inner, layers.Conv2D):
            y = inner.convolution_op(x, kernel)
        else:
            y = keras.ops.matmul(x, kernel)
        if inner.use_bias:
            y = y + inner.bias
        return inner.activation(y)


class _MovingRange(layers.Layer):
    """Fake-quantises to [lo, hi], the moving average (first batch: the batch itself) of batch min/max in training."""

    def __init__(self, momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def build(self, shape):
        self.lo = self.add_weight(shape=(), initializer="zeros", trainable=False, name="lo")
        self.hi = self.add_weight(shape=(), initializer="zeros", trainable=False, name="hi")
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, x, training=False):
        if training:
            m = tf.where(self.seen > 0, self.momentum, 0.0)
            self.lo.assign(m * self.lo + (1.0 - m) * tf.minimum(tf.reduce_min(x), 0.0))
            self.hi.assign(m * self.hi + (1.0 - m) * tf.maximum(tf.reduce_max(x), 0.0))
            self.seen.assign_add(1.0)
        return tf.quantization.fake_quant_with_min_max_vars(x, self.lo, tf.maximum(self.hi, self.lo + 1e-6), num_bits=8)


def quantisation_aware(model: keras.Model) -> keras.Model:
    """A training view of `model` (same weight variables) that simulates int8 inference; freezes its BN layers."""
    names = set(quantised_layers(model))
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False  # Keras 3: a frozen BN also runs in inference mode

    def call(layer, *args, **kwargs):
        if _weight_axes(layer) is not None:
            out = _QuantisedWeights(layer, name=f"{layer.name}_qat")(*args)
        else:
            out = layer(*args, **kwargs)
        return _MovingRange(name=f"{layer.name}_range")(out) if layer.name in names else out

    body = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    return keras.Model(inputs, body(_MovingRange(name="input_range")(inputs)), name=f"{model.name}_qat")


def snap_weights(model: keras.Model, only: Collection[str] | None = None) -> int:
    """Replace every conv/dense kernel (or those of the layers named in `only`) by its int8-grid value (what
    quantisation_aware trained); returns how many."""
    count = 0
    for layer in model.layers:
        axes = _weight_axes(layer)
        if axes is not None and (only is None or layer.name in only):
            layer.kernel.assign(fake_quant_weight(layer.kernel, axes))
            count += 1
    return count


def unfreeze_batchnorm(model: keras.Model) -> None:
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = True
