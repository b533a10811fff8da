"""The paper-experiment commands (table, sweep, ablation) end to end on a tiny slice, and their flagfiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from isp_keras.errors import UserError
from isp_keras.experiments import ablation, common, sweep, table

REPO = Path(__file__).resolve().parent.parent
FLAGFILES = sorted(p.name for p in (REPO / "flags").glob("*.flags") if not p.name.startswith("hdrplus_"))


def kind_of(flagfile: str) -> str:
    return "sweep" if "sweep" in flagfile else ("ablation" if "ablation" in flagfile else "table")


def parse(kind: str, *argv: str) -> common.Options:
    """Parse argv with the command's own flag definitions, in a fresh FlagValues (no global flag state)."""
    fv = flags.FlagValues()
    common.define_flags(kind, fv)
    fv(["prog", *argv])
    opts = common.options_from_flags(kind, fv, command=" ".join(argv))
    opts.verbose = 0
    return opts


def tiny_argv(teacher, out, *extra):
    return (f"--teacher={teacher}", f"--model_dir={out}", "--epochs=1", "--batch_size=32", "--train_take=96",
            "--test_take=64", "--stats_images=128", "--lr=0.05", *extra)


def check_rows(rows, names):
    assert [r["name"] for r in rows] == list(names)
    for r in rows:
        assert set(r) == {"name", "top1", "top5", "agreement"}
        for key in ("top1", "top5", "agreement"):
            assert isinstance(r[key], float) and 0.0 <= r[key] <= 100.0, (r["name"], key, r[key])
        assert r["top5"] >= r["top1"]


def student_weights(teacher_path, row_dir) -> dict:
    """A row's trained student weights (from its last checkpoint), by variable path."""
    import keras

    from isp_keras.models import students
    from isp_keras.training import checkpoint

    student = students.student_from_teacher(keras.saving.load_model(teacher_path, compile=False))
    student.load_weights(Path(checkpoint.read_checkpoint_state(row_dir)["path"]) / "student.weights.h5")
    return {v.path: v.numpy() for v in student.weights}


def test_flagfiles_exist():
    for name in ("embedded.flags", "imagenet_resnet18.flags", "imagenet_mobilenetv2.flags",
                 "embedded_sweep.flags", "embedded_ablation.flags"):
        assert name in FLAGFILES


@pytest.mark.parametrize("flagfile", FLAGFILES)
def test_every_flagfile_parses_and_dry_runs_offline(flagfile, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # flagfiles name each other and the teacher relative to the repository
    kind = kind_of(flagfile)
    opts = parse(kind, f"--flagfile=flags/{flagfile}", "--dry_run")
    assert opts.dry_run
    text = common.plan_text(opts)
    for row in opts.rows:
        assert row.name in text
    assert opts.cfg.epochs >= 1 and opts.cfg.lr > 0
    if flagfile.startswith("imagenet"):
        assert opts.cfg.dataset == "tfds:imagenet2012" and opts.cfg.image_size == 224
        assert "224, 224, 3) float32, teacher input" in text  # the pipeline was built (on a stand-in source)
        assert opts.cfg.epochs == 4
    if kind == "sweep":
        assert len(opts.noise_stds) >= 3 and len(text.splitlines()) > len(opts.noise_stds) * len(opts.rows)
    if kind == "ablation":
        assert [r.name for r in opts.rows][-1] == "finetune_all"
        assert any(r.name.startswith("finetune_first_") for r in opts.rows)


def test_cli_dry_run_and_one_line_errors():
    run = dict(cwd=REPO, capture_output=True, text=True, timeout=120)
    ok = subprocess.run([sys.executable, "-m", "isp_keras.experiments.sweep",
                         "--flagfile=flags/imagenet_mobilenetv2.flags", "--noise_stds=0,0.2", "--dry_run"], **run)
    assert ok.returncode == 0, ok.stderr
    assert "noise_0.2/distilled" in ok.stdout and "keras.applications.MobileNetV2" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "isp_keras.experiments.sweep", "--noise_stds=0,abc", "--dry_run"],
                         **run)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --noise_stds=0,abc")
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("kind, argv, needle", [
    ("table", ["--rows=gt_labels,bogus"], "--rows: unknown row 'bogus'"),
    ("table", ["--rows=distilled,distilled"], "repeated"),
    ("sweep", ["--noise_stds=0.1,-0.2"], "negative"),
    ("ablation", ["--finetune_ks=0,1"], "--finetune_ks"),
    ("ablation", ["--finetune_ks=one"], "--finetune_ks"),
])
def test_bad_experiment_flags_name_the_flag(kind, argv, needle):
    with pytest.raises(UserError, match=needle.replace("-", r"\-")):
        parse(kind, *argv)


