"""The RAW adapter: the tone curve against NumPy, identity at the start on packed students (stride-1 and stride-2
stems), monotone after training, save/load round trip, the stem's stage for --finetune_first, bad curves."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from isp_keras.models import adapter, architectures, curves, packed, students, teachers
from isp_keras.raw import bayer

MEAN, STD = (0.3, 0.42, 0.25), (0.2, 0.24, 0.18)


def numpy_curve(x, values):
    """np.interp over [0, 1], continued outside by the end segments' slopes."""
    values = np.asarray(values, np.float64)
    k = len(values) - 1
    knots = np.linspace(0.0, 1.0, k + 1)
    y = np.interp(x, knots, values)
    y = np.where(x < 0, values[0] + (values[1] - values[0]) * k * x, y)
    return np.where(x > 1, values[-1] + (values[-1] - values[-2]) * k * (x - 1), y)


def test_tone_curve_against_numpy():
    values = [0.0, 0.3, 0.45, 0.55, 0.62, 0.7, 0.8, 0.8, 1.1]  # a flat segment is monotone too
    x = np.linspace(-0.3, 1.3, 161).astype(np.float32)
    layer = adapter.ToneCurve(values)
    image = np.stack([x, x[::-1]], axis=-1).reshape(1, 7, 23, 2)  # [batch, h, w, channels], as in a student
    np.testing.assert_allclose(layer(image).numpy(), numpy_curve(image, values), atol=1e-6)
    np.testing.assert_allclose(layer.curve(), values, atol=1e-6)
    identity = adapter.ToneCurve()
    assert identity.values == curves.identity_curve() and len(identity.values) == 9
    np.testing.assert_array_equal(identity(image).numpy(), image)


@pytest.mark.parametrize(
    "values, problem",
    [
        ([0.0, 0.5, 0.4, 1.0], "not monotone: value 2 (0.4) is below value 1 (0.5)"),
        ([0.5, 0.5], "flat: the last value must be above the first"),
        ([0.0], "1 value(s); need at least 2 (the curve at 0 and at 1)"),
        ([0.0, float("nan")], "not all finite"),
    ],
)
def test_bad_curves(values, problem):
    assert curves.curve_problem(values) == problem
    with pytest.raises(ValueError, match="tone curve: "):
        adapter.ToneCurve(values)


def packing(kind, size, curve=None):
    return packed.Packing("GRBG", MEAN, STD, "RGB", size, kind, curve)


