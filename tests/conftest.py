"""Shared fixtures: a tiny real slice of the embedded CIFAR-10 set and a tiny teacher trained on it."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A resnet_tiny RGB teacher (+ sidecar JSON) trained 2 epochs on 1,024 real CIFAR-10 images (~10 s)."""
    from isp_keras.training import teacher
    from isp_keras.training.config import TeacherConfig

    root = tmp_path_factory.mktemp("tiny_teacher")
    out = root / "teacher.keras"
    teacher.train(
        TeacherConfig(
            dataset="embedded",
            arch="resnet_tiny",
            image_size=32,
            epochs=2,
            batch_size=64,
            lr=0.05,
            weight_decay=5e-4,
            take=1024,
            seed=0,
            out=str(out),
            model_dir=str(root / "run"),
        )
    )
    return out


@pytest.fixture()
def tiny_config(tiny_teacher, tmp_path):
    """A TrainConfig for a few-step distillation on the tiny teacher."""
    from isp_keras.training.config import TrainConfig

    return TrainConfig(
        teacher=str(tiny_teacher),
        model_dir=str(tmp_path / "run"),
        epochs=1,
        batch_size=32,
        train_take=128,
        test_take=128,
        stats_images=256,
        lr=0.05,
        qat_epochs=0,
    ).validate()


@pytest.fixture(scope="session")
def tiny_student(tiny_teacher, tmp_path_factory):
    """A finished run directory (student.keras + student.json + config.json): the tiny teacher distilled for one
    epoch on 1,024 real CIFAR-10 mosaics (noise 0.1), as `python -m isp_keras.train` writes it (~10 s)."""
    from isp_keras.training import experiments
    from isp_keras.training.config import TrainConfig

    run_dir = tmp_path_factory.mktemp("tiny_student")
    cfg = TrainConfig(
        teacher=str(tiny_teacher),
        model_dir=str(run_dir),
        epochs=1,
        batch_size=64,
        train_take=1024,
        test_take=128,
        stats_images=512,
        lr=0.05,
        qat_epochs=0,
    ).validate()
    experiments.train(cfg)
    return run_dir


def pytest_collection_modifyitems(items):
    """Slow tests first (stable within each group), so the parallel workers do not end on one long test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _run_command(config_cls, run, argv: list[str]) -> int:
    from absl import flags

    from isp_keras import cli, config, errors

    fv = flags.FlagValues()
    config.define_flags(config_cls, fv)
    try:
        remaining = errors.parse_flags(["prog", *argv], fv)
        errors.run_main(cli.make_main(config_cls, run, fv))(remaining)
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture()
def run_command():
    """`run_command(ConfigClass, run, argv)`: a command as `python -m isp_keras.<name> ARGV` runs it, in this
    process (no interpreter start-up): its flags in a fresh FlagValues, parsed as the command parses them, then
    errors.run_main around config -> run. Returns the exit status (0 when `run` returned); output is for capsys."""
    return _run_command
