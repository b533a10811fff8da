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
