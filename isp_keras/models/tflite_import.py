"""Import a TFLite image classifier (e.g. a quantised ImageNet MobileNet) as a Keras model that returns logits.

The flatbuffer is read with the `tflite` package (generated from the TFLite schema); every weight is dequantised to
float32 (per-tensor or per-channel, uint8/int8 with zero points, int32 biases at input_scale * weight_scale) and the
graph is rebuilt op by op from built-in Keras layers, so the result saves as `.keras`, loads in safe mode and clones
with `keras.models.clone_model` (the student starts from it). The files these come from have BatchNorm folded into
the convolutions, so the model, and a student cloned from it, has no BatchNormalization layer.

The model takes the dequantised input (what the file's input quantisation maps RGB pixels to, e.g. [-1, 1]) and
returns what the file computes before its final SOFTMAX. In float the QUANTIZE/DEQUANTIZE ops are identities and
activations are not rounded to 8 bits; `simulate_rounding=True` adds that rounding back (see `ActivationRounding`).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import keras
import numpy as np
import tflite

from isp_keras.errors import UserError
from isp_keras.models.tflite_reader import (
    INT8,
    UINT8,
    Graph,
    damaged,
    dequantize,
    input_statistics,
    names_beside,
)

_PADDING = {0: "same", 1: "valid"}  # TFLite SAME pads like TF SAME (extra row/column at the bottom/right)


@keras.saving.register_keras_serializable(package="isp_keras")
class ActivationRounding(keras.layers.Layer):
    """Round activations to the file's 8-bit grid (scale, zero point, integer range), as the integer kernels do.

    Only used with simulate_rounding=True; the gradient passes straight through the rounding."""

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.zero_point, self.qmin, self.qmax = float(scale), int(zero_point), int(qmin), int(qmax)

    def call(self, x):
        ops = keras.ops
        q = ops.clip(ops.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)
        rounded = (q - self.zero_point) * self.scale
        return x + ops.stop_gradient(rounded - x)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "scale": self.scale,
            "zero_point": self.zero_point,
            "qmin": self.qmin,
            "qmax": self.qmax,
        }


class _Builder:
    """Walks the ops in file order (TFLite stores them topologically sorted), mapping tensor ids to Keras tensors."""

    def __init__(self, g: Graph, simulate_rounding: bool, batchnorm: bool = False):
        self.g, self.simulate_rounding = g, simulate_rounding
        # With batchnorm: the convolutions that get an identity BatchNormalization (all but the classifier).
        convs = [i for i in range(g.num_ops) if g.op_name(g.op(i)) in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        self.normalised = set(convs[:-1]) if batchnorm else set()
        self.values: dict[int, keras.KerasTensor] = {}
        self.constants: dict[int, np.ndarray] = {}
        self.after_softmax: set[int] = set()
        # A dilated convolution spelt SPACE_TO_BATCH_ND -> convolution -> BATCH_TO_SPACE_ND: the tensors in between.
        self.space_to_batch: dict[int, tuple] = {}
        self.dilated: dict[int, tuple] = {}
        self.batch_to_space: dict[int, tuple] = {}

    def fail(self, i: int, name: str, why: str):
        return UserError(f"{self.g.path}: TFLite op {name} (op #{i}): {why}")

    def value(self, i: int, t: int, name: str) -> keras.KerasTensor:
        if t in self.after_softmax:
            raise self.fail(i, name, "reads the output of a SOFTMAX; only a final SOFTMAX can be dropped")
        if t in self.space_to_batch or t in self.batch_to_space:
            raise self.fail(
                i,
                name,
                "reads a tensor inside SPACE_TO_BATCH_ND ... BATCH_TO_SPACE_ND; only a single "
                "CONV_2D/DEPTHWISE_CONV_2D between them (a dilated convolution) is supported",
            )
        if t not in self.values:
            raise self.fail(i, name, "takes a constant or missing tensor where an activation is expected")
        return self.values[t]

    def weight(self, i: int, t: int, name: str) -> np.ndarray:
        w = self.constants[t] if t in self.constants else self.g.constant(t)
        if w is None:
            raise self.fail(i, name, "its weights are computed at run time; only constant weights are supported")
        return w

    def bias(self, i: int, op, name: str) -> np.ndarray | None:
        """The bias (input 2), dequantised as the integer kernels use it: scale = input_scale * weight_scale."""
        if op.InputsLength() < 3 or op.Inputs(2) < 0:
            return None
        t = op.Inputs(2)
        raw = self.g.raw(t)
        x_quant, w_quant = self.g.quantisation(op.Inputs(0)), self.g.quantisation(op.Inputs(1))
        if raw is None or raw.dtype.kind == "f" or x_quant is None or w_quant is None:
            return self.weight(i, t, name)
        return dequantize(raw, x_quant[0][0] * w_quant[0], 0)

    def activation(self, y, fused: int, prefix: str, i: int, name: str):
        if fused == 0:
            return y
        if fused not in (1, 3):
            raise self.fail(
                i, name, f"fused activation {_ACTIVATIONS.get(fused, fused)} is not supported (only RELU, RELU6)"
            )
        return keras.layers.ReLU(max_value=6.0 if fused == 3 else None, name=f"{prefix}_{_ACTIVATIONS[fused]}")(y)

    def rounded(self, y, t: int, prefix: str):
        """With simulate_rounding, round an activation to its tensor's 8-bit grid."""
        quant = self.g.quantisation(t)
        dtype = self.g.tensor(t).Type()
        if not self.simulate_rounding or quant is None or dtype not in (UINT8, INT8):
            return y
        qmin, qmax = (0, 255) if dtype == UINT8 else (-128, 127)
        return ActivationRounding(quant[0][0], quant[1][0], qmin, qmax, name=f"{prefix}_round")(y)

    def build(self) -> tuple[keras.KerasTensor, keras.KerasTensor]:
        g = self.g
        if g.graph.InputsLength() != 1 or g.graph.OutputsLength() != 1:
            raise UserError(
                f"{g.path}: takes {g.graph.InputsLength()} inputs and returns "
                f"{g.graph.OutputsLength()} outputs; an image classifier takes one and returns one"
            )
        t_in = g.graph.Inputs(0)
        shape = g.shape(t_in)
        if len(shape) != 4:
            raise UserError(f"{g.path}: input shape {list(shape)}; expected [batch, height, width, channels]")
        image = keras.Input(shape[1:], name="image")
        self.values[t_in] = self.rounded(image, t_in, "input")
        for i in range(g.num_ops):
            op = g.op(i)
            name = g.op_name(op)
            handler = _HANDLERS.get(name)
            if handler is None:
                raise UserError(
                    f"{g.path}: unsupported TFLite op {name} (op #{i}); supported: {', '.join(SUPPORTED_OPS)}"
                )
            handler(self, i, op, name, f"op{i:03d}_{name.lower()}")
        t_out = g.graph.Outputs(0)
        if t_out not in self.values:
            raise UserError(f"{g.path}: the output tensor is not computed from the input")
        return image, self.values[t_out]

    # --- op handlers: (builder, op index, op, op name, layer-name prefix) -> None; they fill self.values.

    def conv_2d(self, i, op, name, prefix):
        w = self.weight(i, op.Inputs(1), name)  # [out, kh, kw, in]
        opts = self.options_of(i, op, name, tflite.Conv2DOptions)
        x, window = self.conv_input(i, op, name, prefix, opts)
        if w.shape[3] != x.shape[-1]:
            raise self.fail(i, name, f"grouped convolution ({x.shape[-1]} channels in, filters take {w.shape[3]})")
        bias = self.bias(i, op, name)
        layer = keras.layers.Conv2D(w.shape[0], w.shape[1:3], **window, use_bias=bias is not None, name=prefix)
        y = layer(x)
        layer.set_weights([w.transpose(1, 2, 3, 0)] + ([bias] if bias is not None else []))
        y = self.batchnorm(y, i, prefix)
        self.conv_output(op, self.activation(y, opts.FusedActivationFunction(), prefix, i, name), prefix)

    def depthwise_conv_2d(self, i, op, name, prefix):
        w = self.weight(i, op.Inputs(1), name)  # [1, kh, kw, in * multiplier], channel c * multiplier + m
        opts = self.options_of(i, op, name, tflite.DepthwiseConv2DOptions)
        x, window = self.conv_input(i, op, name, prefix, opts)
        channels = x.shape[-1]
        if w.shape[3] % channels:
            raise self.fail(i, name, f"{w.shape[3]} filters for {channels} input channels")
        multiplier = w.shape[3] // channels
        bias = self.bias(i, op, name)
        layer = keras.layers.DepthwiseConv2D(
            w.shape[1:3], **window, depth_multiplier=multiplier, use_bias=bias is not None, name=prefix
        )
        y = layer(x)
        layer.set_weights([w.reshape(*w.shape[1:3], channels, multiplier)] + ([bias] if bias is not None else []))
        y = self.batchnorm(y, i, prefix)
        self.conv_output(op, self.activation(y, opts.FusedActivationFunction(), prefix, i, name), prefix)

    def batchnorm(self, y, i: int, prefix: str):
        """An identity BatchNormalization after convolution i (with `batchnorm`), before its activation: zero mean,
        unit variance less epsilon, unit scale, zero shift. students.init_identity_batchnorm fits it to data."""
        if i not in self.normalised:
            return y
        layer = keras.layers.BatchNormalization(name=f"{prefix}_bn")
        y = layer(y)
        channels = y.shape[-1]
        ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        layer.set_weights([ones, zeros, zeros, ones - layer.epsilon])
        return y

    def space_to_batch_nd(self, i, op, name, prefix):
        # TF lowers a dilated convolution it cannot express directly to SPACE_TO_BATCH_ND -> convolution (VALID,
        # dilation 1) -> BATCH_TO_SPACE_ND, and the converter does not always fuse it back. That equals padding,
        # a VALID convolution dilated by the block size, and cropping (tf.nn.with_space_to_batch), so the
        # convolution reading this output builds exactly that, and BATCH_TO_SPACE_ND does the crop.
        x = self.value(i, op.Inputs(0), name)
        block = self.weight(i, op.Inputs(1), name).astype(int).reshape(-1)
        pads = self.weight(i, op.Inputs(2), name).astype(int)
        if len(x.shape) != 4 or block.shape != (2,) or pads.shape != (2, 2):
            raise self.fail(i, name, "only the 2-D spatial form (a dilated convolution) is supported")
        self.space_to_batch[op.Outputs(0)] = (x, tuple(block.tolist()), pads)

    def batch_to_space_nd(self, i, op, name, prefix):
        t = op.Inputs(0)
        if t not in self.batch_to_space:
            raise self.fail(
                i,
                name,
                "only after SPACE_TO_BATCH_ND -> CONV_2D/DEPTHWISE_CONV_2D (a dilated convolution) is supported",
            )
        y, block = self.batch_to_space.pop(t)
        crops = self.weight(i, op.Inputs(2), name).astype(int)
        if tuple(self.weight(i, op.Inputs(1), name).astype(int).reshape(-1).tolist()) != block:
            raise self.fail(i, name, "block shape differs from its SPACE_TO_BATCH_ND's")
        if crops.any():
            y = keras.layers.Cropping2D((tuple(crops[0].tolist()), tuple(crops[1].tolist())), name=prefix)(y)
        self.values[op.Outputs(0)] = y

    def fully_connected(self, i, op, name, prefix):
        x = self.value(i, op.Inputs(0), name)
        w = self.weight(i, op.Inputs(1), name)  # [out, in]
        opts = self.options_of(i, op, name, tflite.FullyConnectedOptions)
        if opts.WeightsFormat() != 0:
            raise self.fail(i, name, "shuffled weights are not supported")
        if x.shape[-1] != w.shape[1] or (len(x.shape) > 2 and not opts.KeepNumDims()):
            if int(np.prod(x.shape[1:])) != w.shape[1]:
                raise self.fail(i, name, f"input {list(x.shape[1:])} does not flatten to {w.shape[1]} features")
            x = keras.layers.Reshape((w.shape[1],), name=f"{prefix}_flatten")(x)
        bias = self.bias(i, op, name)
        layer = keras.layers.Dense(w.shape[0], use_bias=bias is not None, name=prefix)
        y = layer(x)
        layer.set_weights([w.T] + ([bias] if bias is not None else []))
        self.emit(op, self.activation(y, opts.FusedActivationFunction(), prefix, i, name), prefix)

    def pool_2d(self, i, op, name, prefix):
        x = self.value(i, op.Inputs(0), name)
        opts = self.options_of(i, op, name, tflite.Pool2DOptions)
        cls = keras.layers.AveragePooling2D if name == "AVERAGE_POOL_2D" else keras.layers.MaxPooling2D
        y = cls(
            (opts.FilterHeight(), opts.FilterWidth()),
            strides=(opts.StrideH(), opts.StrideW()),
            padding=_PADDING[opts.Padding()],
            name=prefix,
        )(x)
        self.emit(op, self.activation(y, opts.FusedActivationFunction(), prefix, i, name), prefix)

    def mean(self, i, op, name, prefix):
        x = self.value(i, op.Inputs(0), name)
        axes = self.weight(i, op.Inputs(1), name).astype(int).reshape(-1)
        axes = sorted({int(a) % len(x.shape) for a in axes})
        if len(x.shape) != 4 or axes != [1, 2]:
            raise self.fail(
                i,
                name,
                f"mean over axes {axes} of a rank-{len(x.shape)} tensor; only the spatial "
                "mean (axes 1, 2 of NHWC) is supported",
            )
        opts = self.g.options(op, tflite.ReducerOptions)
        keepdims = bool(opts.KeepDims()) if opts is not None else False
        self.emit(op, keras.layers.GlobalAveragePooling2D(keepdims=keepdims, name=prefix)(x), prefix)

    def add(self, i, op, name, prefix):
        a, b = (self.value(i, op.Inputs(k), name) for k in range(2))
        if a.shape != b.shape:
            raise self.fail(i, name, f"broadcasting add of {list(a.shape[1:])} and {list(b.shape[1:])}")
        opts = self.g.options(op, tflite.AddOptions)
        y = keras.layers.Add(name=prefix)([a, b])
        self.emit(op, self.activation(y, opts.FusedActivationFunction() if opts else 0, prefix, i, name), prefix)

    def reshape(self, i, op, name, prefix):
        x = self.value(i, op.Inputs(0), name)
        # The output tensor's stored shape is the reshape's static result (batch 1 in these files).
        in_shape, out_shape = self.g.shape(op.Inputs(0)), self.g.shape(op.Outputs(0))
        if len(out_shape) < 2 or out_shape[0] != in_shape[0]:
            raise self.fail(i, name, f"reshape {list(in_shape)} -> {list(out_shape)} changes the batch dimension")
        self.emit(op, keras.layers.Reshape(out_shape[1:], name=prefix)(x), prefix)

    def pad(self, i, op, name, prefix):
        x = self.value(i, op.Inputs(0), name)
        pads = self.weight(i, op.Inputs(1), name).astype(int)
        if pads.shape != (4, 2) or pads[0].any() or pads[3].any():
            raise self.fail(i, name, f"paddings {pads.tolist()}; only height/width padding of NHWC is supported")
        # Zero padding in float: a quantised PAD fills with the zero point, which dequantises to 0.
        y = keras.layers.ZeroPadding2D((tuple(pads[1].tolist()), tuple(pads[2].tolist())), name=prefix)(x)
        self.emit(op, y, prefix)

    def relu(self, i, op, name, prefix):
        x = self.value(i, op.Inputs(0), name)
        self.emit(op, keras.layers.ReLU(max_value=6.0 if name == "RELU6" else None, name=prefix)(x), prefix)

    def identity(self, i, op, name, prefix):
        t_in, t_out = op.Inputs(0), op.Outputs(0)
        constant = self.constants.get(t_in, self.g.constant(t_in))
        if constant is not None:  # e.g. DEQUANTIZE of float16 weights: the result is a constant too
            self.constants[t_out] = constant
        elif t_in in self.after_softmax:
            self.after_softmax.add(t_out)
            self.values[t_out] = self.values[t_in]
        else:
            self.values[t_out] = self.value(i, t_in, name)

    def softmax(self, i, op, name, prefix):
        x = self.value(i, op.Inputs(0), name)
        opts = self.g.options(op, tflite.SoftmaxOptions)
        beta = opts.Beta() if opts is not None else 1.0
        # The logits are what the softmax normalises: beta * x.
        self.values[op.Outputs(0)] = x if beta == 1.0 else keras.layers.Rescaling(beta, name=prefix)(x)
        self.after_softmax.add(op.Outputs(0))

    # --- helpers of the handlers

    def options_of(self, i, op, name, cls):
        opts = self.g.options(op, cls)
        if opts is None:
            raise self.fail(i, name, "has no options table")
        return opts

    def conv_input(self, i, op, name, prefix, opts) -> tuple[keras.KerasTensor, dict]:
        """The convolution's input and Keras window arguments (strides, padding, dilation_rate)."""
        strides, dilation = (opts.StrideH(), opts.StrideW()), (opts.DilationHFactor(), opts.DilationWFactor())
        padding = _PADDING[opts.Padding()]
        t = op.Inputs(0)
        if t in self.space_to_batch:
            x, block, pads = self.space_to_batch.pop(t)
            if max(strides) > 1 or max(dilation) > 1 or padding != "valid":
                raise self.fail(i, name, "after SPACE_TO_BATCH_ND it must be VALID, stride 1 and undilated")
            if pads.any():
                x = keras.layers.ZeroPadding2D(
                    (tuple(pads[0].tolist()), tuple(pads[1].tolist())), name=f"{prefix}_pad"
                )(x)
            self.dilated[op.Outputs(0)] = block
            return x, dict(strides=1, padding="valid", dilation_rate=block)
        if max(strides) > 1 and max(dilation) > 1:
            raise self.fail(i, name, f"strides {strides} with dilation {dilation} (Keras takes one or the other)")
        return self.value(i, t, name), dict(strides=strides, padding=padding, dilation_rate=dilation)

    def conv_output(self, op, y, prefix: str) -> None:
        """Like emit, but a convolution inside SPACE_TO_BATCH_ND ... BATCH_TO_SPACE_ND hands its output to the crop."""
        t = op.Outputs(0)
        if t in self.dilated:
            self.batch_to_space[t] = (self.rounded(y, t, prefix), self.dilated.pop(t))
        else:
            self.emit(op, y, prefix)

    def emit(self, op, y, prefix: str) -> None:
        t = op.Outputs(0)
        self.values[t] = self.rounded(y, t, prefix)


