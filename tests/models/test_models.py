"""Model builders, teacher loading, student-from-teacher, layer freezing."""

import json

import keras
import numpy as np
import pytest

from isp_keras.errors import UserError
from isp_keras.models import architectures, students, teachers


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv2_32", "resnet_tiny"])
def test_32px_architectures_output_logits(arch):
    model = architectures.build(arch, 10)
    out = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert out.shape == (2, 10)


def test_imagenet_scale_architectures_shapes():
    # Built, not run: the shapes say they are the ImageNet variants (224 px in, 1000 logits out).
    r18 = architectures.build("resnet18", 1000)
    assert r18.input_shape == (None, 224, 224, 3) and r18.output_shape == (None, 1000)
    assert 11.0e6 < r18.count_params() < 12.0e6  # ResNet18 has 11.7M parameters with 1000 classes
    mb = architectures.build("mobilenetv2", 1000)
    assert 3.4e6 < mb.count_params() < 3.6e6  # MobileNetV2 1.0: 3.5M


def test_student_starts_from_teacher_and_teacher_is_frozen():
    teacher = architectures.build("resnet_tiny", 10)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    student = students.student_from_teacher(teacher)
    teachers.freeze(teacher)
    np.testing.assert_allclose(student(x, training=False), teacher(x, training=False), atol=1e-6)
    assert student.trainable_variables and not teacher.trainable_variables
    # Distinct variables: changing the student leaves the teacher alone.
    student.layers[1].kernel.assign(student.layers[1].kernel * 0)
    assert np.abs(teacher.layers[1].kernel.numpy()).sum() > 0


def test_student_from_frozen_teacher_is_still_trainable():
    teacher = teachers.freeze(architectures.build("resnet_tiny", 10))
    student = students.student_from_teacher(teacher)
    assert len(student.trainable_variables) == len(teacher.weights) - 2 * sum(
        isinstance(layer, keras.layers.BatchNormalization) for layer in teacher.layers
    )


def test_set_trainable_prefix_freezes_the_rest():
    model = architectures.build("resnet20", 10)
    names = students.set_trainable_prefix(model, 1)
    assert "stem_conv" in names and any(n.startswith("stage1") for n in names)
    assert not any(n.startswith("stage2") or n == "logits" for n in names)
    assert all(not layer.trainable for layer in model.layers if layer.name.startswith("stage3"))
    all_names = students.set_trainable_prefix(model, None)
    assert "logits" in all_names
    with pytest.raises(UserError, match="k=4"):
        students.set_trainable_prefix(model, 4)


def test_load_teacher_from_file_with_sidecar(tmp_path):
    model = architectures.build("resnet_tiny", 10)
    path = tmp_path / "t.keras"
    model.save(path)
    spec = teachers.TeacherSpec(32, 10, [0.5] * 3, [0.25] * 3, classes=[str(i) for i in range(10)])
    teachers.write_spec(path, spec)
    loaded, got = teachers.load_teacher(str(path))
    assert got == spec
    x = np.ones((1, 32, 32, 3), np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    assert json.loads((tmp_path / "t.json").read_text())["rgb_std"] == [0.25] * 3


def test_teacher_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="neither a file nor a known keras.applications name"):
        teachers.load_teacher("resnet_nonexistent")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="junk.keras: not a loadable Keras model"):
        teachers.load_teacher(str(junk))
    model = architectures.build("resnet_tiny", 10)
    with pytest.raises(UserError, match="10 classes but the data has 5"):
        teachers.check_teacher_matches(model, 32, 5, "t.keras")
    with pytest.raises(UserError, match="32x32 images but the data is 64x64"):
        teachers.check_teacher_matches(model, 64, 10, "t.keras")


def test_keras_applications_name_offline_fails_with_one_line():
    from isp_keras.data import sources

    try:
        sources._check_online("probe", "-", timeout=3)
        pytest.skip("this machine is online: the download would succeed")
    except UserError:
        pass
    with pytest.raises(UserError) as info:
        teachers.load_teacher("MobileNetV2")
    assert "could not download the ImageNet weights" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.usefixtures("eager_functions")
