"""TFLite import: tiny Keras CNNs converted to float32 / int8 / uint8 TFLite, imported back and run against LiteRT."""

from __future__ import annotations

import tarfile
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from isp_keras.deploy import runtime
from isp_keras.errors import UserError
from isp_keras.models import students, teachers, tflite_reader
from isp_keras.models import tflite_import as ti

SHARED = Path(__file__).resolve().parents[3] / "shared"  # ../shared beside the repository; absent in a fresh clone
SIZE, CLASSES = 16, 5


def _net_a() -> keras.Model:
    """Stride-2 SAME conv + ReLU6, depthwise (multiplier 2) + ReLU, 1x1 conv, residual add, average pool, dilated
    conv, global mean, dense, softmax; one output channel of the first conv is 100x smaller (per-channel scales).
    Its batch is left open, so the converter spells the dilated conv SPACE_TO_BATCH_ND -> CONV_2D -> BATCH_TO_SPACE_ND
    and the ReLU6 after it as its own op."""
    keras.utils.set_random_seed(0)
    x = keras.Input((SIZE, SIZE, 3))
    first = layers.Conv2D(8, 3, strides=2, padding="same")
    a = layers.ReLU(max_value=6.0)(first(x))
    b = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu")(a)
    b = layers.Conv2D(8, 1)(b)
    c = layers.Add()([a, b])
    c = layers.AveragePooling2D(2, strides=1, padding="same")(c)
    c = layers.Conv2D(12, 3, dilation_rate=2, padding="same", activation="relu6")(c)
    c = layers.GlobalAveragePooling2D()(c)
    classifier = layers.Dense(CLASSES)
    logits = classifier(c)
    kernel, bias = first.get_weights()
    kernel[..., 0] *= 0.01
    first.set_weights([kernel, bias])
    return _spread_classes(keras.Model(x, layers.Softmax()(logits)), classifier)


def _net_b() -> keras.Model:
    """MobileNetV1's head: conv, stride-2 VALID depthwise, dilated depthwise, pad, max pool, full-window average
    pool, 1x1 conv classifier, reshape, softmax. A static batch of 1 (like the ImageNet files) gives a constant
    reshape and dilation factors fused into DEPTHWISE_CONV_2D."""
    keras.utils.set_random_seed(1)
    x = keras.Input((SIZE, SIZE, 3), batch_size=1)
    a = layers.Conv2D(8, 3, padding="same", activation="relu6")(x)
    a = layers.DepthwiseConv2D(3, strides=2, padding="valid")(a)
    a = layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, activation="relu")(a)
    a = layers.ZeroPadding2D(((1, 0), (1, 0)))(a)
    a = layers.ReLU()(layers.MaxPooling2D(2)(a))
    a = layers.AveragePooling2D(4)(a)
    classifier = layers.Conv2D(CLASSES, 1)
    logits = layers.Reshape((CLASSES,))(classifier(a))
    return _spread_classes(keras.Model(x, layers.Softmax()(logits)), classifier)


def _spread_classes(model: keras.Model, classifier: layers.Layer) -> keras.Model:
    """Set the classifier to random directions of the standardised features, so that the top-1 class varies from
    image to image (with random weights one class wins everywhere and agreement would be trivial)."""
    features = np.asarray(keras.Model(model.input, classifier.input)(_images(64, seed=9)))
    features = features.reshape(-1, features.shape[-1])
    # The floor keeps near-constant features (whose tiny variation is mostly rounding noise) from being amplified.
    mean, std = features.mean(axis=0), features.std(axis=0) + 0.5 * features.std(axis=0).mean() + 1e-6
    kernel = np.random.default_rng(7).normal(size=(features.shape[-1], CLASSES)) * 3 / std[:, None]
    kernel /= np.sqrt(features.shape[-1])
    shape = classifier.kernel.shape
    classifier.set_weights([kernel.reshape(shape).astype(np.float32), (-mean @ kernel).astype(np.float32)])
    return model