# A stride-1 stem (depth-to-space after the packed convolution) and a stride-2 one.
@pytest.mark.parametrize("arch, size", [("resnet20", 32), ("mobilenetv2", 32)])
@pytest.mark.parametrize("kind", ["affine", "curve"])
def test_adapter_starts_as_the_packed_student(arch, size, kind):
    teacher = architectures.build(arch, 10, size)
    tiles = np.random.default_rng(1).uniform(-0.1, 1.1, size=(3, size // 2, size // 2, 4)).astype(np.float32)
    plain = students.student_from_teacher(teacher, packing=packing("none", size))
    adapted = students.student_from_teacher(teacher, packing=packing(kind, size))
    assert not adapter.parts(plain)
    assert set(adapter.parts(adapted)) == ({"gain", "mix"} | ({"curve"} if kind == "curve" else set()))
    np.testing.assert_array_equal(adapted(tiles).numpy(), plain(tiles).numpy())
    described = adapter.describe(adapted)
    assert described["gain"] == [1.0] * 4 and described["offset"] == [0.0] * 4
    assert described["mix"] == np.eye(4).tolist()
    # The adapter joins the stem's stage: fine-tuning only the first stage trains it.
    trained = students.set_trainable_prefix(adapted, 1)
    assert {layer.name for layer in adapter.parts(adapted).values()} <= set(trained)


@pytest.mark.parametrize("arch, size", [("resnet20", 32), ("mobilenetv2", 32)])
def test_a_curve_started_student_is_the_teacher_on_the_curved_mosaic(arch, size):
    """With the statistics of curve(mosaic) in its Packing (what training measures), the student starts as the
    teacher on the normalised infill of the curved mosaic: the stem normalises after the curve."""
    keras.utils.set_random_seed(0)
    teacher = architectures.build(arch, 10, size)
    gamma = [(k / 8) ** (1 / 2.2) for k in range(9)]
    student = students.student_from_teacher(teacher, packing=packing("curve", size, tuple(gamma)))
    raw = np.random.default_rng(3).uniform(-0.05, 1.05, size=(2, size, size, 1)).astype(np.float32)
    expected = teacher(bayer.raw_to_input(tf.constant(numpy_curve(raw, gamma), tf.float32), "GRBG", MEAN, STD))
    scale = np.abs(expected.numpy()).max()
    got = student(bayer.pack(tf.constant(raw)), training=False).numpy()
    assert np.abs(got - expected.numpy()).max() <= 1e-4 * scale
    plain = students.student_from_teacher(teacher, packing=packing("curve", size))
    assert np.abs(plain(bayer.pack(tf.constant(raw))).numpy() - expected.numpy()).max() > 0.05 * scale


def test_a_gamma_curve_starts_as_given_and_stays_monotone_in_training():
    teacher = architectures.build("resnet_tiny", 10, 16)
    gamma = [round((k / 8) ** (1 / 2.2), 6) for k in range(9)]
    student = students.student_from_teacher(teacher, packing=packing("curve", 16, tuple(gamma)))
    curve = adapter.parts(student)["curve"]
    np.testing.assert_allclose(curve.curve(), gamma, atol=1e-6)
    tiles = np.random.default_rng(2).uniform(size=(8, 8, 8, 4)).astype(np.float32)
    # Push the curve down hard (it alone trains): plain gradient steps would make its slopes negative, the
    # constraint keeps them >= 0.
    for layer in student.layers:
        layer.trainable = layer is curve
    probe = keras.Model(student.input, keras.ops.mean(curve.output))
    probe.compile(optimizer=keras.optimizers.SGD(5.0), loss=lambda y, p: p)
    probe.fit(tiles, np.zeros(8), epochs=3, verbose=0)
    slopes = np.asarray(curve.slopes)
    assert slopes.min() == 0.0  # the constraint held slopes at 0 that the gradient pushed below
    assert np.all(np.diff(curve.curve()) >= 0)
    ys = curve(np.linspace(-0.2, 1.2, 141, dtype=np.float32).reshape(1, 1, 141, 1)).numpy().reshape(-1)
    assert np.all(np.diff(ys) >= -1e-5)  # float32 rounding of the flat segments at |y| ~ 15


def test_round_trip_and_reclone(tmp_path):
    teacher = architectures.build("mobilenetv2", 10, 32)
    student = students.student_from_teacher(teacher, packing=packing("curve", 32, (0.0, 0.6, 0.8, 1.0)))
    for layer in adapter.parts(student).values():  # non-identity weights, to see them come back
        layer.set_weights([w + 0.05 * np.random.default_rng(3).standard_normal(w.shape) for w in layer.get_weights()])
    tiles = np.random.default_rng(4).uniform(size=(2, 16, 16, 4)).astype(np.float32)
    student.save(tmp_path / "s.keras")
    loaded = teachers.load_model_file(tmp_path / "s.keras")
    np.testing.assert_allclose(loaded(tiles).numpy(), student(tiles).numpy(), atol=1e-6)
    before, after = adapter.describe(student), adapter.describe(loaded)
    assert before.keys() == after.keys() == {"gain", "offset", "mix", "curve"}
    for key in before:
        np.testing.assert_allclose(after[key], before[key], atol=1e-7)
    # An earlier row's student as the start of the next (the QAT row): cloned with its adapter's weights.
    again = students.student_from_teacher(loaded)
    np.testing.assert_allclose(again(tiles).numpy(), student(tiles).numpy(), atol=1e-6)
    assert tf.reduce_all(tf.equal(adapter.parts(again)["curve"].slopes, adapter.parts(student)["curve"].slopes))
