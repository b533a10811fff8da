"""A learnable RAW adapter in front of a packed student, trained by distillation with the rest of it.

On the mosaic's 2x2 tiles [B, H/2, W/2, 4] (the sensor's values, black 0 and white 1), in the order an ISP applies
them:
  affine  per-site gain and offset (a 1x1 depthwise convolution: white balance and black level), then a 1x1
          colour mix of the four sites (a colour matrix);
  curve   the same with a learnable monotone tone curve between them: piecewise linear over [0, 1] with evenly
          spaced knots, one curve for every site (the ISP's global tone map; per-site colour is the gain's job),
          extended linearly outside [0, 1] so that noise below black or highlights above white stay ordered.
Every part starts as the identity, so the student starts as the packed student, i.e. the teacher's function; a
non-identity initial curve (--raw_adapter_curve, e.g. a gamma for linear sensor data) is the user's choice.
The curve stays monotone in training: its segment slopes are non-negative (a NonNeg constraint after each step).
Only standard ops (depthwise and 1x1 convolutions, ReLU, multiply-adds), so it exports to int8 like the rest.
In the spirit of RAW-Adapter (ECCV 2024) and Raw-or-Cooked (SCIA 2023), without their per-image predictors.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from isp_keras.models.curves import ADAPTERS, curve_problem, identity_curve


@keras.saving.register_keras_serializable(package="isp_keras")
class ToneCurve(layers.Layer):
    """y = v0 + s_0 x + sum_k (s_k - s_{k-1}) relu(x - k/K): the piecewise linear curve through (k/K, v_k), with
    slopes s_k = K (v_{k+1} - v_k) >= 0, applied to each channel of the last axis."""

    def __init__(self, values=None, **kwargs):
        super().__init__(**kwargs)
        self.values = [float(v) for v in (values if values is not None else identity_curve())]
        problem = curve_problem(self.values)
        if problem:
            raise ValueError(f"tone curve: {problem}")

    @property
    def segments(self) -> int:
        return len(self.values) - 1

    def build(self, shape):
        v = np.asarray(self.values, np.float32)
        self.start = self.add_weight(shape=(), initializer=keras.initializers.Constant(float(v[0])), name="start")
        self.slopes = self.add_weight(
            shape=(self.segments,),
            initializer=keras.initializers.Constant((np.diff(v) * self.segments).tolist()),
            constraint=keras.constraints.NonNeg(),
            name="slopes",
        )
        self.knots = np.arange(1, self.segments, dtype=np.float32) / self.segments

    def call(self, x):
        # One 1x1 convolution over [x, relu(x - knot_1), ...]: in int8 the terms are summed in the int32
        # accumulator and rounded once, not after every knot.
        slopes = keras.ops.convert_to_tensor(self.slopes)
        steps = keras.ops.concatenate([slopes[:1], slopes[1:] - slopes[:-1]], axis=0)  # [K]
        channels = x.shape[-1]
        features = keras.ops.concatenate([x] + [keras.ops.relu(x - float(k)) for k in self.knots], axis=-1)
        eye = np.eye(channels, dtype=np.float32)
        kernel = keras.ops.reshape(steps[:, None, None] * eye[None], (1, 1, self.segments * channels, channels))
        return keras.ops.conv(features, kernel) + self.start

    def compute_output_shape(self, shape):
        return shape

    def curve(self) -> np.ndarray:
        """The current values at the knots (monotone by construction)."""
        slopes = np.asarray(self.slopes, np.float64)
        return float(self.start) + np.concatenate([[0.0], np.cumsum(slopes) / self.segments])

    def get_config(self) -> dict:
        return {**super().get_config(), "values": self.values}


NAME = "raw_adapter"  # the adapter's layers are <prefix>_raw_adapter_gain, _curve and _mix


def _part(layer) -> str | None:
    """gain, curve or mix for an adapter layer, else None."""
    head, sep, part = layer.name.rpartition(f"{NAME}_")
    return part if sep and part in ("gain", "curve", "mix") and (not head or head.endswith("_")) else None


def apply(x, kind: str, curve=None, prefix: str = ""):
    """The adapter's layers on tiles `x` (a Keras tensor [B, h, w, 4]), named `<prefix>_raw_adapter_gain`, `_curve`
    and `_mix` (the prefix puts them in the stem's stage for --finetune_first); identity weights are set by
    `init_identity` once the model is built."""
    if kind == "none":
        return x
    if kind not in ADAPTERS:
        raise ValueError(f"unknown RAW adapter {kind!r}; expected one of {', '.join(ADAPTERS)}")
    prefix = f"{prefix}_{NAME}" if prefix else NAME
    channels = x.shape[-1]
    x = layers.DepthwiseConv2D(1, use_bias=True, name=f"{prefix}_gain")(x)
    if kind == "curve":
        x = ToneCurve(curve, name=f"{prefix}_curve")(x)
    return layers.Conv2D(channels, 1, use_bias=False, name=f"{prefix}_mix")(x)


def parts_of(layer) -> bool:
    """Whether `layer` belongs to a RAW adapter."""
    return _part(layer) is not None


def parts(model: keras.Model) -> dict:
    """{"gain" | "curve" | "mix": layer} of the model's adapter (empty: none)."""
    return {_part(layer): layer for layer in model.layers if _part(layer)}


def init_identity(model: keras.Model) -> int:
    """Set the adapter's gain to 1, offset to 0 and colour mix to the identity (the curve starts from its values).
    Returns how many adapter layers there are."""
    found = parts(model)
    if "gain" in found:
        kernel, bias = found["gain"].get_weights()
        found["gain"].set_weights([np.ones_like(kernel), np.zeros_like(bias)])
    if "mix" in found:
        (kernel,) = found["mix"].get_weights()
        found["mix"].set_weights([np.eye(kernel.shape[-1], dtype=kernel.dtype).reshape(kernel.shape)])
    return len(found)


def describe(model: keras.Model) -> dict | None:
    """What a (trained) adapter does: per-site gain and offset, the colour mix, the tone curve's values. None if the
    model has no adapter."""
    found = parts(model)
    if "gain" not in found:
        return None
    kernel, bias = found["gain"].get_weights()
    out = {"gain": kernel.reshape(-1).tolist(), "offset": bias.tolist()}
    if "mix" in found:
        (k,) = found["mix"].get_weights()
        out["mix"] = k.reshape(k.shape[-2], k.shape[-1]).tolist()
    if "curve" in found:
        out["curve"] = found["curve"].curve().tolist()
    return out