def _convert(model: keras.Model, kind: str) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind != "float32":  # full integer, calibrated on [0, 1] images; int8 or uint8 input/output
        calibration = np.random.default_rng(0).uniform(size=(32, SIZE, SIZE, 3)).astype(np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, kind)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")  # int8 I/O needs none
        return converter.convert()


def _tf1_uint8(path: Path) -> dict:
    """A TF1-style quantisation-aware file like the MobileNetV1 ones: uint8 everywhere, per-tensor uint8 weights
    with zero points, int32 biases. Returns the fake-quantised float weights the file stores as uint8."""
    tf1 = tf.compat.v1
    rng = np.random.default_rng(2)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [1, SIZE, SIZE, 3], name="input")
        h = tf1.quantization.fake_quant_with_min_max_args(x, min=-1.0, max=1.0)

        def weights(shape, scale):
            w = tf.constant(rng.normal(size=shape).astype(np.float32) * scale)
            return tf1.quantization.fake_quant_with_min_max_vars(w, tf.reduce_min(w), tf.reduce_max(w))

        conv, depthwise, classifier = weights((3, 3, 3, 8), 0.3), weights((3, 3, 8, 1), 0.3), weights((1, 1, 8, 5), 1)
        dilated = weights((3, 3, 8, 8), 0.2)
        bias = rng.normal(size=8).astype(np.float32) * 0.1
        h = tf.nn.relu6(tf.nn.conv2d(h, conv, strides=2, padding="SAME") + bias)
        h = tf1.quantization.fake_quant_with_min_max_args(h, min=0.0, max=6.0)
        h = tf.nn.relu6(tf.nn.depthwise_conv2d(h, depthwise, [1, 1, 1, 1], "SAME"))
        h = tf1.quantization.fake_quant_with_min_max_args(h, min=0.0, max=6.0)
        h = tf.nn.relu6(tf.nn.conv2d(h, dilated, strides=1, padding="SAME", dilations=2))  # fused dilation factors
        h = tf1.quantization.fake_quant_with_min_max_args(h, min=0.0, max=6.0)
        h = tf1.quantization.fake_quant_with_min_max_args(tf.nn.avg_pool2d(h, 8, 8, "VALID"), min=0.0, max=6.0)
        h = tf1.quantization.fake_quant_with_min_max_args(tf.nn.conv2d(h, classifier, 1, "VALID"), min=-8.0, max=8.0)
        out = tf.nn.softmax(tf.reshape(h, [1, CLASSES]))
        out = tf1.quantization.fake_quant_with_min_max_args(out, min=0.0, max=1.0)
        with tf1.Session(graph=graph) as sess:
            converter = tf1.lite.TFLiteConverter.from_session(sess, [x], [out])
            converter.inference_type = tf.uint8
            converter.quantized_input_stats = {"input": (128.0, 127.5)}  # uint8 pixel -> [-1, 1], as in MobileNets
            path.write_bytes(converter.convert())
            conv_w, depthwise_w, dilated_w, classifier_w = sess.run([conv, depthwise, dilated, classifier])
    return {"conv": conv_w, "depthwise": depthwise_w, "dilated": dilated_w, "classifier": classifier_w, "bias": bias}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite")
    nets = {"a": _net_a(), "b": _net_b()}
    out = {"nets": nets, "tf1_uint8": root / "tf1_uint8.tflite"}
    for name, net in nets.items():
        for kind in ("float32", "int8", "uint8"):
            out[name, kind] = root / f"net_{name}_{kind}.tflite"
            out[name, kind].write_bytes(_convert(net, kind))
    out["tf1_weights"] = _tf1_uint8(out["tf1_uint8"])
    return out


def _ops(path: Path) -> set[str]:
    g = tflite_reader.Graph(path)
    return {g.op_name(g.op(i)) for i in range(g.num_ops)}


