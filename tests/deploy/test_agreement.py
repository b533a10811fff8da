"""deploy.agreement (Table 2 on real files): figures against hand-counted tiles, and the whole evaluation on DNGs of
real CIFAR-10 test images whose RGB LibRaw renders, against the Keras student and teacher run directly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from isp_keras.data import pairs, pipeline, synthetic_bursts
from isp_keras.deploy import agreement, parity, serving
from isp_keras.errors import UserError
from isp_keras.models import teachers
from isp_keras.raw import rawio


def test_figures_count_by_hand():
    rows = [
        agreement.Rows(
            np.array([3, 1, 4, 1]),
            np.array([0.9, 0.5, 0.95, 0.85]),
            {"s": np.array([[3, 0, 0, 0, 0], [2, 1, 0, 0, 0], [0, 4, 9, 9, 9], [5, 6, 7, 8, 9]])},
        ),
        agreement.Rows(np.array([7]), np.array([0.99]), {"s": np.array([[7, 1, 2, 3, 4]])}),
    ]
    f = agreement.figures(rows, 0.8)["s"]
    # confident tiles: 0, 2, 3 of the first file and the second file's; top-1 hits: 0 and the second file's
    assert f == {"agreement": 50.0, "agreement_top5": 75.0, "agreement_all": 40.0, "confident_tiles": 4, "tiles": 5}
    assert agreement.figures(rows[:1], 0.99)["s"]["agreement"] is None


def test_student_names():
    assert agreement.parse_students(["a=runs/x", "runs/y/"]) == [("a", "runs/x"), ("y", "runs/y/")]
    with pytest.raises(UserError, match="the name 'a' is used twice"):
        agreement.parse_students(["a=x", "a=y"])
    with pytest.raises(UserError, match="reserved teacher_raw"):
        agreement.parse_students(["teacher_raw=x"])


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory):
    """Three 12-bit DNGs of 2x3 real CIFAR-10 test images each (64x96, RGGB and the file phases around it)."""
    root = tmp_path_factory.mktemp("real")
    images, _ = synthetic_bursts.embedded_images("test", 18)
    for i, cfa in enumerate(("RGGB", "GBRG", "BGGR")):
        tiles = images[6 * i : 6 * i + 6].astype(np.float64) / 255.0
        rgb = np.concatenate([np.concatenate(list(tiles[r * 3 : r * 3 + 3]), axis=1) for r in range(2)], axis=0)
        sites = rawio.bayer.cfa_masks(64, 96, cfa)
        counts = np.round(64 + (rgb**2.2 * sites).sum(-1) * (4000 - 64)).astype(np.uint16)
        rawio.write_dng(root / f"shot_{i}.dng", counts, cfa, 64, 4000, wb_gains=(1, 1, 1))
    return root


def test_evaluation_matches_the_models_run_directly(raw_folder, tiny_student, tmp_path):
    result = agreement.evaluate(f"raw:{raw_folder}", [f"s={tiny_student}"], str(tmp_path / "out"), min_teacher_prob=0.3)
    student = serving.load_student(tiny_student)
    teacher, _ = teachers.load_teacher(student.teacher)
    t1, sure, s1 = [], [], []
    for name in ("shot_0.dng", "shot_1.dng", "shot_2.dng"):
        mosaic, rgb = pairs.aligned_pair(pairs.Pair(str(raw_folder / name), pairs.LIBRAW, name), student.cfa)
        raws, rgbs, _ = pairs.cut_patches(mosaic, rgb, 32)
        tp = teacher(pipeline.teacher_input(rgbs.astype(np.float32) / 255.0, norm=student.norm)).numpy()
        t1.append(tp.argmax(-1))
        sure.append(np.exp(tp).max(-1) / np.exp(tp).sum(-1) > 0.3)
        s1.append(parity.keras_probabilities(student, raws[..., None]).argmax(-1))
    t1, sure, s1 = map(np.concatenate, (t1, sure, s1))
    row = result["rows"]["s"]
    assert row["tiles"] == len(t1) == sum(f["tiles"] for f in result["files"]) and row["confident_tiles"] == sure.sum()
    assert row["agreement"] == pytest.approx(100.0 * (s1 == t1)[sure].mean())
    assert row["agreement_all"] == pytest.approx(100.0 * (s1 == t1).mean())
    assert set(result["rows"]) == {"teacher_raw", "s"} and result["rgb_source"] == "LibRaw's rendering"
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rows"] == result["rows"] and "| s |" in (tmp_path / "out" / "results.md").read_text()


def test_cli_and_bad_input(raw_folder, tiny_student, tmp_path):
    (raw_folder / "broken.dng").write_bytes(b"II*\x00 nothing else")
    try:
        out = tmp_path / "cli"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "isp_keras.experiments.real_raw",
                f"--pairs=raw:{raw_folder}",
                f"--students=s={tiny_student}",
                f"--out={out}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        (raw_folder / "broken.dng").unlink()
    assert run.returncode == 0, run.stderr
    assert "| s |" in run.stdout and "| broken.dng | skipped: " in run.stdout
    assert json.loads((out / "results.json").read_text())["pairs_read"] == 3


def test_no_students_is_one_line(raw_folder, capsys, run_command):
    from isp_keras.deploy.config import RealRawConfig
    from isp_keras.experiments import real_raw

    assert run_command(RealRawConfig, real_raw.run, [f"--pairs=raw:{raw_folder}"]) == 2
    assert capsys.readouterr().err.strip() == "error: --students: give one or more trained students (NAME=RUN_DIR)"


def test_bin_pair_shrinks_both_sides_alike():
    rng = np.random.default_rng(0)
    mosaic = rng.random((26, 38)).astype(np.float32)
    rgb = rng.integers(0, 256, (26, 38, 3)).astype(np.uint8)
    binned, small = agreement.bin_pair(mosaic, rgb, 3)
    assert binned.shape == small.shape[:2] == (8, 12)
    assert binned[3, 5] == pytest.approx(mosaic[6 + 1 : 12 : 2, 12 + 1 : 18 : 2].mean(), abs=1e-6)  # site (1, 1)
    assert small[3, 5, 2] == np.round(rgb[9:12, 15:18, 2].astype(np.float64).mean())
    same = agreement.bin_pair(mosaic, rgb, 1)
    assert same[0] is mosaic and same[1] is rgb
