"""quantise: which tensors get a range, the range estimate against NumPy, FakeQuant against a NumPy rounding
reference and a save/load round trip, and that the int8 converter keeps the pinned ranges."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from isp_keras.data import normalisation
from isp_keras.deploy import runtime, serving, tflite
from isp_keras.errors import UserError
from isp_keras.models import architectures
from isp_keras.training import quantise


def tiny_resnet():
    return architectures.build("resnet_tiny", 4, image_size=8)


def test_quantised_layers_skip_fused_producers():
    model = tiny_resnet()
    names = quantise.quantised_layers(model)
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    # Conv -> BN and BN -> ReLU are fused by TFLite: no int8 tensor of their own; a BN feeding an Add is one.
    assert not [n for n in names if kinds[n] == "Conv2D"]
    assert sorted(n for n in names if kinds[n] == "BatchNormalization") == [
        "stage1_block1_bn2",
        "stage2_block1_bn2",
        "stage2_block1_proj_bn",
    ]
    assert "stem_relu" in names and "pool" in names and "logits" in names
    assert all(kinds[n] in ("ReLU", "GlobalAveragePooling2D", "Dense", "BatchNormalization") for n in names)
    # Every Add of this network feeds a ReLU, so its output is fused too.
    assert not [n for n in names if kinds[n] == "Add"]


def test_fake_quant_matches_numpy_rounding():
    lo, hi = -1.0, 3.0
    x = np.random.default_rng(0).uniform(-2.0, 4.0, 1000).astype(np.float32)  # no exact ties (float32 vs 64)
    got = quantise.FakeQuant(lo, hi)(tf.constant(x)).numpy()
    scale = (hi - lo) / 255.0
    zero = np.round(-lo / scale)  # lo/hi nudged so that 0 is a level, as TFLite does
    levels = (np.clip(np.floor(x / scale + zero + 0.5), 0, 255) - zero) * scale  # ties round up, as TF does
    np.testing.assert_allclose(got, levels, atol=1e-6)
    assert len(np.unique(got)) <= 256


def test_activation_ranges_are_mean_of_batch_extremes():
    model = tiny_resnet()
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(5, 8, 8, 3)).astype(np.float32) for _ in range(3)]
    ranges = quantise.activation_ranges(model, batches)
    assert set(ranges) == {quantise.INPUT, *quantise.quantised_layers(model)}
    np.testing.assert_allclose(
        ranges[quantise.INPUT], [np.mean([b.min() for b in batches]), np.mean([b.max() for b in batches])], rtol=1e-6
    )
    probe = keras.Model(model.inputs, model.get_layer("logits").output)
    outs = [probe(b).numpy() for b in batches]
    expected = [min(np.mean([o.min() for o in outs]), 0.0), max(np.mean([o.max() for o in outs]), 0.0)]
    np.testing.assert_allclose(ranges["logits"], expected, rtol=1e-5)
    assert ranges["stem_relu"][0] == 0.0 and ranges["stem_relu"][1] > 0.0
    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantise.activation_ranges(model, [])


def test_with_ranges_shares_weights_and_round_trips(tmp_path):
    model = tiny_resnet()
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(np.float32)
    ranges = quantise.activation_ranges(model, [x])
    ranged = quantise.with_ranges(model, ranges)
    assert {id(v) for v in model.weights} <= {id(v) for v in ranged.weights}
    fq = [layer for layer in ranged.layers if isinstance(layer, quantise.FakeQuant)]
    assert len(fq) == 1  # the input; the others sit inside the cloned body
    # Rounding to 256 levels moves the logits a little, never a lot.
    diff = np.abs(ranged(x).numpy() - model(x).numpy())
    assert 0 < diff.max() < 0.1 * np.abs(model(x).numpy()).max()
    ranged.save(tmp_path / "ranged.keras")
    loaded = keras.saving.load_model(tmp_path / "ranged.keras")
    np.testing.assert_allclose(loaded(x).numpy(), ranged(x).numpy(), atol=1e-6)


def test_int8_tflite_keeps_the_pinned_ranges():
    model = tiny_resnet()
    norm = normalisation.Normalisation([0.3, 0.4, 0.2], [0.2, 0.25, 0.15], [0.5] * 3, [0.25] * 3)
    student = serving.Student(model, "RGGB", 8, ["a", "b", "c", "d"], norm, path="test")
    mosaics = np.random.default_rng(2).uniform(-0.1, 1.1, (40, 8, 8, 1)).astype(np.float32)
    models, ranges = tflite.int8_tflite(student, mosaics, range_batch=10)
    model_bytes = models["int8"]
    runner = runtime.TFLiteRunner(model_bytes)
    details = runner.interpreter.get_tensor_details()
    assert {np.dtype(d["dtype"]).name for d in details} <= {"int8", "int32"}
    scales = [float(s) for d in details for s in np.atleast_1d(d["quantization_parameters"]["scales"])]
    for name, (lo, hi) in ranges.items():
        expected = (hi - lo) / 255.0
        assert any(abs(s - expected) <= 1e-6 * expected for s in scales), (name, expected)
    with pytest.raises(Exception, match="range batch 0"):
        tflite.int8_tflite(student, mosaics, range_batch=0)


def test_int8_float_head_is_integer_but_the_head():
    model = tiny_resnet()
    norm = normalisation.Normalisation([0.3, 0.4, 0.2], [0.2, 0.25, 0.15], [0.5] * 3, [0.25] * 3)
    student = serving.Student(model, "RGGB", 8, ["a", "b", "c", "d"], norm, path="test")
    mosaics = np.random.default_rng(3).uniform(0.0, 1.0, (40, 8, 8, 1)).astype(np.float32)
    models, ranges = tflite.int8_tflite(student, mosaics, range_batch=10, kinds=("int8", "int8_float_head"))
    runner = runtime.TFLiteRunner(models["int8_float_head"])
    assert runner.input["dtype"] == np.float32 and runner.output["dtype"] == np.float32
    interpreter = runner.interpreter
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    by_op = {}
    for op in interpreter._get_ops_details():
        by_op.setdefault(op["op_name"], set()).update(dtypes[i] for i in op["outputs"])
    assert by_op["FULLY_CONNECTED"] == {"float32"} and by_op["SOFTMAX"] == {"float32"}
    assert by_op["CONV_2D"] == {"int8"}
    scales = [float(s) for t in interpreter.get_tensor_details() for s in t["quantization_parameters"]["scales"]]
    lo, hi = ranges["__input__"]
    assert any(abs(s - (hi - lo) / 255.0) <= 1e-6 * s for s in scales)  # the same pinned ranges as full int8
    head = runner.predict(mosaics)
    full = runtime.TFLiteRunner(models["int8"]).predict(mosaics)
    np.testing.assert_allclose(head.sum(-1), 1.0, atol=1e-5)  # a float softmax, not 256 levels
    assert np.abs(head - full).max() < 0.05  # the same integer body
    with pytest.raises(ValueError, match="unknown integer TFLite kind"):
        tflite.int8_tflite(student, mosaics, kinds=("float32",))
    layers = [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()]
    pooled = keras.Sequential(layers)
    headless = serving.Student(pooled, "RGGB", 8, ["a", "b", "c", "d"], norm, path="pooled")
    with pytest.raises(UserError, match=r"float head: pooled ends in GlobalAveragePooling2D .*not a Dense or Conv2D"):
        tflite.int8_tflite(headless, mosaics, kinds=("int8_float_head",))


def test_fake_quant_weight_is_per_channel_symmetric_int8():
    w = np.random.default_rng(3).normal(size=(3, 3, 2, 5)).astype(np.float32)
    w[..., 4] *= 100.0  # one channel with a large range must not coarsen the others
    got = quantise.fake_quant_weight(tf.constant(w), (3,)).numpy()
    scale = np.abs(w).reshape(-1, 5).max(0) / 127.0
    np.testing.assert_allclose(got, np.clip(np.round(w / scale), -127, 127) * scale, rtol=1e-6, atol=1e-7)
    var = tf.Variable(w)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(quantise.fake_quant_weight(var, (3,)) * 2.0)
    np.testing.assert_allclose(tape.gradient(loss, var).numpy(), np.full_like(w, 2.0))  # straight through


def test_quantisation_aware_view_trains_the_students_own_weights():
    model = tiny_resnet()
    qat = quantise.quantisation_aware(model)
    assert {id(v) for v in qat.trainable_variables} <= {id(v) for v in model.weights}
    assert not [x for x in model.layers if isinstance(x, keras.layers.BatchNormalization) and x.trainable]
    x = np.random.default_rng(4).normal(size=(6, 8, 8, 3)).astype(np.float32)
    qat(x, training=True)  # first batch sets the ranges to its own min/max
    ranges = [x for x in qat.layers if x.name == "input_range"][0]
    np.testing.assert_allclose([float(ranges.lo), float(ranges.hi)], [x.min(), x.max()], rtol=1e-6)
    qat(2.0 * x, training=True)  # then a moving average with momentum 0.99
    np.testing.assert_allclose(float(ranges.hi), 0.99 * x.max() + 0.01 * 2.0 * x.max(), rtol=1e-5)
    # Inference uses the ranges without moving them, and rounds: close to, not equal to, the float model.
    hi = float(ranges.hi)
    out = qat(x).numpy()
    assert float(ranges.hi) == hi
    assert 0 < np.abs(out - model(x).numpy()).max() < 0.2 * np.abs(model(x).numpy()).max() + 1e-3
    # One optimiser step through the view moves the student's kernel.
    before = model.get_layer("stem_conv").kernel.numpy().copy()
    opt = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(qat(x, training=True)))
    opt.apply_gradients(zip(tape.gradient(loss, qat.trainable_variables), qat.trainable_variables))
    assert np.abs(model.get_layer("stem_conv").kernel.numpy() - before).max() > 0


def test_snap_weights_puts_kernels_on_the_grid():
    model = tiny_resnet()
    assert quantise.snap_weights(model) == len([x for x in model.layers if hasattr(x, "kernel")])
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            k = layer.kernel.numpy()
            steps = k / (np.abs(k).reshape(-1, k.shape[-1]).max(0) / 127.0)
            np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


def test_snap_weights_of_named_layers_only():
    model = tiny_resnet()
    kernels = {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}
    assert quantise.snap_weights(model, only={"stem_conv"}) == 1
    for name, before in kernels.items():
        after = model.get_layer(name).kernel.numpy()
        if name == "stem_conv":
            steps = after / (np.abs(after).reshape(-1, after.shape[-1]).max(0) / 127.0)
            np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
            assert np.abs(after - before).max() > 0
        else:
            np.testing.assert_array_equal(after, before)


def test_int8_tflite_of_a_sequential_student_falls_back_to_the_converters_ranges():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ]
    )
    norm = normalisation.Normalisation([0.3, 0.4, 0.2], [0.2, 0.25, 0.15], [0.5] * 3, [0.25] * 3)
    student = serving.Student(model, "RGGB", 8, ["a", "b", "c", "d"], norm, path="seq")
    mosaics = np.random.default_rng(5).uniform(0.0, 1.0, (20, 8, 8, 1)).astype(np.float32)
    models, ranges = tflite.int8_tflite(student, mosaics)
    model_bytes = models["int8"]
    assert ranges == {}
    probs = runtime.TFLiteRunner(model_bytes).predict(mosaics)
    assert probs.shape == (20, 4) and np.all(np.isfinite(probs))