def _litert(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dequantised input LiteRT saw, dequantised output) for float images x in the file's input range."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
    seen, outputs = [], []
    for image in x:
        if in_scale:
            info = np.iinfo(inp["dtype"])
            image = np.clip(np.round(image / in_scale) + in_zero, info.min, info.max).astype(inp["dtype"])
            seen.append((image.astype(np.float32) - in_zero) * in_scale)
        else:
            seen.append(image)
        interpreter.set_tensor(inp["index"], image[np.newaxis])
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        outputs.append((y.astype(np.float32) - out_zero) * out_scale if out_scale else y)
    return np.stack(seen).astype(np.float32), np.stack(outputs)


def _images(n: int, seed: int = 3) -> np.ndarray:
    """[0, 1] images that differ in colour and brightness gradient (so the tiny nets' classes vary), plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-0.5, 0.5, SIZE, dtype=np.float32)[None, :, None, None]
    images = rng.uniform(0.2, 0.8, size=(n, 1, 1, 3)) + rng.uniform(-0.4, 0.4, size=(n, 1, 1, 3)) * ramp
    return np.clip(images + rng.normal(0, 0.1, size=(n, SIZE, SIZE, 3)), 0, 1).astype(np.float32)


def test_every_op_of_the_tiny_nets_is_covered(files):
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "AVERAGE_POOL_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"} <= _ops(
        files["a", "float32"]
    )
    assert {"PAD", "MAX_POOL_2D", "RESHAPE"} <= _ops(files["b", "float32"])
    assert {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND", "RELU6"} <= _ops(files["a", "float32"])  # dilated conv
    assert "QUANTIZE" in _ops(files["a", "uint8"]) and "QUANTIZE" in _ops(files["tf1_uint8"])


@pytest.mark.parametrize("name", ["a", "b"])
def test_float32_import_matches_litert_and_the_original_logits(files, name):
    model, spec = ti.import_tflite(files[name, "float32"])
    x = _images(16)
    _, litert_probs = _litert(files[name, "float32"], x)
    logits = np.asarray(model(x))
    np.testing.assert_allclose(keras.ops.softmax(logits), litert_probs, atol=1e-5)
    net = files["nets"][name]
    original = keras.Model(net.input, net.layers[-2].output)(x)  # the softmax's input
    np.testing.assert_allclose(logits, original, rtol=1e-4, atol=1e-5)
    assert spec["rgb_mean"] == [0.0] * 3 and spec["rgb_std"] == [1.0] * 3  # a float file states no normalisation
    assert spec["image_size"] == SIZE and spec["num_classes"] == CLASSES and spec["channel_order"] == "RGB"
    assert spec["classes"] == [str(k) for k in range(CLASSES)] and "wnids" not in spec


@pytest.mark.parametrize("name", ["a", "b"])
@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_integer_import_agrees_with_litert(files, name, kind):
    # The weights are exact (dequantised from the file); what differs is LiteRT rounding every activation to 8 bits.
    # Its quantised logits often tie two classes (its argmax takes the lower index), so plain agreement counts a
    # Keras class that LiteRT scores equal to its top-1 as agreeing. Measured on these 256 images (net a / b):
    # plain 96.9 / 96.9 % (95.3 / 72.3 % strict), simulate_rounding 97.7 / 98.0 % strict with max |dp| 0.04 /
    # 0.11. (Checked: ignoring zero points or per-channel scales, a wrong bias scale, depthwise channel order or
    # SAME/VALID mapping each make tests in this file fail.)
    path = files[name, kind]
    seen, litert_probs = _litert(path, _images(256))
    litert_top1 = litert_probs.argmax(-1)
    assert len(np.unique(litert_top1)) >= 4  # the classes vary, so agreement is not trivial
    plain, _ = ti.import_tflite(path)
    top1 = np.asarray(plain(seen)).argmax(-1)
    assert np.mean(litert_probs[np.arange(len(top1)), top1] == litert_probs.max(-1)) >= 0.93
    rounded, _ = ti.import_tflite(path, simulate_rounding=True)
    probs = np.asarray(keras.ops.softmax(rounded(seen)))
    assert np.mean(probs.argmax(-1) == litert_top1) >= 0.95 and np.abs(probs - litert_probs).max() <= 0.2


def test_tf1_uint8_file_per_tensor_weights_and_biases(files):
    path, expected = files["tf1_uint8"], files["tf1_weights"]
    model, spec = ti.import_tflite(path)
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    depthwise = [layer for layer in model.layers if isinstance(layer, layers.DepthwiseConv2D)]
    # uint8 weights with a zero point dequantise to exactly the fake-quantised floats the graph trained with.
    np.testing.assert_allclose(convs[0].kernel, expected["conv"], atol=1e-6)
    np.testing.assert_allclose(depthwise[0].kernel, expected["depthwise"], atol=1e-6)
    np.testing.assert_allclose(convs[1].kernel, expected["dilated"], atol=1e-6)
    np.testing.assert_allclose(convs[2].kernel, expected["classifier"], atol=1e-6)
    assert convs[1].dilation_rate == (2, 2) and convs[0].strides == (2, 2) and convs[0].padding == "same"
    # int32 bias at input_scale * weight_scale: within half a step of the float bias.
    bias_step = (2 / 255) * float(np.ptp(expected["conv"])) / 255
    np.testing.assert_allclose(convs[0].bias, expected["bias"], atol=bias_step / 2 + 1e-7)
    assert spec["rgb_mean"] == pytest.approx([128 / 255] * 3) and spec["rgb_std"] == pytest.approx([0.5] * 3)
    pixels = np.random.default_rng(4).integers(0, 256, size=(64, SIZE, SIZE, 3)).astype(np.uint8)
    result = runtime.compare_imported_with_litert(path, pixels, model=model, spec=spec)
    assert result["images"] == 64 and result["agreement_up_to_ties"] >= 95


def test_dequantize_matches_numpy_reference():
    rng = np.random.default_rng(5)
    q = rng.integers(-128, 128, size=(2, 3, 3, 6)).astype(np.int8)
    scale, zero = rng.uniform(0.001, 0.1, size=6), rng.integers(-5, 5, size=6)
    reference = (q.astype(np.float64) - zero) * scale  # channel axis 3 broadcasts by NumPy's rules
    np.testing.assert_allclose(tflite_reader.dequantize(q, scale, zero, axis=3), reference, rtol=1e-6)
    reference0 = (q.astype(np.float64) - zero[:2, None, None, None]) * scale[:2, None, None, None]
    np.testing.assert_allclose(tflite_reader.dequantize(q, scale[:2], zero[:2], axis=0), reference0, rtol=1e-6)
    u = rng.integers(0, 256, size=(4, 4)).astype(np.uint8)
    np.testing.assert_allclose(
        tflite_reader.dequantize(u, [0.02], [128]), (u.astype(np.float64) - 128) * 0.02, rtol=1e-6
    )


def test_per_channel_int8_weights_are_within_half_a_step_per_channel(files):
    net = files["nets"]["a"]
    model, _ = ti.import_tflite(files["a", "int8"])
    original = net.layers[1].kernel.numpy()  # [3, 3, 3, 8]; channel 0 is 100x smaller
    imported = next(layer for layer in model.layers if isinstance(layer, layers.Conv2D)).kernel.numpy()
    step = np.abs(original).max(axis=(0, 1, 2)) / 127  # symmetric int8 per output channel
    error = np.abs(imported - original).max(axis=(0, 1, 2))
    assert np.all(error <= step / 2 + 1e-7), (error, step)
    assert step[0] < step[1:].min() / 20  # a per-tensor step would have been 20x too coarse for channel 0


def test_saved_teacher_loads_and_clones(files, tmp_path):
    out = tmp_path / "teacher.keras"
    spec = teachers.save_imported(files["a", "int8"], out)
    model, loaded = teachers.load_teacher(str(out))
    assert loaded == teachers.TeacherSpec(**spec)
    assert loaded.arch == "tflite:net_a_int8" and loaded.source == str(files["a", "int8"])
    x = (_images(4) - np.float32(loaded.rgb_mean)) / np.float32(loaded.rgb_std)
    reference, _ = ti.import_tflite(files["a", "int8"])
    np.testing.assert_allclose(model(x), reference(x), atol=1e-6)
    student = students.student_from_teacher(teachers.freeze(model))
    np.testing.assert_allclose(student(x), model(x), atol=1e-6)
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in student.layers)
    assert [layer.name for layer in student.layers] == [layer.name for layer in reference.layers]
    assert all(layer.name == "image" or layer.name.startswith("op") for layer in student.layers)


def test_labels_and_wordnet_ids_beside_the_file(files, tmp_path):
    path = tmp_path / "net.tflite"
    path.write_bytes(files["tf1_uint8"].read_bytes())
    (tmp_path / tflite_reader.LABELS_FILE).write_text("background\ntench\ngoldfish\nshark\nhen\n")
    (tmp_path / tflite_reader.SYNSETS_FILE).write_text("n01440764\nn01443537\nn01491361\nn01514859\n")
    _, spec = ti.import_tflite(path)
    assert spec["classes"] == ["background", "tench", "goldfish", "shark", "hen"]
    assert spec["wnids"] == ["background", "n01440764", "n01443537", "n01491361", "n01514859"]
    (tmp_path / tflite_reader.LABELS_FILE).write_text("tench\ngoldfish\n")
    with pytest.raises(UserError, match=r"imagenet_labels.txt: 2 class names but net.tflite has 5 outputs") as info:
        ti.import_tflite(path)
    assert "\n" not in str(info.value)


def test_unsupported_op_is_one_line_naming_op_and_file(tmp_path):
    keras.utils.set_random_seed(6)
    x = keras.Input((SIZE, SIZE, 3))
    y = layers.Concatenate()([layers.Conv2D(4, 3)(x), layers.Conv2D(4, 3)(x)])
    path = tmp_path / "concat.tflite"
    path.write_bytes(_convert(keras.Model(x, layers.GlobalAveragePooling2D()(y)), "float32"))
    with pytest.raises(
        UserError,
        match=r"concat.tflite: unsupported TFLite op CONCATENATION \(op #\d+\); "
        r"supported: ADD, AVERAGE_POOL_2D, BATCH_TO_SPACE_ND, CONV_2D",
    ) as info:
        ti.import_tflite(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"PK\x03\x04" + bytes(200)])
def test_not_a_tflite_file_is_one_line(tmp_path, content):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"model.tflite: not a TFLite flatbuffer") as info:
        ti.import_tflite(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("keep", [400, -10])
def test_truncated_tflite_file_is_one_line(files, tmp_path, keep):
    path = tmp_path / "truncated.tflite"
    path.write_bytes(files["a", "int8"].read_bytes()[:keep])
    with pytest.raises(UserError, match=r"truncated.tflite: a damaged or truncated TFLite flatbuffer") as info:
        ti.import_tflite(path)
    assert "\n" not in str(info.value)


def _imagenette_val(size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n validation photos spread over the 10 classes (every k-th file), bilinearly resized, with output indices."""
    synsets = (SHARED / "models/imagenet-tflite/imagenet_synsets.txt").read_text().split()
    with tarfile.open(SHARED / "datasets/imagenette-224.tar") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.name.startswith("val/") and m.isfile()), key=lambda m: m.name
        )
        chosen = members[:: len(members) // n][:n]
        photos = [tf.io.decode_jpeg(tar.extractfile(m).read(), channels=3) for m in chosen]
    images = tf.image.resize(tf.stack(photos), (size, size), method="bilinear")
    labels = [synsets.index(Path(m.name).parent.name) + 1 for m in chosen]  # +1: output 0 is background
    return np.clip(np.round(images.numpy()), 0, 255).astype(np.uint8), np.array(labels)


@pytest.mark.skipif(
    not (SHARED / "models/imagenet-tflite").is_dir() or not (SHARED / "datasets").is_dir(),
    reason="../shared (ImageNet TFLite models, Imagenette) is not beside this checkout",
)
@pytest.mark.parametrize("name", ["mobilenet_v1_0.5_160_quant", "tf2_mobilenet_v2_1.0_224_ptq"])
def test_shared_imagenet_classifier(name):
    path = SHARED / "models/imagenet-tflite" / f"{name}.tflite"
    model, spec = ti.import_tflite(path)
    assert spec["num_classes"] == 1001 and len(spec["classes"]) == 1001 and spec["classes"][0] == "background"
    assert spec["wnids"][:2] == ["background", "n01440764"] and len(spec["wnids"]) == 1001
    assert spec["rgb_std"] == pytest.approx([0.5] * 3, abs=0.002) and spec["arch"] == f"tflite:{name}"
    images, labels = _imagenette_val(spec["image_size"], 40)
    result = runtime.compare_imported_with_litert(path, images, labels, model=model, spec=spec)
    # On 400 images: 96.75-97.75 % agreement, accuracies within 0.25 points (docs/results/tflite_import.md).
    assert result["agreement"] >= 90 and abs(result["keras_top1"] - result["litert_top1"]) <= 7.5
    assert result["keras_top1"] >= 50


def test_own_int8_export_imports_back_and_agrees_with_its_source(tiny_teacher, tmp_path):
    """A Keras CNN (BatchNorm and all) converted to full int8 by this project's converter, imported back: top-1
    agreement with the source on real CIFAR-10 test images, like the ImageNet files against LiteRT."""
    from isp_keras.data import pipeline, sources
    from isp_keras.deploy import serving, tflite

    model, spec = teachers.load_teacher(str(tiny_teacher))
    norm = pipeline.normalisation.Normalisation([0.0] * 3, [1.0] * 3, spec.rgb_mean, spec.rgb_std)
    cfg = pipeline.PipelineConfig(image_size=32, batch_size=200, take=400)
    batches = pipeline.build(sources.get_source("embedded"), "test", cfg, training=False, norm=norm, mode="rgb")
    x = np.concatenate([b.numpy() for b, _ in batches])
    endpoint = (lambda v: model(v, training=False), tf.TensorSpec([None, 32, 32, 3], tf.float32, name="image"))
    serving.write_archive(model, {serving.SIGNATURE: endpoint}, tmp_path / "saved")
    data = tflite.to_tflite(tmp_path / "saved", "int8", x[:100], input_name="image")
    (tmp_path / "own.tflite").write_bytes(data)
    imported, imported_spec = ti.import_tflite(tmp_path / "own.tflite")
    assert imported_spec["num_classes"] == 10 and imported_spec["image_size"] == 32
    source = model.predict(x, verbose=0).argmax(-1)
    again = imported.predict(x, verbose=0).argmax(-1)
    agreement = 100 * np.mean(source == again)
    assert agreement >= 94.0, agreement


def test_restored_batchnorm_starts_as_the_identity():
    """import_tflite(batchnorm=True): a BatchNormalization after every convolution but the classifier; fitted to a
    batch, the network computes the BN-free function exactly in inference and on that batch in training mode."""
    path = Path(__file__).resolve().parents[1] / "fixtures" / "imagenet" / "mobilenet_v1_0.25_128_quant.tflite"
    plain, _ = ti.import_tflite(path)
    model, _ = ti.import_tflite(path, batchnorm=True)
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    convs = [layer for layer in plain.layers if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D))]
    assert len(bns) == len(convs) - 1 == 27 and convs[-1].name + "_bn" not in {b.name for b in bns}
    x = np.random.default_rng(0).normal(0.5, 1.0, (16, 128, 128, 3)).astype(np.float32)
    reference = plain(x).numpy()
    np.testing.assert_allclose(model(x).numpy(), reference, atol=2e-3 * np.abs(reference).max())
    students.init_identity_batchnorm(model, x)
    gamma, beta, mean, var = bns[0].get_weights()
    assert np.abs(beta).max() > 0.01 and not np.allclose(gamma, 1)  # fitted, not left at 1 and 0
    np.testing.assert_allclose(model(x, training=False).numpy(), reference, atol=1e-5 * np.abs(reference).max())
    np.testing.assert_allclose(model(x, training=True).numpy(), reference, atol=1e-4 * np.abs(reference).max())