def test_saved_model_teacher_needs_student_init(tiny_teacher, tmp_path):
    """A SavedModel teaches (forward only, same logits as the .keras it came from); the student starts from
    --student_init because a SavedModel has no architecture to clone."""
    import dataclasses

    from isp_keras.training import experiment, plans
    from isp_keras.training.config import TrainConfig

    keras_teacher, spec = teachers.load_teacher(str(tiny_teacher))
    saved = tmp_path / "teacher_sm"
    keras_teacher.export(str(saved), format="tf_saved_model")
    teachers.write_spec(saved, spec)
    teacher, got_spec = teachers.load_teacher(str(saved))
    assert got_spec == spec and teacher.input_shape == (None, 32, 32, 3) and teacher.output_shape == (None, 10)
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(teacher(x, training=False), keras_teacher(x, training=False), atol=1e-5)

    cfg = TrainConfig(
        teacher=str(saved),
        model_dir=str(tmp_path / "run"),
        epochs=1,
        batch_size=32,
        train_take=64,
        test_take=64,
        stats_images=128,
    ).validate()
    with pytest.raises(UserError, match="--student_init"):
        experiment.build_setup(cfg)
    s = experiment.build_setup(dataclasses.replace(cfg, student_init=str(tiny_teacher)))
    row, student = experiment.train_student(
        s, plans.student_row("distilled", cfg, 0.9, "gt"), tmp_path / "run", verbose=0
    )
    assert row["name"] == "distilled" and 0 <= row["top1"] <= 100
    assert student.count_params() == keras_teacher.count_params()


def test_blocks_of_a_model_imported_from_tflite():
    """MobileNetV1 from a TFLite file: 13 depthwise + pointwise blocks (the stem joins the first), the classifier in
    none; fine-tuning the first block trains the stem and that block only."""
    from pathlib import Path

    from isp_keras.models import tflite_import

    path = Path(__file__).resolve().parents[1] / "fixtures" / "imagenet" / "mobilenet_v1_0.25_128_quant.tflite"
    teacher, _ = tflite_import.import_tflite(path)
    student = students.student_from_teacher(teacher)
    trained = students.set_trainable_prefix(student, 1)
    assert trained == ["op000_conv_2d", "op001_depthwise_conv_2d", "op002_conv_2d"]
    assert [v.path.split("/")[0] for v in student.trainable_variables] == [n for n in trained for _ in (0, 1)]
    assert len(students.set_trainable_prefix(student, 13)) == 27  # every convolution but the classifier
    with pytest.raises(UserError, match="k=14 but the model has 13 stages/blocks"):
        students.set_trainable_prefix(student, 14)


def test_student_init_of_another_size_and_its_refusals(tiny_teacher, tmp_path):
    """--student_init may take another (square, even) input size than the teacher, never other outputs; a TFLite
    student's classes and RGB normalisation must be the teacher's."""
    from pathlib import Path

    from isp_keras.models import tflite_import

    teacher, spec = teachers.load_teacher(str(tiny_teacher))
    small = architectures.build("resnet_tiny", 10, 24)
    small.set_weights(teacher.get_weights())  # global pooling: the same weights at any input size
    small.save(tmp_path / "small.keras")
    model = students.load_student_init(tmp_path / "small.keras", teacher, spec)
    assert teachers.input_size(model) == (24, 24, 3)
    x = np.random.default_rng(0).normal(size=(2, 24, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x), small(x), atol=1e-6)
    for name, bad, message in (
        ("odd", architectures.build("resnet_tiny", 10, 25), "takes 25x25x3 images; a student needs a square"),
        ("five", architectures.build("resnet_tiny", 5, 24), "has 5 outputs but the teacher has 10"),
    ):
        bad.save(tmp_path / f"{name}.keras")
        with pytest.raises(UserError, match=message):
            students.load_student_init(tmp_path / f"{name}.keras", teacher, spec)
    v1 = Path(__file__).resolve().parents[1] / "fixtures" / "imagenet" / "mobilenet_v1_0.25_128_quant.tflite"
    with pytest.raises(UserError, match="has 1001 outputs but the teacher has 10"):
        students.load_student_init(v1, teacher, spec)
    imagenet, imagenet_spec = tflite_import.import_tflite(v1)
    torch_style = teachers.TeacherSpec(**{**imagenet_spec, "rgb_mean": [0.485, 0.456, 0.406]})
    with pytest.raises(UserError, match="expects RGB normalised by mean and std"):
        students.load_student_init(v1, imagenet, torch_style)
    other_classes = teachers.TeacherSpec(**{**imagenet_spec, "wnids": ["n0"] * 1001})
    with pytest.raises(UserError, match="its classes are not the teacher's"):
        students.load_student_init(v1, imagenet, other_classes)
    assert teachers.input_size(students.load_student_init(v1, imagenet, teachers.TeacherSpec(**imagenet_spec))) == (
        128,
        128,
        3,
    )
    with pytest.raises(UserError, match="no such file"):
        students.load_student_init(tmp_path / "missing.tflite", teacher, spec)