_ACTIVATIONS = {1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit"}
_HANDLERS = {
    "ADD": _Builder.add,
    "AVERAGE_POOL_2D": _Builder.pool_2d,
    "BATCH_TO_SPACE_ND": _Builder.batch_to_space_nd,
    "CONV_2D": _Builder.conv_2d,
    "DEPTHWISE_CONV_2D": _Builder.depthwise_conv_2d,
    "DEQUANTIZE": _Builder.identity,
    "FULLY_CONNECTED": _Builder.fully_connected,
    "MAX_POOL_2D": _Builder.pool_2d,
    "MEAN": _Builder.mean,
    "PAD": _Builder.pad,
    "QUANTIZE": _Builder.identity,
    "RELU": _Builder.relu,
    "RELU6": _Builder.relu,
    "RESHAPE": _Builder.reshape,
    "SOFTMAX": _Builder.softmax,
    "SPACE_TO_BATCH_ND": _Builder.space_to_batch_nd,
}
SUPPORTED_OPS = tuple(sorted(_HANDLERS))


def import_tflite(path, simulate_rounding: bool = False, batchnorm: bool = False) -> tuple[keras.Model, dict]:
    """A TFLite image classifier as (Keras model returning logits, teacher spec dict).

    The spec has the keys of `teachers.TeacherSpec` (image_size, num_classes, rgb_mean, rgb_std, channel_order,
    classes, arch, source), plus `wnids` when SYNSETS_FILE lies beside the file. `simulate_rounding` rounds every
    8-bit activation to the file's grid (ActivationRounding layers), which brings the float model closer to the
    integer one. `batchnorm` restores what the file folded away: a BatchNormalization after every convolution but the
    classifier, set to the identity (for students; see students.init_identity_batchnorm).
    """
    path = Path(path)
    g = Graph(path)
    try:
        image, logits = _Builder(g, simulate_rounding, batchnorm).build()
    except struct.error as exc:  # the flatbuffer is read lazily: a truncated file fails part way through
        raise damaged(path, exc) from None
    shape = g.shape(g.graph.Inputs(0))
    if shape[1] != shape[2]:
        raise UserError(f"{path}: takes {shape[1]}x{shape[2]} images; a teacher takes square images")
    model = keras.Model(image, logits, name="tflite_" + re.sub(r"\W", "_", path.stem))
    num_classes = int(logits.shape[-1])
    classes, wnids = names_beside(path, num_classes)
    rgb_mean, rgb_std = input_statistics(g)
    spec = dict(
        image_size=int(shape[1]),
        num_classes=num_classes,
        rgb_mean=rgb_mean,
        rgb_std=rgb_std,
        channel_order="RGB",
        classes=classes,
        arch=f"tflite:{path.stem}",
        source=str(path),
    )
    if wnids is not None:
        spec["wnids"] = wnids
    return model, spec
