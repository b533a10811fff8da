"""bench_deploy: the TF ISP path's graph, the full-size file's shape; the config: flags generated from it,
validation, composition with the training benchmark's config. Its smoke run (every figure on tiny settings) is the
README walkthrough's benchmark step (tests/test_readme.py)."""

from __future__ import annotations

import dataclasses

import pytest
from absl import flags

from isp_keras import config
from isp_keras.bench import deploy as bench_deploy
from isp_keras.bench import train as bench_train
from isp_keras.errors import UserError


def parse(argv, cls=bench_deploy.DeployBenchConfig):
    fv = flags.FlagValues()
    config.define_flags(cls, fv)
    fv(["bench", *argv])
    return config.from_flags(cls, fv)


def test_full_size_shape():
    assert bench_deploy.full_size_shape(0.02, 32) == (122, 162)


def test_tf_isp_path_is_the_teacher_on_the_clipped_demosaic(tiny_student):
    """The TF ISP's graph against its parts: levels, bilinear infill, clip, teacher normalisation, teacher."""
    import numpy as np
    import tensorflow as tf

    from isp_keras.data import pipeline
    from isp_keras.deploy import serving
    from isp_keras.models import teachers
    from isp_keras.raw import bayer

    student = serving.load_student(tiny_student)
    teacher, _ = teachers.load_teacher(student.teacher)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4096, size=(2, 32, 32, 1)).astype(np.uint16)  # some below black, some at white
    got = bench_deploy.tf_isp_fn(teacher, student.norm, student.cfa)(tf.constant(counts))[serving.OUTPUT_NAME]
    levels = (counts.astype(np.float32) - bench_deploy.BLACK_LEVEL) / (
        bench_deploy.WHITE_LEVEL - bench_deploy.BLACK_LEVEL
    )
    rgb = np.clip(bayer.infill(tf.constant(levels), student.cfa).numpy(), 0, 1)
    expected = tf.nn.softmax(teacher(pipeline.teacher_input(tf.constant(rgb), norm=student.norm))).numpy()
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_a_smaller_student_is_timed_against_its_teacher_at_the_teachers_size(tiny_student, tmp_path):
    """A student of another input size than its teacher: the RAW path reads frames of the student's size, the ISP
    paths frames of the teacher's size of the same scenes, and every figure is measured."""
    import json
    import shutil

    from isp_keras.deploy import serving
    from isp_keras.models import architectures, teachers

    run = tmp_path / "small"
    shutil.copytree(tiny_student, run)
    trained = teachers.load_model_file(run / "student.keras")
    small = architectures.build("resnet_tiny", 10, 24)
    small.set_weights(trained.get_weights())
    small.save(run / "student.keras")
    meta = json.loads((run / "student.json").read_text())
    (run / "student.json").write_text(json.dumps({**meta, "image_size": 24}))
    student = serving.load_student(run)
    teacher, _ = teachers.load_teacher(student.teacher)
    cfg = bench_deploy.DeployBenchConfig(
        runs=2, warmup=0, latency_block=1, agreement_take=16, e2e_images=2, full_size_mp=0, mobilenet=False
    )
    source = serving.labelled_source(student, "test")
    (tmp_path / "work").mkdir()
    fig = bench_deploy.measure(student, teacher, source, tmp_path / "work", cfg, run / "student.keras", True, 8)
    assert (fig["image_size"], fig["teacher_image_size"], fig["agreement_examples"]) == (24, 32, 16)
    for key in ("raw_path_latency_ms", "isp_path_latency_ms", "tf_isp_path_latency_ms", "int8_latency_ms"):
        assert fig[key] > 0, key
    assert 0 <= fig["isp_path_top1"] <= 100 and fig["raw_path_speedup_over_isp_path"] > 0


def test_bad_flags(tmp_path):
    with pytest.raises(UserError, match=r"^--runs=0: must be >= 1$"):
        parse(["--runs=0"])  # from_flags validates
    with pytest.raises(UserError, match=r"^--runs=0: must be >= 1$"):
        bench_deploy.run(bench_deploy.DeployBenchConfig(runs=0))
    with pytest.raises(UserError, match="--full_size_runs=0: must be >= 1"):
        bench_deploy.DeployBenchConfig(full_size_runs=0).validate()
    with pytest.raises(UserError, match="--latency_block=0: must be >= 1"):
        bench_deploy.DeployBenchConfig(latency_block=0).validate()
    with pytest.raises(UserError, match="no such file or run directory"):
        bench_deploy.run(parse([f"--student={tmp_path / 'missing'}"]))


def test_config_defaults_and_composition():
    assert bench_deploy.DeployBenchConfig().student == "runs/train"
    assert parse(["--nomobilenet", "--runs=7"]) == bench_deploy.DeployBenchConfig(mobilenet=False, runs=7)

    @dataclasses.dataclass
    class BenchmarkConfig(bench_train.TrainBenchConfig, bench_deploy.DeployBenchConfig):
        suite: str = config.option("deploy", "Which benchmark suite.", choices=("deploy", "train"))
        json: str = config.option("", "Also write the figures as JSON to this path.")

    train_names = {f.name for f in dataclasses.fields(bench_train.TrainBenchConfig)}
    deploy_names = {f.name for f in dataclasses.fields(bench_deploy.DeployBenchConfig)}
    assert not train_names & deploy_names and not (train_names | deploy_names) & {"suite", "json"}
    cfg = parse(["--suite=train", "--train_models=embedded", "--runs=5"], cls=BenchmarkConfig)
    assert cfg.suite == "train" and cfg.train_models == ["embedded"] and cfg.runs == 5
    # validate() is cooperative: the composed config checks both suites' fields.
    with pytest.raises(UserError, match="--runs=0"):
        parse(["--runs=0"], cls=BenchmarkConfig)
    with pytest.raises(UserError, match="--train_steps=0"):
        parse(["--train_steps=0"], cls=BenchmarkConfig)


def test_peak_rss_starts_afresh_in_a_child_of_a_large_process():
    """A fresh interpreter that touches 300 MB reports about that much work, whatever its parent's peak was (Linux
    carries ru_maxrss across exec; VmHWM starts again)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, numpy as np; from isp_keras.bench.deploy import peak_rss_kb; b = peak_rss_kb(); "
        "x = np.ones(300 * 2**20 // 8); print(json.dumps([b, peak_rss_kb()]))"
    )
    before, after = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    assert 290 * 1024 <= after - before <= 400 * 1024, (before, after)
