"""Shared fixtures: the committed tiny teacher and student (tests/fixtures/tiny), a tiny distillation config, and an
in-process command runner."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_rebuild():
    """tests/fixtures/tiny/rebuild.py as a module (the tests are not a package)."""
    import importlib.util

    path = Path(__file__).parent / "fixtures" / "tiny" / "rebuild.py"
    spec = importlib.util.spec_from_file_location("tiny_rebuild", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_models(tiny_rebuild, tmp_path_factory):
    """(teacher .keras path, student run directory): the committed tiny pair (tests/fixtures/tiny, made by its
    rebuild.py), copied into a session folder."""
    return tiny_rebuild.install(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_teacher(tiny_models):
    """A resnet_tiny RGB teacher (+ sidecar JSON) trained 2 epochs on 1,024 real CIFAR-10 images."""
    return tiny_models[0]


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
def tiny_student(tiny_models):
    """A finished run directory (student.keras + student.json + config.json + normalisation.json + results.json):
    the tiny teacher distilled for one epoch on 1,024 real CIFAR-10 mosaics (noise 0.1), as `python -m
    isp_keras.train` writes it."""
    return tiny_models[1]


@pytest.fixture()
def eager_functions():
    """Runs every tf.function eagerly for one test. A run over a few tiny batches spends most of its time tracing the
    train, eval and optimizer functions (about two thirds of an end-to-end table test); executed eagerly, its steps
    cost less than the tracing. For tests of what a run does with its rows, files and reports; the traced path is
    what the walkthrough, the resume, distribute and export tests run."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the tests marked slow: the whole suite, as the README's test command and CI run it",
    )


def _named_tests(config) -> set[str]:
    """The node ids given on the command line (`path::name`), relative to the rootdir as item node ids are."""
    named = set()
    for arg in config.args:
        path, sep, name = arg.partition("::")
        full = (config.invocation_params.dir / path).resolve()
        if sep and full.is_relative_to(config.rootpath):
            named.add(f"{full.relative_to(config.rootpath).as_posix()}::{name}")
    return named


def pytest_collection_modifyitems(config, items):
    """Without --slow (or an explicit -m) the tests marked slow are deselected, unless named by node id:
    `python -m pytest -q` is the quick loop while changing code. Slow tests go first (stable within each group), so
    that the parallel workers do not end on one long test."""
    if not config.getoption("--slow") and not config.option.markexpr:
        named = _named_tests(config)
        slow = [
            item
            for item in items
            if item.get_closest_marker("slow") and item.nodeid not in named and item.nodeid.split("[")[0] not in named
        ]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if item not in slow]
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
