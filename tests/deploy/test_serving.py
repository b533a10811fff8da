"""serving: the graph a deployed student runs (mosaic -> infill -> per-site norm -> student -> softmax) against
bayer.infill plus NumPy normalisation, channel order and softmax; loading a run's student; and the one-line
errors for what cannot be exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from isp_keras.data import normalisation, sources
from isp_keras.deploy import parity, runtime, serving, tflite
from isp_keras.errors import UserError
from isp_keras.models import architectures
from isp_keras.raw import bayer


def numpy_student_input(mosaic, cfa, mean, std, channel_order="RGB"):
    """bayer.infill (checked against NumPy in test_bayer), then per-site normalisation and channel order in NumPy."""
    out = bayer.infill(tf.constant(mosaic), cfa).numpy().astype(np.float64)
    out = (out - np.asarray(mean)) / np.asarray(std)
    return out[..., ::-1] if channel_order == "BGR" else out


def make_student(cfa="GRBG", channel_order="RGB", size=8, classes=4):
    model = architectures.build("resnet_tiny", classes, image_size=size)
    norm = normalisation.Normalisation([0.3, 0.4, 0.2], [0.2, 0.25, 0.15], [0.5] * 3, [0.25] * 3, channel_order)
    return serving.Student(model, cfa, size, [f"c{i}" for i in range(classes)], norm, path="test")


@pytest.mark.parametrize("cfa,order", [("GRBG", "RGB"), ("BGGR", "BGR")])
def test_serving_graph_matches_numpy_reference(cfa, order):
    student = make_student(cfa, order)
    mosaic = np.random.default_rng(0).uniform(-0.1, 1.1, (2, 8, 8, 1)).astype(np.float32)
    expected_x = numpy_student_input(mosaic, cfa, student.norm.raw_mean, student.norm.raw_std, order)
    expected_x = expected_x.astype(np.float32)
    logits = student.model(expected_x).numpy().astype(np.float64)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    got = serving.probabilities_fn(student)(tf.constant(mosaic))[serving.OUTPUT_NAME].numpy()
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_saved_model_signatures(tmp_path):
    student = make_student()
    serving.export_saved_model(student, tmp_path / "sm", black_level=64, white_level=1023)
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 1024, (3, 8, 8, 1)).astype(np.uint16)
    mosaic = ((counts.astype(np.float64) - 64) / (1023 - 64)).astype(np.float32)
    reference = parity.keras_probabilities(student, mosaic)
    got = parity.saved_model_probabilities(tmp_path / "sm", mosaic)
    got16 = parity.saved_model_probabilities(tmp_path / "sm", counts, signature=serving.UINT16_SIGNATURE)
    np.testing.assert_allclose(got, reference, atol=1e-6)
    np.testing.assert_allclose(got16, reference, atol=1e-6)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    spec = loaded.signatures[serving.SIGNATURE].structured_input_signature[1][serving.INPUT_NAME]
    assert spec.shape.as_list() == [None, 8, 8, 1] and spec.dtype == tf.float32


def test_float32_tflite_matches_keras(tmp_path):
    student = make_student()
    serving.export_saved_model(student, tmp_path / "sm")
    mosaic = np.random.default_rng(2).uniform(0, 1, (5, 8, 8, 1)).astype(np.float32)
    runner = runtime.TFLiteRunner(tflite.to_tflite(tmp_path / "sm", "float32"))
    assert runner.input_shape == (8, 8, 1)
    np.testing.assert_allclose(
        runner.predict(mosaic, batch_size=2), parity.keras_probabilities(student, mosaic), atol=1e-5
    )


def test_student_checks():
    student = make_student()
    teacher = architectures.build("resnet_tiny", 4, image_size=8)
    from isp_keras.training import distiller

    with pytest.raises(UserError, match="is a Distiller"):
        serving.check_student(distiller.Distiller(student.model, teacher), 8, 4, "d.keras")
    gray = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    with pytest.raises(UserError, match="3-channel"):
        serving.check_student(gray, 8, 4, "gray.keras")
    with pytest.raises(UserError, match="takes 8x8 images but student.json says image_size 16"):
        serving.check_student(student.model, 16, 4, "s.keras")
    with pytest.raises(UserError, match="4 outputs but student.json lists 10 classes"):
        serving.check_student(student.model, 8, 10, "s.keras")
    with pytest.raises(UserError, match="is a Distiller"):
        serving.export_saved_model(
            serving.Student(distiller.Distiller(student.model, teacher), "RGGB", 8, student.classes, student.norm),
            "unused",
        )


def test_check_representative():
    ok = serving.check_representative(np.zeros((3, 8, 8), np.float64), 8)
    assert ok.shape == (3, 8, 8, 1) and ok.dtype == np.float32
    with pytest.raises(UserError, match=r"representative set: shape \(3, 8, 8, 3\); expected"):
        serving.check_representative(np.zeros((3, 8, 8, 3), np.float32), 8)
    with pytest.raises(UserError, match=r"shape \(3, 16, 16, 1\)"):
        serving.check_representative(np.zeros((3, 16, 16, 1), np.float32), 8)
    with pytest.raises(UserError, match="dtype uint16"):
        serving.check_representative(np.zeros((3, 8, 8, 1), np.uint16), 8)


def test_load_student(tiny_student, tmp_path):
    student = serving.load_student(tiny_student)
    meta = json.loads((tiny_student / "student.json").read_text())
    assert (student.cfa, student.image_size, student.classes) == (meta["cfa"], meta["image_size"], meta["classes"])
    assert student.norm.raw_mean == meta["normalisation"]["raw_mean"] and student.dataset == "embedded"
    assert serving.load_student(tiny_student / "student.keras").path == student.path

    lone = tmp_path / "lone.keras"
    shutil.copy(tiny_student / "student.keras", lone)
    with pytest.raises(UserError, match="no lone.json beside it"):
        serving.load_student(lone)
    (tmp_path / "lone.json").write_text(json.dumps({"image_size": 32}))
    with pytest.raises(UserError, match="lone.json: not a student description"):
        serving.load_student(lone)
    with pytest.raises(UserError, match="no student.keras in this directory"):
        serving.load_student(tmp_path)


def test_the_students_sensor_drives_its_mosaics(tiny_student, tmp_path):
    realistic = tmp_path / "realistic"
    shutil.copytree(tiny_student, realistic)
    meta = json.loads((realistic / "student.json").read_text())
    (realistic / "student.json").write_text(json.dumps({**meta, "sensor": "realistic"}))
    student, linear = serving.load_student(tiny_student), serving.load_student(realistic)
    assert (student.sensor, linear.sensor) == ("gaussian", "realistic")
    source = sources.get_source("embedded")
    gaussian_mosaics, _ = serving.pipeline_mosaics(student, source, "test", 64)
    linear_mosaics, _ = serving.pipeline_mosaics(linear, source, "test", 64)
    # Unprocessing undoes the gamma and white balance: linear RAW is much darker than the sRGB mosaic.
    assert linear_mosaics.mean() < 0.7 * gaussian_mosaics.mean()
    (realistic / "student.json").write_text(json.dumps({**meta, "sensor": "film"}))
    with pytest.raises(UserError, match="sensor 'film' is neither gaussian nor realistic"):
        serving.load_student(realistic)


def test_parity_gates():
    ok = {
        "saved_model_max_abs_prob_diff": 0.0,
        "float32_max_abs_prob_diff": 9e-5,
        "int8_top1_agreement": 98.0,
        "int8_float_head_top1_agreement": 98.0,
        "int16x8_top1_agreement": 98.0,
    }
    assert parity.parity_failures(ok) == []
    bad = {
        "saved_model_max_abs_prob_diff": 2e-4,
        "float32_max_abs_prob_diff": float("nan"),
        "int8_top1_agreement": 97.9,
        "int8_float_head_top1_agreement": 97.95,
        "int16x8_top1_agreement": 97.0,
    }
    failures = parity.parity_failures(bad)
    assert len(failures) == 5 and "int8 top-1 agreement 97.90% < 98%" in failures[2]
    assert "int8_float_head top-1 agreement 97.95% < 98%" in failures[3]
    assert "int16x8 top-1 agreement 97.00% < 98%" in failures[4]
    reference = np.array([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    figures = parity.parity_figures(reference, {"int8": np.array([[0.6, 0.4], [0.9, 0.1], [0.5, 0.5]])})
    assert figures["int8_top1_agreement"] == pytest.approx(200 / 3)
    assert figures["int8_max_abs_prob_diff"] == pytest.approx(0.7)


def test_packed_student_serving_graph_packs_in_graph(tmp_path):
    from isp_keras.models import packed, students

    infill = make_student("GBRG", "BGR")
    norm = infill.norm
    packing = packed.Packing("GBRG", tuple(norm.raw_mean), tuple(norm.raw_std), "BGR", 8)
    student = serving.Student(
        students.student_from_teacher(infill.model, packing=packing),
        "GBRG",
        8,
        infill.classes,
        norm,
        path="packed",
        student_input="packed",
    )
    mosaic = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
    expected = tf.nn.softmax(student.model(tf.nn.space_to_depth(mosaic, 2))).numpy()
    np.testing.assert_allclose(parity.keras_probabilities(student, mosaic), expected, atol=1e-6)
    serving.export_saved_model(student, tmp_path / "sm")
    np.testing.assert_allclose(parity.saved_model_probabilities(tmp_path / "sm", mosaic), expected, atol=1e-6)
    with pytest.raises(UserError, match=r"takes the mosaic's 2x2 tiles \[batch, H/2, W/2, 4\]"):
        serving.check_student(infill.model, 8, 4, "m.keras", "packed")
    with pytest.raises(UserError, match=r"the 3-channel bilinearly infilled mosaic"):
        serving.check_student(student.model, 8, 4, "m.keras")


def test_labelled_source_puts_labels_in_the_students_output_space():
    """Imagenette's WordNet-id folders land on an ImageNet student's outputs, not on 0..9 (the deploy benchmark's
    top-1 figures and the export's parity read labels this way)."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    labels = (fixtures / "imagenet" / "imagenet_labels.txt").read_text().splitlines()
    wnids = [""] + (fixtures / "imagenet" / "imagenet_synsets.txt").read_text().split()
    student = serving.Student(None, "RGGB", 32, labels, None, dataset=f"folder:{fixtures / 'imagenette'}", wnids=wnids)
    source = serving.labelled_source(student, "fixture")
    _, got = serving.pipeline_mosaics(student, source, source.test_split, None)
    folders = sorted(p.name for p in (fixtures / "imagenette" / "val").iterdir())
    assert sorted(set(got.tolist())) == sorted(wnids.index(w) for w in folders)


def test_serving_feeds_a_tflite_teachers_student_the_training_input_in_its_scale(tmp_path):
    """A TFLite teacher reads (rgb - 0.5) / 0.5, std about 0.56: the student's RAW input is mapped into those moments
    at training time, and the exported graph, given the same mosaics, feeds the model the very same input."""
    import dataclasses

    from isp_keras.data import pipeline
    from isp_keras.training import experiment
    from isp_keras.training.config import TrainConfig

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    cfg = TrainConfig(
        dataset=f"folder:{fixtures / 'imagenette'}",
        teacher=str(fixtures / "imagenet" / "mobilenet_v1_0.25_128_quant.tflite"),
        model_dir=str(tmp_path / "run"),
        batch_size=8,
        test_take=8,
        stats_images=30,
    ).validate()
    s = experiment.build_setup(cfg)
    assert all(0.4 < v < 0.75 for v in s.norm.input_std) and all(-0.3 < v < 0.1 for v in s.norm.input_mean)
    (x, _), _ = next(iter(s.test_ds()))
    mosaic_cfg = dataclasses.replace(s.pipeline, take=cfg.test_take, batch_size=256)
    mosaic, _, _ = next(
        iter(pipeline.build(s.source, s.source.test_split, mosaic_cfg, training=False, norm=None, mode="mosaic"))
    )
    site = bayer.cfa_masks(128, 128, cfg.cfa)
    for c in range(3):  # what the first layer sees: about the teacher's input std, not 1
        std = float(np.std(x.numpy()[..., c][:, site[..., c] == 1]))
        assert std == pytest.approx(s.norm.input_std[c], rel=0.25)
    normalisation.save_normalisation(tmp_path / "norm.json", s.norm)
    norm = normalisation.load_normalisation(tmp_path / "norm.json")
    student = serving.Student(s.teacher, cfg.cfa, 128, s.source.classes, norm, path="tflite")
    got = serving.probabilities_fn(student)(mosaic)[serving.OUTPUT_NAME].numpy()
    expected = tf.nn.softmax(s.teacher(x, training=False)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_embedded_teacher_keeps_unit_std_raw():
    """The embedded ResNet-20 was trained on per-channel standardised RGB: its students see RAW as before."""
    from isp_keras.data import pipeline
    from isp_keras.models import teachers

    _, spec = teachers.load_teacher("embedded")
    source = sources.get_source("embedded")
    cfg = pipeline.PipelineConfig(image_size=32, batch_size=100, noise_std=0.1, take=500)
    norm = pipeline.compute_normalisation(source, cfg, 500, spec.rgb_mean, spec.rgb_std)
    assert (norm.input_mean, norm.input_std) == ([0.0] * 3, [1.0] * 3)
    assert norm.student_stats() == (norm.raw_mean, norm.raw_std)
    forced = pipeline.compute_normalisation(source, cfg, 500, spec.rgb_mean, spec.rgb_std, raw_scale="teacher")
    assert forced.input_std != [1.0] * 3 and all(abs(v - 1) < 0.1 for v in forced.input_std)
