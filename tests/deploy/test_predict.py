"""predict: LiteRT top-5 on .npy mosaics (float and uint16) and DNGs of real CIFAR-10 test mosaics, against the
Keras student; whole photos by tiles, binning and centre crop against the single-mosaic predictions; one-line errors
for odd sizes, wrong dtypes and missing export files, and a bad file among good ones."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from isp_keras import predict as predict_command
from isp_keras.data import sources
from isp_keras.deploy import export, parity, predict, runtime, serving
from isp_keras.deploy.config import ExportConfig, PredictConfig
from isp_keras.errors import UserError
from isp_keras.raw import rawio

BLACK, WHITE = 64, 1023
DIAGONAL = {"RGGB": "BGGR", "BGGR": "RGGB", "GRBG": "GBRG", "GBRG": "GRBG"}


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
            float_head=True,
            parity_gate=False,
            black_level=BLACK,
            white_level=WHITE,
        )
    )
    student = serving.load_student(tiny_student)
    mosaics, _ = serving.pipeline_mosaics(student, sources.get_source("embedded"), "test", 6)
    counts = np.round(BLACK + np.clip(mosaics[..., 0], 0, 1) * (WHITE - BLACK)).astype(np.uint16)
    files = {}
    for i, c in enumerate(counts[:3]):
        files[f"u16_{i}"] = root / f"u16_{i}.npy"
        np.save(files[f"u16_{i}"], c)
        files[f"float_{i}"] = root / f"float_{i}.npy"
        np.save(files[f"float_{i}"], ((c.astype(np.float64) - BLACK) / (WHITE - BLACK)).astype(np.float32))
        files[f"dng_{i}"] = root / f"dng_{i}.dng"
        rawio.write_dng(files[f"dng_{i}"], c, student.cfa, BLACK, WHITE)
    floats = ((counts.astype(np.float64) - BLACK) / (WHITE - BLACK)).astype(np.float32)
    files["tiles"] = floats
    photo = np.block([[floats[0], floats[1], floats[2]], [floats[3], floats[4], floats[5]]])
    files["photo"] = root / "photo.npy"
    np.save(files["photo"], photo)
    # the same photo in a DNG whose visible area starts one row and one column earlier: the file's CFA phase is the
    # diagonal opposite, the reader crops that row and column, and tiles are reported where they sit in the file
    shifted = np.pad(np.block([[counts[0], counts[1], counts[2]], [counts[3], counts[4], counts[5]]]), 1, mode="edge")
    files["photo_dng"] = root / "photo.dng"
    rawio.write_dng(files["photo_dng"], shifted, DIAGONAL[student.cfa], BLACK, WHITE)
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
            ranked = results[str(files[f"{kind}_{i}"])].top
            assert [label for label, _ in ranked] == expected, kind
            np.testing.assert_allclose([p for _, p in ranked], np.sort(probs)[::-1][:5], atol=1e-4)


def test_int8_top5(setup):
    deploy, _, files = setup
    results = predict.predict(deploy / "model_int8.tflite", [files["dng_0"]], k=5)
    ranked = results[str(files["dng_0"])].top
    labels = (deploy / "labels.txt").read_text().splitlines()
    assert len(ranked) == 5 and all(label in labels for label, _ in ranked)
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_int8_float_head_reads_the_file_like_the_runner(setup):
    deploy, _, files = setup
    model = deploy / "model_int8_float_head.tflite"
    labels = (deploy / "labels.txt").read_text().splitlines()
    results = predict.predict(model, [files[f"dng_{i}"] for i in range(3)], k=5)
    runner = runtime.TFLiteRunner(model)
    for i in range(3):
        probs = runner.invoke(np.load(files[f"float_{i}"])[np.newaxis, ..., np.newaxis])[0]
        ranked = results[str(files[f"dng_{i}"])].top
        assert [label for label, _ in ranked] == [labels[k] for k in np.argsort(-probs)[:5]]
        np.testing.assert_allclose([p for _, p in ranked], np.sort(probs)[::-1][:5], atol=1e-6)


def tile_probabilities(deploy, mosaics):
    runner = runtime.TFLiteRunner(deploy / "model_float32.tflite")
    return runner.invoke(np.asarray(mosaics, np.float32)[..., np.newaxis])


def test_whole_photo_tiles(setup):
    deploy, _, files = setup
    labels = (deploy / "labels.txt").read_text().splitlines()
    probs = tile_probabilities(deploy, files["tiles"])
    mean = probs.mean(axis=0)
    results = predict.predict(deploy / "model_float32.tflite", [files["photo"], files["photo_dng"]], batch_size=4)
    for path, origin in ((files["photo"], 0), (files["photo_dng"], 1)):
        r = results[str(path)]
        assert not r.error and r.mosaic_shape == (64, 96) and r.bin_factor == 1
        assert [(t.y, t.x, t.size) for t in r.tiles] == [
            (origin + y, origin + x, 32) for y in (0, 32) for x in (0, 32, 64)
        ]
        for tile, p in zip(r.tiles, probs, strict=True):
            assert [label for label, _ in tile.top] == [labels[k] for k in np.argsort(-p)[:5]]
        assert [label for label, _ in r.top] == [labels[k] for k in np.argsort(-mean)[:5]]
        np.testing.assert_allclose([p for _, p in r.top], np.sort(mean)[::-1][:5], atol=1e-5)


def test_whole_photo_bin_and_center(setup, tmp_path):
    deploy, _, files = setup
    labels = (deploy / "labels.txt").read_text().splitlines()
    mosaic = files["tiles"][2]
    expected = [labels[k] for k in np.argsort(-tile_probabilities(deploy, mosaic[np.newaxis])[0])[:5]]
    h, w = mosaic.shape
    sites = mosaic.reshape(h // 2, 1, 2, w // 2, 1, 2)
    big = np.broadcast_to(sites, (h // 2, 3, 2, w // 2, 3, 2)).reshape(3 * h, 3 * w)  # each site x3 in its colour
    np.save(tmp_path / "big.npy", np.pad(big, ((0, 4), (0, 10))))
    np.save(tmp_path / "framed.npy", np.pad(mosaic, ((20, 20), (6, 6))))
    model = deploy / "model_float32.tflite"
    binned = predict.predict(model, [tmp_path / "big.npy"], fit="bin")[str(tmp_path / "big.npy")]
    assert binned.bin_factor == 3 and [(t.y, t.x, t.size) for t in binned.tiles] == [(0, 0, 96)]
    assert [label for label, _ in binned.top] == expected
    center = predict.predict(model, [tmp_path / "framed.npy"], fit="center")[str(tmp_path / "framed.npy")]
    assert [(t.y, t.x, t.size) for t in center.tiles] == [(20, 6, 32)]
    assert [label for label, _ in center.top] == expected


def test_bad_inputs(setup, tmp_path):
    deploy, _, files = setup
    model = deploy / "model_int8.tflite"
    cases = {
        "odd.npy": (np.zeros((31, 32), np.float32), "mosaic is 31x32; a Bayer mosaic needs even height and width"),
        "int.npy": (np.zeros((32, 32), np.int32), r"dtype int32; expected float32 in \[0, 1\] or uint16"),
        "small.npy": (np.zeros((16, 16), np.float32), "mosaic is 16x16, smaller than the model's 32x32 input"),
        "rgb.npy": (np.zeros((32, 32, 3), np.float32), r"shape \(32, 32, 3\); a mosaic is \[H, W\]"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        results = predict.predict(model, [tmp_path / name, files["float_0"]])
        assert re.fullmatch(f"{re.escape(str(tmp_path / name))}: {message}.*", results[str(tmp_path / name)].error)
        assert not results[str(files["float_0"])].error and len(results[str(files["float_0"])].top) == 5
    lone = tmp_path / "lone" / "model_int8.tflite"
    lone.parent.mkdir()
    shutil.copy(model, lone)
    with pytest.raises(UserError, match="no manifest.json beside it"):
        predict.predict(lone, [files["float_0"]])


def test_cli(setup, capsys, run_command):
    """Files of two formats, one line each; the command line itself (start-up, no INFO lines unless --verbosity=1)
    also runs in the README walkthrough."""
    deploy, _, files = setup
    model = deploy / "model_int8.tflite"
    argv = [f"--model={model}", str(files["dng_1"]), str(files["float_1"])]
    assert run_command(PredictConfig, predict_command.run, argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{files['dng_1']}: ") and lines[0].count(",") == 4
    assert lines[1].startswith(f"{files['float_1']}: ") and lines[1].count(",") == 4
    loud = subprocess.run(
        [sys.executable, "-m", "isp_keras.predict", f"--model={model}", "--verbosity=1", str(files["dng_1"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loud.returncode == 0 and loud.stdout.splitlines()[0] == lines[0]
    assert "XNNPACK delegate" in loud.stderr


def test_a_bad_file_alone_is_one_line(setup, tmp_path, capsys, run_command):
    deploy, _, _ = setup
    np.save(tmp_path / "odd.npy", np.zeros((32, 30), np.float16))
    argv = [f"--model={deploy / 'model_int8.tflite'}", str(tmp_path / "odd.npy")]
    assert run_command(PredictConfig, predict_command.run, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'odd.npy'}: dtype float16; expected float32 in [0, 1] or uint16 sensor counts"
    ]


def test_cli_whole_photos_with_a_bad_file(setup, tmp_path, capsys, run_command):
    deploy, _, files = setup
    model = deploy / "model_int8.tflite"
    bad = tmp_path / "odd.npy"
    np.save(bad, np.zeros((33, 64), np.float32))
    out = {"json": tmp_path / "p.json", "tiles_out": tmp_path / "tiles.csv", "overlay_dir": tmp_path / "pictures"}
    args = [f"--{k}={v}" for k, v in out.items()]
    status = run_command(
        PredictConfig, predict_command.run, [f"--model={model}", *args, str(files["photo_dng"]), str(bad)]
    )
    run = capsys.readouterr()
    assert status == 2 and "Traceback" not in run.err
    assert run.out.startswith(f"{files['photo_dng']} (6 tiles): ") and run.out.count("\n") == 1
    assert [line for line in run.err.splitlines() if line.startswith("error:")] == [
        f"error: {bad}: mosaic is 33x64; a Bayer mosaic needs even height and width",
        "error: 1 of 2 files failed",
    ]
    saved = json.loads(out["json"].read_text())
    assert saved[str(bad)] == {"error": f"{bad}: mosaic is 33x64; a Bayer mosaic needs even height and width"}
    assert saved[str(files["photo_dng"])]["tile_count"] == 6 and len(saved[str(files["photo_dng"])]["top"]) == 5
    rows = out["tiles_out"].read_text().splitlines()
    assert rows[0].startswith("file,tile,y,x,size,label_1,probability_1") and len(rows) == 7
    assert rows[6].startswith(f"{files['photo_dng']},5,33,65,32,")
    assert (out["overlay_dir"] / "photo.dng.png").stat().st_size > 0
    assert run_command(PredictConfig, predict_command.run, [f"--model={model}", "--tiles_out=t.txt", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == "error: --tiles_out=t.txt: give a .json or .csv path"


def test_read_mosaic_of_a_sensor_dump(tmp_path):
    """A headerless dump reaches the model input through the --raw_* format (no export needed: only the manifest's
    CFA and input shape are read)."""
    from isp_keras.raw.dumps import SensorFormat

    counts = np.random.default_rng(5).integers(BLACK, WHITE + 1, (32, 34)).astype("<u2")
    counts.tofile(tmp_path / "shot.raw")
    manifest = {"cfa": "RGGB", "input": {"shape": [1, 32, 32, 1]}}
    fmt = SensorFormat(width=34, height=32, bits=10, cfa="GRBG", black=(BLACK,), white=WHITE)
    x, offset = predict.read_mosaic(tmp_path / "shot.raw", manifest, fmt)
    want = ((counts[:, 1:33].astype(np.float64) - BLACK) / (WHITE - BLACK)).astype(np.float32)
    np.testing.assert_array_equal(x, want)
    assert offset == (0, 1)
    with pytest.raises(UserError, match="shot.raw: a headerless sensor dump needs its format"):
        predict.read_mosaic(tmp_path / "shot.raw", manifest)
