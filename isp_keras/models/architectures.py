"""Model builders: the ResNet and MobileNetV2 families at 224 and 32 px.

Every network here takes a normalised image and returns logits (no softmax). Input normalisation lives in
the data pipeline (teacher: per-channel RGB statistics; student: per-Bayer-site RAW statistics) and, at
export time, inside the serving graph.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from isp_keras.errors import UserError

WEIGHT_DECAY = 5e-4


def _conv(filters, kernel, strides=1, name=None):
    return layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal", name=name
    )


def _bn(name=None):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _basic_block(x, filters, strides, name):
    shortcut = x
    y = _conv(filters, 3, strides, name=f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(filters, 3, 1, name=f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, name=f"{name}_proj")(x)
        shortcut = _bn(f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet(input_shape, num_classes, blocks, widths, imagenet_stem, name):
    """ResNet with basic blocks. `imagenet_stem`: 7x7/2 conv + 3x3/2 max-pool; else a 3x3/1 conv (32-px images)."""
    inputs = keras.Input(input_shape, name="image")
    if imagenet_stem:
        x = _conv(widths[0], 7, 2, name="stem_conv")(inputs)
        x = _bn("stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        x = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    else:
        x = _conv(widths[0], 3, 1, name="stem_conv")(inputs)
        x = _bn("stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
    for stage, (count, filters) in enumerate(zip(blocks, widths)):
        for block in range(count):
            strides = 2 if (stage > 0 and block == 0) else 1
            x = _basic_block(x, filters, strides, name=f"stage{stage + 1}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _inverted_residual(x, expansion, filters, strides, name):
    in_ch = x.shape[-1]
    y = x
    if expansion != 1:
        y = layers.Conv2D(in_ch * expansion, 1, use_bias=False, name=f"{name}_expand")(y)
        y = _bn(f"{name}_expand_bn")(y)
        y = layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = _bn(f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    y = _bn(f"{name}_project_bn")(y)
    if strides == 1 and in_ch == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def _make_divisible(v, divisor=8):
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


# (expansion, channels, repeats, stride) of MobileNetV2 (Sandler et al., 2018).
_MBV2_CONFIG = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def mobilenet_v2(input_shape, num_classes, width=1.0, small_input=False, name="mobilenetv2"):
    """MobileNetV2. `small_input` (32 px): stem stride 1 and the second stage at stride 1 (total stride 8)."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(
        _make_divisible(32 * width),
        3,
        strides=1 if small_input else 2,
        padding="same",
        use_bias=False,
        name="stem_conv",
    )(inputs)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    block = 0
    for stage, (t, c, n, s) in enumerate(_MBV2_CONFIG):
        if small_input and stage == 1:
            s = 1
        for i in range(n):
            block += 1
            x = _inverted_residual(x, t, _make_divisible(c * width), s if i == 0 else 1, name=f"block{block}")
    x = layers.Conv2D(
        max(1280, _make_divisible(1280 * width)) if width > 1 else 1280, 1, use_bias=False, name="head_conv"
    )(x)
    x = _bn("head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# Architectures this project builds (for training teachers, and for tests). Image size is the native one.
ARCHITECTURES = {
    "resnet18": dict(size=224, build=lambda s, k: resnet(s, k, [2, 2, 2, 2], [64, 128, 256, 512], True, "resnet18")),
    "mobilenetv2": dict(size=224, build=lambda s, k: mobilenet_v2(s, k, name="mobilenetv2")),
    "resnet18_32": dict(
        size=32, build=lambda s, k: resnet(s, k, [2, 2, 2, 2], [64, 128, 256, 512], False, "resnet18_32")
    ),
    "resnet20": dict(size=32, build=lambda s, k: resnet(s, k, [3, 3, 3], [16, 32, 64], False, "resnet20")),
    "mobilenetv2_32": dict(size=32, build=lambda s, k: mobilenet_v2(s, k, 0.5, True, "mobilenetv2_32")),
    "resnet_tiny": dict(size=32, build=lambda s, k: resnet(s, k, [1, 1], [8, 16], False, "resnet_tiny")),
}


def build(arch: str, num_classes: int, image_size: int | None = None) -> keras.Model:
    if arch not in ARCHITECTURES:
        raise UserError(f"--arch: unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[arch]
    size = image_size or spec["size"]
    return spec["build"]((size, size, 3), num_classes)


def param_count(model: keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.weights))
