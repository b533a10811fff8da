"""predict: LiteRT top-5 on .npy mosaics (float and uint16) and DNGs of real CIFAR-10 test mosaics, against the
Keras student; one-line errors for odd sizes, wrong dtypes and missing export files."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from isp_keras.data import sources
from isp_keras.deploy import export, parity, predict, serving
from isp_keras.deploy.config import ExportConfig
from isp_keras.errors import UserError
from isp_keras.raw import rawio

BLACK, WHITE = 64, 1023


@pytest.fixture(scope="module")
def setup(tiny_student, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    export.run(
        ExportConfig(
            student=str(tiny_student),
            out=str(root / "deploy"),
            calibration_samples=50,
            parity_take=64,
            dynamic=False,
            parity_gate=False,
            black_level=BLACK,
            white_level=WHITE,
        )
    )
    student = serving.load_student(tiny_student)
    mosaics, _ = serving.pipeline_mosaics(student, sources.get_source("embedded"), "test", 3)
    counts = np.round(BLACK + np.clip(mosaics[..., 0], 0, 1) * (WHITE - BLACK)).astype(np.uint16)
    files = {}
    for i, c in enumerate(counts):
        files[f"u16_{i}"] = root / f"u16_{i}.npy"
        np.save(files[f"u16_{i}"], c)
        files[f"float_{i}"] = root / f"float_{i}.npy"
        np.save(files[f"float_{i}"], ((c.astype(np.float64) - BLACK) / (WHITE - BLACK)).astype(np.float32))
        files[f"dng_{i}"] = root / f"dng_{i}.dng"
        rawio.write_dng(files[f"dng_{i}"], c, student.cfa, BLACK, WHITE)
    return root / "deploy", student, files


def test_float32_top5_matches_keras(setup):
    deploy, student, files = setup
    labels = (deploy / "labels.txt").read_text().splitlines()
    paths = (
        [files[f"float_{i}"] for i in range(3)]
        + [files[f"u16_{i}"] for i in range(3)]
        + [files[f"dng_{i}"] for i in range(3)]
    )
    results = predict.predict(deploy / "model_float32.tflite", paths)
    for i in range(3):
        mosaic = np.load(files[f"float_{i}"])[np.newaxis, ..., np.newaxis]
        probs = parity.keras_probabilities(student, mosaic)[0]
        expected = [labels[k] for k in np.argsort(-probs)[:5]]
        for kind in ("float", "u16", "dng"):
            ranked = results[str(files[f"{kind}_{i}"])]
            assert [label for label, _ in ranked] == expected, kind
            np.testing.assert_allclose([p for _, p in ranked], np.sort(probs)[::-1][:5], atol=1e-4)


def test_int8_top5(setup):
    deploy, _, files = setup
    results = predict.predict(deploy / "model_int8.tflite", [files["dng_0"]], k=5)
    ranked = results[str(files["dng_0"])]
    labels = (deploy / "labels.txt").read_text().splitlines()
    assert len(ranked) == 5 and all(label in labels for label, _ in ranked)
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_bad_inputs(setup, tmp_path):
    deploy, _, files = setup
    model = deploy / "model_int8.tflite"
    cases = {
        "odd.npy": (np.zeros((31, 32), np.float32), "mosaic is 31x32; a Bayer mosaic needs even height and width"),
        "int.npy": (np.zeros((32, 32), np.int32), r"dtype int32; expected float32 in \[0, 1\] or uint16"),
        "small.npy": (np.zeros((16, 16), np.float32), "mosaic is 16x16 but the model takes 32x32"),
        "rgb.npy": (np.zeros((32, 32, 3), np.float32), r"shape \(32, 32, 3\); a mosaic is \[H, W\]"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(UserError, match=message):
            predict.predict(model, [tmp_path / name])
    lone = tmp_path / "lone" / "model_int8.tflite"
    lone.parent.mkdir()
    shutil.copy(model, lone)
    with pytest.raises(UserError, match="no manifest.json beside it"):
        predict.predict(lone, [files["float_0"]])


def test_cli(setup, tmp_path):
    deploy, _, files = setup
    model = deploy / "model_int8.tflite"
    ok = subprocess.run(
        [sys.executable, "-m", "isp_keras.predict", f"--model={model}", str(files["dng_1"]), str(files["float_1"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{files['dng_1']}: ") and lines[0].count(",") == 4
    np.save(tmp_path / "odd.npy", np.zeros((32, 30), np.float16))
    bad = subprocess.run(
        [sys.executable, "-m", "isp_keras.predict", f"--model={model}", str(tmp_path / "odd.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'odd.npy'}: dtype float16; expected float32 in [0, 1] or uint16 sensor counts"
    ]


def test_read_mosaic_of_a_sensor_dump(tmp_path):
    """A headerless dump reaches the model input through the --raw_* format (no export needed: only the manifest's
    CFA and input shape are read)."""
    from isp_keras.raw.dumps import SensorFormat

    counts = np.random.default_rng(5).integers(BLACK, WHITE + 1, (32, 34)).astype("<u2")
    counts.tofile(tmp_path / "shot.raw")
    manifest = {"cfa": "RGGB", "input": {"shape": [1, 32, 32, 1]}}
    fmt = SensorFormat(width=34, height=32, bits=10, cfa="GRBG", black=(BLACK,), white=WHITE)
    x = predict.read_mosaic(tmp_path / "shot.raw", manifest, fmt)
    want = ((counts[:, 1:33].astype(np.float64) - BLACK) / (WHITE - BLACK)).astype(np.float32)
    np.testing.assert_array_equal(x[..., 0], want)
    with pytest.raises(UserError, match="shot.raw: a headerless sensor dump needs its format"):
        predict.read_mosaic(tmp_path / "shot.raw", manifest)
