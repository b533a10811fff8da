"""Packed-Bayer students: the infill, the per-site normalisation and the teacher's first convolution composed into
one first layer over the packed mosaic (2x2 tiles, [H/2, W/2, 4]).

normalise(bilinear_infill(mosaic)) is an affine map of the mosaic and the teacher's stem a linear one, so inside
the image their composition is one convolution over the tiles: stride 1 for a stride-2 stem, and for a stride-1
stem one convolution per output phase (4x the channels) followed by depth-to-space. On the one-pixel frame the
infill renormalises over the samples that exist and the teacher's convolution zero-pads the normalised image,
which no padding of the tiles reproduces; a border term over the outermost tiles (models/border.py) makes the
packed layer exact there too (docs/models/packed-students.md).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from isp_keras.errors import UserError
from isp_keras.models import adapter, border
from isp_keras.raw import bayer

FLAG = "--student_input=packed"


@dataclasses.dataclass(frozen=True)
class Packing:
    """What the packed first layer folds in: the run's CFA, its per-site statistics (R, G, B) and the channel
    order the teacher reads (BGR: the infilled image's channels reversed), at the run's image size; and the
    learnable RAW adapter in front of it (models.adapter: none, affine or curve, and the curve's initial values,
    None for the identity)."""

    cfa: str
    raw_mean: tuple
    raw_std: tuple
    channel_order: str
    image_size: int
    raw_adapter: str = "none"
    adapter_curve: tuple | None = None


@dataclasses.dataclass
class PackedConv:
    """The composed first layer: the per-site means `centre` [4] subtracted from the tiles, their zero padding
    ((top, bottom), (left, right)) before a VALID convolution of kernel [K_h, K_w, 4, P*C] and bias [P*C], the
    border term added to its output (`border_spec` and `border_weights`, models/border.py), and whether
    depth_to_space(2) follows (P = 4 output phases for a stride-1 stem, else P = 1).

    Centring first makes the padded samples the site means, which the normalisation maps to 0: the value the
    teacher's convolution pads the normalised image with. (Padding the raw tiles with 0 instead would show the
    stem a dark frame: at 32 px it changes the initial ResNet-20's top-1 on about twice as many images.)"""

    centre: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    pads: tuple
    depth_to_space: bool
    border_spec: dict
    border_weights: dict


@keras.saving.register_keras_serializable(package="isp_keras")
class DepthToSpace(layers.Layer):
    """tf.nn.depth_to_space: the stride-1 packed stem's four output phases back to full resolution."""

    def __init__(self, block_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, x):
        return tf.nn.depth_to_space(x, self.block_size)

    def compute_output_shape(self, shape):
        b = self.block_size
        h, w = (None if s is None else s * b for s in shape[1:3])
        return (shape[0], h, w, shape[3] // (b * b))

    def get_config(self) -> dict:
        return {**super().get_config(), "block_size": self.block_size}


# What loading a packed student needs besides Keras' own layers.
CUSTOM_OBJECTS = {
    keras.saving.get_registered_name(cls): cls for cls in (DepthToSpace, adapter.ToneCurve, border.FramedConv2D)
}


def _teacher_padding(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(pad before, outputs) of the teacher's convolution along one axis, as TensorFlow computes them: SAME pads
    max((out - 1) * stride + kernel - size, 0) in total, the smaller half first (none before for 3x3/2 on an even
    size)."""
    if padding == "valid":
        return 0, (size - kernel) // stride + 1
    out = math.ceil(size / stride)
    return max((out - 1) * stride + kernel - size, 0) // 2, out


def compose(kernel, bias, stride: int, padding: str, packing: Packing) -> PackedConv:
    """The first layer over the tiles equal to conv(normalise(infill(mosaic))): a convolution exact inside the
    image, plus the border term exact on the frame (`_border`).

    `kernel` [k_h, k_w, 3, C] and `bias` [C] (None: no bias) of the teacher's first convolution, `stride` 1 or 2,
    `padding` "same" or "valid". Colour c of the teacher's input at pixel p is (sum_q k_c[q - p] x[q] m_c[q] - mean_c)
    / std_c over the mosaic samples x[q] of colour c around p; so a mosaic sample x[q] of colour c reaches output o
    through every tap d whose infill window covers q, with weight W[d, c, o] * k_c[q - p(d)] / std_c, and each
    q lands at one tile offset and tile channel given by its position. The means are subtracted from the tiles
    (each colour's infill weights sum to 1 inside the image, so mean_c comes out of the infill unchanged).
    """
    teacher_kernel = kernel = np.asarray(kernel, np.float64)
    kh, kw, cin, cout = kernel.shape
    if cin != 3:
        raise UserError(f"{FLAG}: the teacher's first convolution takes {cin} channels, not 3 (RGB)")
    if stride not in (1, 2):
        raise UserError(f"{FLAG}: the teacher's first convolution has stride {stride}; packing handles 1 and 2")
    if padding not in ("same", "valid"):
        raise UserError(f"{FLAG}: the teacher's first convolution has padding {padding!r}; expected same or valid")
    size = packing.image_size
    if size % 2:
        raise UserError(f"{FLAG}: image size {size} is odd; packing needs even sides")
    if packing.channel_order == "BGR":
        kernel = kernel[:, :, ::-1, :]  # index the input channels by colour R, G, B
    scale = 1.0 / np.asarray(packing.raw_std, np.float64)
    mean = np.asarray(packing.raw_mean, np.float64)
    site, infill = bayer.site_index(packing.cfa), bayer.infill_kernel().astype(np.float64)
    (pad_y, out_h), (pad_x, out_w) = (_teacher_padding(size, k, stride, padding) for k in (kh, kw))
    phases = [(a, b) for a in range(2) for b in range(2)] if stride == 1 else [(0, 0)]
    if stride == 1 and (out_h % 2 or out_w % 2):
        raise UserError(f"{FLAG}: the stem's {out_h}x{out_w} output has odd sides; depth-to-space needs even ones")
    taps: dict = {}  # (tile row offset, tile column offset, tile channel, phase) -> weights [C]
    for phase, (a, b) in enumerate(phases):
        # Output (phase a, b) of tile Y sits at full-resolution row 2Y + a (stride 1) or 2Y (stride 2), so tap dy
        # reads row 2Y + base_y + dy and its infill reaches 2Y + base_y + dy + u.
        base_y, base_x = (a - pad_y, b - pad_x) if stride == 1 else (-pad_y, -pad_x)
        for dy in range(kh):
            for dx in range(kw):
                for u in (-1, 0, 1):
                    for v in (-1, 0, 1):
                        ty, i = divmod(base_y + dy + u, 2)
                        tx, j = divmod(base_x + dx + v, 2)
                        c = site[i, j]
                        key = (ty, tx, i * 2 + j, phase)
                        taps[key] = taps.get(key, 0.0) + kernel[dy, dx, c] * infill[u + 1, v + 1, c] * scale[c]
    per_phase = 2 if stride == 1 else 1
    spans = []
    for axis, outs in ((0, out_h // per_phase), (1, out_w // per_phase)):
        # The window of tile offsets, widened with zero taps until a VALID convolution over the padded tiles gives
        # exactly `outs` outputs (padding is only ever added, never cropped).
        lo = min(min(key[axis] for key in taps), 0)
        hi = max(max(key[axis] for key in taps), size // 2 - outs)
        spans.append((lo, hi, (-lo, outs - 1 + hi - (size // 2 - 1))))
    (lo_y, hi_y, pad_rows), (lo_x, hi_x, pad_cols) = spans
    packed = np.zeros((hi_y - lo_y + 1, hi_x - lo_x + 1, 4, len(phases) * cout))
    for (ty, tx, channel, phase), weights in taps.items():
        packed[ty - lo_y, tx - lo_x, channel, phase * cout : (phase + 1) * cout] += weights
    bias = np.zeros(cout) if bias is None else np.asarray(bias, np.float64)
    stem = PackedConv(
        mean[site.reshape(-1)].astype(np.float32),
        packed.astype(np.float32),
        np.tile(bias, len(phases)).astype(np.float32),
        (pad_rows, pad_cols),
        stride == 1,
        {},
        {},
    )
    stem.border_spec, stem.border_weights = _border(teacher_kernel, stride, padding, packing, stem)
    return stem


def _border(kernel: np.ndarray, stride: int, padding: str, packing: Packing, stem: PackedConv) -> tuple[dict, dict]:
    """The border term (models/border.py) from unit impulses on the centred tiles of a probe image, pushed through
    the exact path (the infill students' bayer.raw_to_input and the teacher's convolution) and the packed one, in
    float64."""
    size = min(packing.image_size, border.PROBE_SIZE)
    half = size // 2
    count = half * half * 4
    impulses = np.eye(count).reshape(count, half, half, 4)
    raw = tf.nn.depth_to_space(tf.constant(impulses + stem.centre.astype(np.float64)), 2)
    image = bayer.raw_to_input(raw, packing.cfa, packing.raw_mean, packing.raw_std)
    if packing.channel_order == "BGR":
        image = image[..., ::-1]
    exact = tf.nn.conv2d(image, tf.constant(kernel), stride, padding.upper())
    if stem.depth_to_space:
        exact = tf.nn.space_to_depth(exact, 2)
    tiles = tf.pad(tf.constant(impulses), [[0, 0], list(stem.pads[0]), list(stem.pads[1]), [0, 0]])
    packed = tf.nn.conv2d(tiles, tf.constant(stem.kernel, tf.float64), 1, "VALID")
    difference = (exact - packed).numpy()
    try:
        return border.geometry(difference.reshape(half, half, 4, *difference.shape[1:]))
    except ValueError as e:
        raise UserError(f"{FLAG}: image size {packing.image_size}: {e}") from None


def _consumers(model: keras.Model, tensor) -> list[layers.Layer]:
    """The model's layers that take `tensor` as (one of) their inputs."""
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, layers.InputLayer) and any(t is tensor for t in keras.tree.flatten(layer.input))
    ]


def first_conv(model: keras.Model) -> layers.Conv2D:
    """The Conv2D the model's image input feeds, or a one-line UserError naming what it found instead."""
    if len(model.inputs) != 1:
        raise UserError(f"{FLAG}: the teacher has {len(model.inputs)} inputs; packing needs one image input")
    consumers = _consumers(model, model.inputs[0])
    if len(consumers) != 1:
        raise UserError(
            f"{FLAG}: the teacher's input feeds {len(consumers)} layers "
            f"({', '.join(layer.name for layer in consumers) or 'none'}); packing needs one first convolution"
        )
    layer = consumers[0]
    if type(layer) is not layers.Conv2D:
        raise UserError(
            f"{FLAG}: the teacher's first layer is {layer.name!r} ({type(layer).__name__}), not a Conv2D; "
            "packing folds the infill into a first convolution"
        )
    config = layer.get_config()
    if tuple(config["dilation_rate"]) != (1, 1) or config["groups"] != 1 or config["data_format"] != "channels_last":
        raise UserError(
            f"{FLAG}: the teacher's first convolution {layer.name!r} is dilated, grouped or channels-first; "
            "packing handles a plain channels-last Conv2D"
        )
    strides = tuple(config["strides"])
    if strides[0] != strides[1]:
        raise UserError(f"{FLAG}: the teacher's first convolution {layer.name!r} has strides {strides}")
    return layer


def packed_conv(model: keras.Model, packing: Packing) -> tuple[layers.Conv2D, PackedConv]:
    """The model's first convolution and the packed layer composed from it."""
    conv = first_conv(model)
    weights = conv.get_weights()
    config = conv.get_config()
    stem = compose(
        weights[0], weights[1] if config["use_bias"] else None, config["strides"][0], config["padding"], packing
    )
    return conv, stem


def _rectifier(layer) -> str | None:
    """ "relu" or "relu6" when `layer` is exactly that activation, else None."""
    if isinstance(layer, layers.ReLU):
        config = layer.get_config()
        if config["negative_slope"] == 0 and config["threshold"] == 0 and config["max_value"] in (None, 6.0):
            return "relu" if config["max_value"] is None else "relu6"
    if isinstance(layer, layers.Activation) and layer.get_config()["activation"] in ("relu", "relu6"):
        return layer.get_config()["activation"]
    return None


def _fused_activation(model: keras.Model, conv: layers.Conv2D, stem: PackedConv) -> tuple[str, layers.Layer | None]:
    """The activation the packed layer applies itself, and the teacher's layer that it replaces (None: none).

    The convolution's own activation, if it has one; else, for a stride-2 stem (no depth-to-space), a ReLU or
    ReLU6 layer that alone takes the convolution's output: applying it inside the layer, frame included, is what
    lets TFLite fuse it into the convolution (border.FramedConv2D)."""
    activation = conv.get_config()["activation"]
    if activation != "linear" or stem.depth_to_space or not stem.border_weights:
        return activation, None
    consumers = _consumers(model, conv.output)
    rectifier = _rectifier(consumers[0]) if len(consumers) == 1 else None
    return (rectifier, consumers[0]) if rectifier else (activation, None)


def pack_model(model: keras.Model, packing: Packing, clone_layer) -> keras.Model:
    """`model` with its first convolution replaced by the packed one: input [H/2, W/2, 4] (the mosaic's tiles),
    then [the RAW adapter, identity at the start +] Rescaling (centring) + the convolution with its border term
    and, when it can take it over, the activation after it (border.FramedConv2D) [+ DepthToSpace] and the rest of
    the graph, every other layer made by `clone_layer` with `model`'s weights. A functional rebuild through
    keras.models.clone_model; the layer names stay."""
    conv, stem = packed_conv(model, packing)
    activation, absorbed = _fused_activation(model, conv, stem)
    config = conv.get_config()
    config.update(
        filters=int(stem.kernel.shape[-1]),
        kernel_size=tuple(int(k) for k in stem.kernel.shape[:2]),
        strides=(1, 1),
        padding="valid",
        use_bias=True,
        activation=activation,
        trainable=True,
    )
    replacement = border.FramedConv2D.from_config({**config, "border": stem.border_spec, "pads": stem.pads})

    def clone(layer):
        return replacement if layer is conv else clone_layer(layer)

    def call(layer, *args, **kwargs):
        if absorbed is not None and layer.name == absorbed.name:
            return args[0]  # the packed layer applied it
        if layer is not replacement:
            return layer(*args, **kwargs)
        x = adapter.apply(args[0], packing.raw_adapter, packing.adapter_curve, prefix=layer.name)
        x = layers.Rescaling(1.0, offset=(-stem.centre).tolist(), name=f"{layer.name}_centre")(x)
        x = layer(x)
        return DepthToSpace(2, name=f"{layer.name}_depth_to_space")(x) if stem.depth_to_space else x

    half = packing.image_size // 2
    inputs = keras.Input((half, half, 4), name=model.inputs[0].name or "image")
    student = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone, call_function=call)
    for layer in student.layers:
        if layer is replacement:
            border_weights = [stem.border_weights[name] for name in border.weight_names(stem.border_spec)]
            layer.set_weights([stem.kernel, stem.bias, *border_weights])
        elif layer.weights and not adapter.parts_of(layer):
            layer.set_weights(model.get_layer(layer.name).get_weights())
    adapter.init_identity(student)
    return student
