"""Packed-Bayer students: the composed first layer against the infill path, whole students, bad teachers."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from isp_keras.errors import UserError
from isp_keras.models import architectures, border, packed, students, teachers
from isp_keras.raw import bayer

CFAS = ("RGGB", "GRBG", "GBRG", "BGGR")
MEAN, STD = (0.3, 0.42, 0.25), (0.2, 0.24, 0.18)


def infill_input(raw, cfa, order):
    x = bayer.raw_to_input(tf.constant(raw), cfa, MEAN, STD)
    return x[..., ::-1] if order == "BGR" else x


def packed_stem(raw, stem):
    centred = bayer.pack(tf.constant(raw)) - stem.centre
    tiles = tf.pad(centred, [[0, 0], list(stem.pads[0]), list(stem.pads[1]), [0, 0]])
    out = tf.nn.conv2d(tiles, stem.kernel, 1, "VALID") + stem.bias
    out = border.add(centred, out, stem.border_spec, stem.border_weights)
    return tf.nn.depth_to_space(out, 2) if stem.depth_to_space else out


@pytest.mark.parametrize("cfa", CFAS)
@pytest.mark.parametrize("order", ("RGB", "BGR"))
@pytest.mark.parametrize(
    "kernel, stride, padding, kernel_size",
    [(3, 1, "same", 3), (3, 2, "same", 3), (7, 2, "same", 5), (3, 2, "valid", 3), (5, 1, "valid", 5)],
)
def test_composed_first_layer_equals_the_infill_path(cfa, order, kernel, stride, padding, kernel_size):
    """Everywhere, the frame included: the convolution inside, the border term on the outermost outputs."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(kernel, kernel, 3, 6)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    for size in (16, 36):
        stem = packed.compose(weights, bias, stride, padding, packed.Packing(cfa, MEAN, STD, order, size))
        assert stem.kernel.shape[:2] == (kernel_size, kernel_size)
        raw = rng.uniform(size=(2, size, size, 1)).astype(np.float32)
        expected = tf.nn.conv2d(infill_input(raw, cfa, order), weights, stride, padding.upper()) + bias
        got = packed_stem(raw, stem)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), size
        without_border = dataclasses.replace(stem, border_spec=border.no_border(), border_weights={})
        assert np.abs(packed_stem(raw, without_border) - expected).max() > 1e-2 * np.abs(expected).max()


@pytest.mark.parametrize(
    "arch, size, cfa, order",
    [
        ("resnet_tiny", 32, "RGGB", "RGB"),
        ("resnet_tiny", 32, "GBRG", "BGR"),
        ("mobilenetv2", 64, "GRBG", "RGB"),
        ("mobilenetv2", 64, "BGGR", "BGR"),
        ("resnet18", 64, "GBRG", "RGB"),
        ("resnet18", 64, "RGGB", "BGR"),
    ],
)
def test_packed_student_logits_equal_the_infill_students(arch, size, cfa, order):
    keras.utils.set_random_seed(0)
    teacher = architectures.build(arch, 10, size)
    student = students.student_from_teacher(teacher, packing=packed.Packing(cfa, MEAN, STD, order, size))
    assert student.input_shape == (None, size // 2, size // 2, 4) and student.trainable_variables
    raw = np.random.default_rng(1).uniform(size=(2, size, size, 1)).astype(np.float32)
    expected = teacher(infill_input(raw, cfa, order), training=False).numpy()
    got = student(bayer.pack(tf.constant(raw)), training=False).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_packed_student_agrees_with_the_infill_student_on_real_images():
    """The embedded ResNet-20 teacher at 32 px, 256 noisy CIFAR-10 test mosaics per CFA."""
    from isp_keras.data import pipeline, sources

    teacher, spec = teachers.load_teacher("embedded")
    source = sources.get_source("embedded")
    agreement = {}
    for cfa in CFAS:
        cfg = pipeline.PipelineConfig(image_size=32, batch_size=256, cfa=cfa, noise_std=0.1, take=256, cache=False)
        raw, _, _ = next(iter(pipeline.build(source, source.test_split, cfg, training=False, norm=None, mode="mosaic")))
        mean, std = bayer.moments_to_stats(bayer.site_moments(raw, cfa))
        packing = packed.Packing(cfa, tuple(mean), tuple(std), "RGB", 32)
        student = students.student_from_teacher(teacher, packing=packing)
        infill = teacher(bayer.raw_to_input(raw, cfa, mean, std), training=False)
        tiles = student(bayer.pack(raw), training=False)
        agreement[cfa] = float(np.mean(np.argmax(infill, -1) == np.argmax(tiles, -1)))
    assert min(agreement.values()) >= 0.995, agreement


def test_packed_student_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    teacher = architectures.build("resnet_tiny", 4, 8)
    student = students.student_from_teacher(teacher, packing=packed.Packing("GRBG", MEAN, STD, "RGB", 8))
    student.save(tmp_path / "student.keras")
    loaded = teachers.load_model_file(tmp_path / "student.keras")
    tiles = np.random.default_rng(0).uniform(size=(2, 4, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded(tiles).numpy(), student(tiles).numpy(), atol=1e-6)
    assert [layer.name for layer in loaded.layers[:4]] == [
        "image",
        "stem_conv_centre",
        "stem_conv",
        "stem_conv_depth_to_space",
    ]


def test_bad_teachers_and_sizes():
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(2.0, name="scale")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    packing = packed.Packing("RGGB", MEAN, STD, "RGB", 8)
    with pytest.raises(UserError, match=r"^--student_input=packed: the teacher's first layer is 'scale' \(Rescaling\)"):
        students.student_from_teacher(model, packing=packing)
    weights = np.zeros((3, 3, 3, 4), np.float32)
    with pytest.raises(UserError, match="^--student_input=packed: image size 33 is odd; packing needs even sides$"):
        packed.compose(weights, None, 2, "same", packed.Packing("RGGB", MEAN, STD, "RGB", 33))
    with pytest.raises(UserError, match="^--student_input=packed: the teacher's first convolution has stride 4"):
        packed.compose(weights, None, 4, "same", packing)


@pytest.mark.parametrize("stride, own_activation", [(2, False), (2, True), (1, True)])
def test_packed_layer_takes_over_the_stems_rectifier(stride, own_activation):
    """A BN-free stem (the imported TFLite teachers): the packed layer applies the ReLU6 itself, after the border
    term, frame included (its own activation, or a ReLU layer that alone follows it at stride 2, which then leaves
    the graph); logits still equal the infill path's."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(6, 3, strides=stride, padding="same", activation="relu6" if own_activation else None)(
        inputs
    )
    if not own_activation:
        x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    teacher = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x)))
    keras.utils.set_random_seed(0)
    for layer in teacher.layers:
        if layer.weights:
            layer.set_weights(
                [np.random.default_rng(2).normal(size=w.shape).astype(np.float32) for w in layer.get_weights()]
            )
    student = students.student_from_teacher(teacher, packing=packed.Packing("GBRG", MEAN, STD, "RGB", 16))
    stem = next(layer for layer in student.layers if isinstance(layer, border.FramedConv2D))
    assert stem.get_config()["activation"] == "relu6"
    assert ("stem_relu" in [layer.name for layer in student.layers]) == (stride == 1 and not own_activation)
    raw = np.random.default_rng(1).uniform(size=(2, 16, 16, 1)).astype(np.float32)
    expected = teacher(infill_input(raw, "GBRG", "RGB"), training=False).numpy()
    got = student(bayer.pack(tf.constant(raw)), training=False).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