def test_table_end_to_end_resumes_and_guards_settings(tiny_teacher, tmp_path, monkeypatch):
    out = tmp_path / "table"
    results = table.run(parse("table", *tiny_argv(tiny_teacher, out)))
    check_rows(results["rows"], common.TABLE_ROWS)
    assert results["config"]["epochs"] == 1 and results["wall_seconds"] > 0
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == results["rows"]
    md = (out / "results.md").read_text()
    for name in common.TABLE_ROWS:
        assert f"| {name} |" in md
        assert list((out / name / "logs" / "test").glob("events.out.tfevents.*")), name  # TensorBoard, per row
    for name in ("gt_labels", "teacher_labels", "distilled"):
        assert list((out / name / "logs" / "train").glob("events.out.tfevents.*")), name
    by_name = {r["name"]: r for r in results["rows"]}
    assert by_name["teacher_clean"]["agreement"] == 100.0
    weights = {n: student_weights(tiny_teacher, out / n) for n in ("gt_labels", "teacher_labels", "distilled")}
    for a, b in (("gt_labels", "teacher_labels"), ("gt_labels", "distilled")):  # three rows, not one row thrice
        assert not np.array_equal(weights[a]["logits/kernel"], weights[b]["logits/kernel"])

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(common.experiment, "train_student", no_training)
    again = table.run(parse("table", *tiny_argv(tiny_teacher, out)))
    assert again["rows"] == results["rows"]
    with pytest.raises(UserError, match=r"--lr=0.05 \(now 0.1\)"):
        table.run(parse("table", *tiny_argv(tiny_teacher, out), "--lr=0.1"))


def test_sweep_end_to_end_json_and_plot(tiny_teacher, tmp_path):
    from PIL import Image

    out = tmp_path / "sweep"
    results = sweep.run(parse("sweep", *tiny_argv(tiny_teacher, out, "--noise_stds=0,0.3")))
    on_disk = json.loads((out / "results.json").read_text())
    assert [level["noise_std"] for level in on_disk["sweep"]] == [0.0, 0.3]
    for level in on_disk["sweep"]:
        check_rows(level["rows"], common.TABLE_ROWS)
    assert "noise_std" not in on_disk["config"] and on_disk["config"]["noise_stds"] == [0.0, 0.3]
    assert on_disk == json.loads(json.dumps(results))
    # The clean-RGB teacher does not see the noise; the RAW rows do.
    clean = [level["rows"][0]["top1"] for level in on_disk["sweep"]]
    assert clean[0] == clean[1]
    png = out / common.PLOT_FILE
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == common.PLOT_SIZE
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # something was drawn
    md = (out / "results.md").read_text()
    assert "std 0.3" in md and "| distilled |" in md


def test_ablation_freezes_what_it_says(tiny_teacher, tmp_path):
    import keras

    out = tmp_path / "ablation"
    results = ablation.run(parse("ablation", *tiny_argv(tiny_teacher, out, "--finetune_ks=1")))
    check_rows(results["rows"], ["teacher_clean", "teacher_raw", "finetune_first_1", "finetune_all"])
    assert results["finetune_ks"] == [1]

    start = {v.path: v.numpy() for v in keras.saving.load_model(tiny_teacher, compile=False).weights}
    first = student_weights(tiny_teacher, out / "finetune_first_1")
    changed = {path for path in start if not np.array_equal(start[path], first[path])}
    # resnet_tiny: stem + stage1 train; stage2 (BatchNorm statistics included) and the classifier stay the teacher's.
    assert changed and all(p.split("/")[0].split("_")[0] in ("stem", "stage1") for p in changed), sorted(changed)
    assert any("stage1_block1_conv1" in p for p in changed)
    assert any("stem_bn" in p and "moving_mean" in p for p in changed)
    frozen = [p for p in start if p.split("/")[0].split("_")[0] in ("stage2", "logits")]
    assert frozen and all(np.array_equal(start[p], first[p]) for p in frozen)
    everything = student_weights(tiny_teacher, out / "finetune_all")
    assert not np.array_equal(start["logits/kernel"], everything["logits/kernel"])
    assert not np.array_equal(start["stage2_block1_conv2/kernel"], everything["stage2_block1_conv2/kernel"])


def test_mobilenetv2_ablation_counts_17_blocks(monkeypatch):
    """keras.applications.MobileNetV2 names its blocks block_<n>_*; the ablation must see 17 of them, not one."""
    monkeypatch.chdir(REPO)
    common.plan_text(parse("ablation", "--flagfile=flags/imagenet_mobilenetv2_ablation.flags", "--finetune_ks=2,17",
                           "--dry_run"))
    with pytest.raises(UserError, match="k=18 but the model has 17 stages/blocks"):
        common.plan_text(parse("ablation", "--flagfile=flags/imagenet_mobilenetv2_ablation.flags",
                               "--finetune_ks=18", "--dry_run"))


def test_ablation_rejects_k_beyond_the_model(tiny_teacher, tmp_path):
    with pytest.raises(UserError, match="--finetune_ks=3: k=3 but the model has 2 stages/blocks"):
        ablation.run(parse("ablation", *tiny_argv(tiny_teacher, tmp_path / "bad", "--finetune_ks=1,3")))
