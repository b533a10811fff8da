"""The paper-experiment commands (table, sweep, ablation) end to end on a tiny slice, and their flagfiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from isp_keras import config
from isp_keras.errors import UserError
from isp_keras.training.config import DEFAULT_TABLE_ROWS, AblationConfig, SweepConfig, TableConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]
FLAGFILES = sorted(p.name for p in (REPO / "flags").glob("*.flags") if not p.name.startswith("hdrplus_"))
CONFIGS = {"table": TableConfig, "sweep": SweepConfig, "ablation": AblationConfig}
METRICS = ("top1", "top5", "agreement", "agreement_top5")
pytestmark = pytest.mark.usefixtures("eager_functions")


def kind_of(flagfile: str) -> str:
    return "sweep" if "sweep" in flagfile else ("ablation" if "ablation" in flagfile else "table")


def parse(kind: str, *argv: str):
    """The command's config from argv, with its own generated flags in a fresh FlagValues (no global flag state)."""
    fv = flags.FlagValues()
    config.define_flags(CONFIGS[kind], fv)
    fv(["prog", *argv])
    return config.from_flags(CONFIGS[kind], fv)


def run(kind: str, *argv: str) -> dict:
    """The library entry point the command calls, with a known command line."""
    from isp_keras.training import experiments

    return experiments.table(parse(kind, *argv), kind, f"test {kind}")


def tiny_argv(teacher, out, *extra):
    return (
        f"--teacher={teacher}",
        f"--model_dir={out}",
        "--epochs=1",
        "--batch_size=32",
        "--train_take=96",
        "--test_take=64",
        "--stats_images=128",
        "--lr=0.05",
        *extra,
    )


def check_rows(rows, names, tag=None):
    """Rows of name/top1/top5/agreement in percent, plus the level's tag (a sweep's noise_std) if any."""
    assert [r["name"] for r in rows] == list(names)
    for r in rows:
        assert set(r) == {"name", *METRICS, *(tag or {})}, r
        assert {k: r[k] for k in (tag or {})} == (tag or {})
        for key in METRICS:
            assert isinstance(r[key], float) and 0.0 <= r[key] <= 100.0, (r["name"], key, r[key])
        assert r["top5"] >= r["top1"]


def student_weights(teacher_path, row_dir) -> dict:
    """A row's trained student weights (the final weights the row saved), by variable path."""
    import keras

    from isp_keras.models import students
    from isp_keras.training import rundir

    student = students.student_from_teacher(keras.saving.load_model(teacher_path, compile=False))
    student.load_weights(Path(row_dir) / rundir.STUDENT_WEIGHTS)
    return {v.path: v.numpy() for v in student.weights}


def no_training(*args, **kwargs):
    raise AssertionError("a finished row was trained again")


def test_flagfiles_exist():
    for name in (
        "embedded.flags",
        "imagenet_resnet18.flags",
        "imagenet_mobilenetv2.flags",
        "embedded_sweep.flags",
        "embedded_ablation.flags",
        "imagenette_fast.flags",
    ):
        assert name in FLAGFILES


@pytest.mark.parametrize("flagfile", FLAGFILES)
def test_every_flagfile_parses_and_dry_runs_offline(flagfile, monkeypatch, capsys, tmp_path):
    from isp_keras.training import dryrun, experiments

    monkeypatch.chdir(REPO)  # flagfiles name each other relative to the repository
    kind = kind_of(flagfile)
    cfg = parse(kind, f"--flagfile=flags/{flagfile}", "--dry_run")
    assert cfg.dry_run and not cfg.model_dir
    assert experiments.plan_for(kind, cfg).out == Path("runs") / kind  # the default run directory
    cfg.model_dir = str(tmp_path / "run")
    plan = experiments.plan_for(kind, cfg)
    results = experiments.table(cfg, kind, f"test {kind}")
    text = results["plan"]
    assert text == dryrun.plan_text(plan) and text in capsys.readouterr().out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    for row in plan.rows:
        assert row.name in text
    assert cfg.epochs >= 1 and cfg.lr > 0
    inputs = getattr(cfg, "student_inputs", [])
    for variant in inputs:
        assert f"/input_{variant}/" in text
    if flagfile.startswith("embedded"):
        assert cfg.teacher == "embedded" and "resnet20" in text  # resolved from the project, wherever we run
    if flagfile.startswith("imagenet_"):
        assert cfg.dataset == "tfds:imagenet2012" and cfg.image_size == 224
        assert "224, 224, 3) float32, teacher input" in text  # the pipeline was built (on a stand-in source)
        assert cfg.epochs == 4
    if flagfile.startswith(("imagenette", "frontier_")):
        assert cfg.teacher.endswith(".tflite") and cfg.dataset.startswith("folder:") and cfg.hard_labels == "teacher"
        assert cfg.epochs == 4 and cfg.alpha == 0.9 and cfg.temperature == 4 and cfg.noise_std == 0.1
        if flagfile.startswith("frontier_"):  # a smaller student of the MobileNetV2 teacher, at its own size
            assert cfg.teacher.endswith("mobilenet_v2_1.0_224_ptq.tflite") and cfg.student_init.endswith(
                "0.5_160_quant.tflite"
            )
            assert cfg.rows == ["teacher_clean", "teacher_raw", "student_clean", "student_raw", "distilled"]
            if "(tflite:" in text:  # the models are here (../shared): the student's size reaches the pipeline
                assert (
                    "(the student's 160 px)" in text and "160, 160, 3) float32, teacher input (64, 224, 224, 3)" in text
                )
        elif inputs:  # the inputs side by side: the deployable student of each
            assert cfg.rows == ["teacher_clean", "teacher_raw", "distilled", "distilled_qat"]
        elif kind == "table" and flagfile != "imagenette.flags":  # that one is the presets' shared base
            deployed = ["distilled_qat"] if flagfile == "imagenette_mobilenetv2.flags" else []  # the arm to deploy
            assert cfg.rows == [*DEFAULT_TABLE_ROWS, "distilled_gt", *deployed]
    elif flagfile.startswith("classes_"):  # the class regimes: the fast arm's budget, one data set each
        assert cfg.teacher.endswith("mobilenet_v1_0.5_160_quant.tflite") and cfg.hard_labels == "teacher"
        assert (cfg.epochs, cfg.batch_size, cfg.noise_std, cfg.cfa, cfg.alpha) == (4, 64, 0.1, "RGGB", 0.9)
        label_free = ["teacher_clean", "teacher_raw", "teacher_labels", "distilled", "distilled_kd"]
        if flagfile.endswith("_all.flags"):  # the larger run: both pairs, distilled_kd where it did not collapse
            assert cfg.row_lr("distilled_kd") == cfg.row_lr("teacher_labels") == 3e-4
        assert [r for r in cfg.rows if r not in ("gt_labels", "distilled_gt")] == label_free
        sizes = {
            "imagenette": None,
            "imagewoof": None,
            "mini_imagenet": (100, 40),
            "mini_imagenet_all": (500, 40),
            "tiny_imagenet": (50, 20),
        }
        assert (cfg.train_per_class, cfg.test_per_class) == (sizes[flagfile[8:-6]] or (None, None))
    elif inputs:
        assert [r.name for r in plan.rows] == ["teacher_clean", "teacher_raw", "distilled", "distilled_qat"]
    elif kind == "table":
        assert [r.name for r in plan.rows] == DEFAULT_TABLE_ROWS
    if kind == "sweep":
        assert len(cfg.noise_stds) >= 3 and len(text.splitlines()) > len(cfg.noise_stds) * len(plan.rows)
        assert [lvl.cfg.noise_std for lvl in plan.levels] == cfg.noise_stds
    if kind == "ablation":
        assert [r.name for r in plan.rows][-1] == "finetune_all"
        assert any(r.name.startswith("finetune_first_") for r in plan.rows)


def test_cli_dry_run(tmp_path):
    """The real command line (a flagfile, a flag over it, --dry_run): the plan, nothing written."""
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "isp_keras.experiments.sweep",
            "--flagfile=flags/imagenet_mobilenetv2.flags",
            "--noise_stds=0,0.2",
            "--dry_run",
            f"--model_dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "noise_0.2/distilled" in ok.stdout and "keras.applications.MobileNetV2" in ok.stdout
    assert not (tmp_path / "run").exists()


def test_commands_dry_run_and_one_line_errors(monkeypatch, capsys, run_command):
    """Parsed and run as the commands do, in this process."""
    from isp_keras.experiments import sweep, table

    monkeypatch.chdir(REPO)
    assert run_command(TableConfig, table.run, ["--flagfile=flags/embedded.flags", "--dry_run"]) == 0
    assert "runs/table/distilled" in capsys.readouterr().out
    assert run_command(SweepConfig, sweep.run, ["--noise_stds=0,abc", "--dry_run"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: --noise_stds") and "abc" in last, last
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "kind, argv, needle",
    [
        ("table", ["--rows=gt_labels,bogus"], "--rows: unknown row 'bogus'"),
        ("table", ["--rows=distilled,distilled"], "repeated"),
        ("sweep", ["--noise_stds=0.1,-0.2"], "negative"),
        ("sweep", ["--noise_stds=0,abc"], "--noise_stds"),
        ("ablation", ["--finetune_ks=0,1"], "--finetune_ks"),
        ("table", ["--student_inputs=infill,packed", "--raw_adapter_curve=0,0.6,1"], "--raw_adapter_curve: only"),
        ("table", ["--raw_adapter_lr_scale=10"], "--raw_adapter_lr_scale=10: the students have no RAW adapter"),
        ("table", ["--student_inputs=packed_curve", "--raw_adapter_lr_scale=0"], "must be a finite number > 0"),
        ("ablation", ["--finetune_ks=one"], "--finetune_ks"),
    ],
)
def test_bad_experiment_flags_name_the_flag(kind, argv, needle):
    with pytest.raises(UserError, match=needle.replace("-", r"\-")):
        parse(kind, *argv)


def test_table_end_to_end_resumes_and_guards_settings(tiny_teacher, tmp_path, monkeypatch):
    from isp_keras.training import experiment, rundir

    out = tmp_path / "table"
    students = ("gt_labels", "teacher_labels", "distilled")
    results = run("table", *tiny_argv(tiny_teacher, out))
    check_rows(results["rows"], DEFAULT_TABLE_ROWS)
    assert results["config"]["epochs"] == 1 and results["wall_seconds"] > 0
    assert results["experiment"] == "table" and results["command"] == "test table"
    assert set(results["row_seconds"]) == set(DEFAULT_TABLE_ROWS)
    on_disk = json.loads((out / rundir.RESULTS).read_text())
    assert on_disk == json.loads(json.dumps(results))
    record = json.loads((out / rundir.CONFIG_FILE).read_text())  # the resume guard's record
    assert record["command"] == "table" and record["config"]["lr"] == 0.05
    assert set(json.loads((out / rundir.NORM_FILE).read_text())) >= {"raw_mean", "raw_std", "rgb_mean", "rgb_std"}
    md = (out / rundir.RESULTS_MD).read_text()
    assert "Command: `test table`" in md
    for name in DEFAULT_TABLE_ROWS:
        assert f"| {name} |" in md
        assert list((out / name / "logs" / "test").glob("events.out.tfevents.*")), name  # TensorBoard, per row
        assert json.loads((out / name / rundir.ROW_FILE).read_text())["row"]["name"] == name
        assert (out / name / rundir.STUDENT_WEIGHTS).exists() == (name in students)
        assert (out / name / "student.keras").exists() == (name in students)  # exportable: --student=ROW_DIR
    for name in students:
        assert list((out / name / "logs" / "train").glob("events.out.tfevents.*")), name
    from isp_keras.deploy import serving

    row_student = serving.load_student(out / "distilled")
    assert (
        row_student.dataset == "embedded"
        and row_student.classes == json.loads((out / "distilled" / "student.json").read_text())["classes"]
    )
    by_name = {r["name"]: r for r in results["rows"]}
    assert by_name["teacher_clean"]["agreement"] == 100.0
    weights = {n: student_weights(tiny_teacher, out / n) for n in students}
    for a, b in (("gt_labels", "teacher_labels"), ("gt_labels", "distilled")):  # three rows, not one row thrice
        assert not np.array_equal(weights[a]["logits/kernel"], weights[b]["logits/kernel"])

    # A rerun skips every finished row (baselines included: no data is even read) and reports the same numbers;
    # settings that cannot change a number (rundir.RESUMABLE) may differ.
    monkeypatch.setattr(experiment, "train_student", no_training)
    monkeypatch.setattr(experiment, "build_setup", no_training)
    again = run("table", *tiny_argv(tiny_teacher, out), "--log_steps=5", "--checkpoint_epochs=2")
    assert again["rows"] == results["rows"] and again["row_seconds"] == results["row_seconds"]
    assert "log_steps" in rundir.RESUMABLE and "checkpoint_epochs" in rundir.RESUMABLE
    with pytest.raises(UserError, match=r"its rows were made with --lr=0.05 \(now 0.1\)"):
        run("table", *tiny_argv(tiny_teacher, out), "--lr=0.1")
    with pytest.raises(UserError, match=r"holds a table run, not a sweep run"):
        run("sweep", *tiny_argv(tiny_teacher, out))


def test_table_adds_rows_and_resumes_an_unfinished_one(tiny_teacher, tmp_path, monkeypatch):
    """More rows in the same run directory: only the new ones train. A row killed before its row.json was written
    trains again (from its last checkpoint: here the final one, so it ends with the same numbers); only that row."""
    from isp_keras.training import experiment, rundir

    out = tmp_path / "table"
    first = run("table", *tiny_argv(tiny_teacher, out, "--rows=teacher_clean,gt_labels"))
    check_rows(first["rows"], ["teacher_clean", "gt_labels"])
    trained = []
    real = experiment.train_student

    def counting(s, row, row_dir, **kwargs):
        trained.append(row.name)
        return real(s, row, row_dir, **kwargs)

    monkeypatch.setattr(experiment, "train_student", counting)
    more = run("table", *tiny_argv(tiny_teacher, out, "--rows=teacher_clean,gt_labels,teacher_labels"))
    assert trained == ["teacher_labels"]
    check_rows(more["rows"], ["teacher_clean", "gt_labels", "teacher_labels"])
    assert more["rows"][:2] == first["rows"]
    (out / "gt_labels" / rundir.ROW_FILE).unlink()
    again = run("table", *tiny_argv(tiny_teacher, out, "--rows=teacher_clean,gt_labels,teacher_labels"))
    assert trained == ["teacher_labels", "gt_labels"]
    assert again["rows"] == more["rows"]


def test_quantisation_aware_rows_from_the_teacher_and_from_the_float_student(tiny_teacher, tmp_path):
    """distilled_qat distils from the RGB teacher; distilled_qat_float takes its targets from the distilled row's
    float student on the same mosaics. Both start from that student and save int8-grid kernels; each needs the
    distilled row and --qat_epochs."""
    from isp_keras.models import teachers
    from isp_keras.training import plans

    cfg = parse("table", *tiny_argv(tiny_teacher, tmp_path / "t", "--rows=distilled,distilled_qat_float"))
    row = plans.table_rows(cfg, ["distilled_qat_float"])[0]
    assert (row.start_from, row.from_float, row.quantisation_aware, row.hard_labels) == (
        "distilled",
        True,
        True,
        "teacher",
    )
    assert "targets from row distilled's float student" in row.describe(cfg)
    assert ", 1 epoch at lr 0.002, quantisation-aware" in row.describe(cfg)
    out = tmp_path / "qat"
    results = run("table", *tiny_argv(tiny_teacher, out, "--rows=distilled,distilled_qat,distilled_qat_float"))
    check_rows(results["rows"], ["distilled", "distilled_qat", "distilled_qat_float"])
    weights = {}
    for name in ("distilled_qat", "distilled_qat_float"):
        student = teachers.load_model_file(out / name / "student.keras")
        kernel = student.get_layer("stem_conv").kernel.numpy()
        steps = kernel / (np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) / 127.0)
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
        weights[name] = kernel
    assert not np.allclose(weights["distilled_qat"], weights["distilled_qat_float"])  # other targets, other steps
    with pytest.raises(UserError, match=r"^--rows=distilled_qat_float: needs the distilled row"):
        parse("table", *tiny_argv(tiny_teacher, out, "--rows=teacher_raw,distilled_qat_float")).validate()


def test_sweep_end_to_end_json_and_plot(tiny_teacher, tmp_path, monkeypatch):
    from PIL import Image

    from isp_keras.training import experiment, report, rundir

    out = tmp_path / "sweep"
    results = run("sweep", *tiny_argv(tiny_teacher, out, "--noise_stds=0,0.3"))
    on_disk = json.loads((out / rundir.RESULTS).read_text())
    assert [level["noise_std"] for level in on_disk["sweep"]] == [0.0, 0.3]
    for level in on_disk["sweep"]:
        assert set(level) == {"noise_std", "rows"}
        check_rows(level["rows"], DEFAULT_TABLE_ROWS, {"noise_std": level["noise_std"]})
        level_dir = out / f"noise_{level['noise_std']:g}"
        assert (level_dir / rundir.NORM_FILE).exists()
        for name in DEFAULT_TABLE_ROWS:
            assert (level_dir / name / rundir.ROW_FILE).exists()
    assert "noise_std" not in on_disk["config"] and on_disk["config"]["noise_stds"] == [0.0, 0.3]
    assert on_disk["experiment"] == "sweep" and on_disk["plot"] == rundir.PLOT_FILE
    assert set(on_disk["row_seconds"]) == {f"noise_{s}/{n}" for s in ("0", "0.3") for n in DEFAULT_TABLE_ROWS}
    assert on_disk == json.loads(json.dumps(results))
    # Each level has its own statistics: the RAW mosaic's spread grows with the noise.
    norms = [json.loads((out / f"noise_{s}" / rundir.NORM_FILE).read_text()) for s in ("0", "0.3")]
    assert all(b > a for a, b in zip(norms[0]["raw_std"], norms[1]["raw_std"], strict=True))
    # The clean-RGB teacher does not see the noise; the RAW rows do.
    clean = [level["rows"][0]["top1"] for level in on_disk["sweep"]]
    assert clean[0] == clean[1]
    png = out / rundir.PLOT_FILE
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == report.PLOT_SIZE
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # something was drawn
    md = (out / rundir.RESULTS_MD).read_text()
    assert "std 0.3" in md and "| distilled |" in md and "Top-1 %:" in md and "Agreement %:" in md

    # A rerun skips every finished row at every level (a subset of the levels too). --noise_std is not a sweep
    # setting (--noise_stds replaces it): it is not recorded and does not trip the resume guard; the rest does.
    assert "noise_std" not in json.loads((out / rundir.CONFIG_FILE).read_text())["config"]
    monkeypatch.setattr(experiment, "train_student", no_training)
    monkeypatch.setattr(experiment, "build_setup", no_training)
    png.unlink()
    again = run("sweep", *tiny_argv(tiny_teacher, out, "--noise_stds=0,0.3", "--noise_std=0.2"))
    assert again["sweep"] == results["sweep"] and png.exists()
    subset = run("sweep", *tiny_argv(tiny_teacher, out, "--noise_stds=0.3"))
    assert subset["sweep"] == results["sweep"][1:]
    with pytest.raises(UserError, match=r"its rows were made with --temperature=4.0 \(now 2.0\)"):
        run("sweep", *tiny_argv(tiny_teacher, out, "--noise_stds=0,0.3", "--temperature=2"))


def test_ablation_freezes_what_it_says(tiny_teacher, tmp_path):
    import keras

    out = tmp_path / "ablation"
    results = run("ablation", *tiny_argv(tiny_teacher, out, "--finetune_ks=1"))
    check_rows(results["rows"], ["teacher_clean", "teacher_raw", "finetune_first_1", "finetune_all"])
    assert results["finetune_ks"] == [1] and results["experiment"] == "ablation"
    assert json.loads((out / "results.json").read_text())["finetune_ks"] == [1]

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


def test_mobilenetv2_ablation_counts_17_blocks(monkeypatch, tmp_path):
    """keras.applications.MobileNetV2 names its blocks block_<n>_*; the ablation must see 17 of them, not one."""
    from isp_keras.training import dryrun, experiments

    monkeypatch.chdir(REPO)

    def plan_text(ks):
        cfg = parse(
            "ablation",
            "--flagfile=flags/imagenet_mobilenetv2_ablation.flags",
            f"--finetune_ks={ks}",
            "--dry_run",
            f"--model_dir={tmp_path / 'run'}",
        )
        return dryrun.plan_text(experiments.plan_for("ablation", cfg))

    assert "finetune_first_17" in plan_text("2,17")
    with pytest.raises(UserError, match="k=18 but the model has 17 stages/blocks"):
        plan_text("18")


def test_ablation_rejects_k_beyond_the_model(tiny_teacher, tmp_path):
    with pytest.raises(UserError, match="--finetune_ks=3: k=3 but the model has 2 stages/blocks"):
        run("ablation", *tiny_argv(tiny_teacher, tmp_path / "bad", "--finetune_ks=1,3"))
    with pytest.raises(UserError, match="--finetune_ks=3: k=3 but the model has 2 stages/blocks"):
        run("ablation", *tiny_argv(tiny_teacher, tmp_path / "dry", "--finetune_ks=1,3", "--dry_run"))


def test_seed_summary_against_numpy():
    from isp_keras.training import statistics

    top1 = {"teacher_raw": [10.0, 12.0, 11.0], "gt_labels": [50.0, 52.0, 55.0], "distilled": [53.0, 53.5, 58.0]}
    agree = {"teacher_raw": [20.0, 22.0, 21.0], "gt_labels": [60.0, 61.0, 59.0], "distilled": [70.0, 72.0, 69.0]}
    rows = [
        {"name": n, "seed": seed, "top1": top1[n][i], "top5": 90.0, "agreement": agree[n][i], "agreement_top5": 95.0}
        for i, seed in enumerate((0, 1, 7))
        for n in top1
    ]
    got = statistics.seed_summary(rows)
    d = np.array(top1["distilled"]) - np.array(top1["gt_labels"])
    half = 4.303 * d.std(ddof=1) / np.sqrt(3)  # Student's t, 2 degrees of freedom, two-sided 95 %
    paired = got["paired"]["distilled - gt_labels"]["top1"]
    assert paired["mean"] == pytest.approx(d.mean(), abs=1e-3) and paired["n"] == 3
    assert paired["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-3)
    assert got["rows"]["distilled"]["top1"]["std"] == pytest.approx(np.std(top1["distilled"], ddof=1), abs=1e-3)
    assert set(got["paired"]) == {"distilled - teacher_raw", "distilled - gt_labels"}
    assert "top1_subset" not in got["paired"]["distilled - gt_labels"]
    lost = 100 - np.array(agree["teacher_raw"])
    recovered = 100 * (np.array(agree["distilled"]) - agree["teacher_raw"]) / lost
    assert got["recovered_agreement"]["mean"] == pytest.approx(recovered.mean(), abs=1e-3)
    text = statistics.format_seeds(got)
    assert "Mean ± std over 3 seeds" in text and f"| distilled - gt_labels | {d.mean():+.2f} [" in text
    one = statistics.seed_summary([r for r in rows if r["seed"] == 0])
    assert "ci95" not in one["paired"]["distilled - gt_labels"]["top1"]  # one seed: no interval
    rows += [{**r, "name": "distilled_gt", "top1": r["top1"] + 1.5} for r in rows if r["name"] == "gt_labels"]
    assert statistics.seed_summary(rows)["paired"]["distilled_gt - gt_labels"]["top1"]["mean"] == pytest.approx(1.5)
    rows += [
        {**r, "name": "teacher_labels", "agreement": r["agreement"] - 2.0} for r in rows if r["name"] == "gt_labels"
    ]
    rows += [{**r, "name": "distilled_kd", "agreement": r["agreement"] + 0.5} for r in rows if r["name"] == "gt_labels"]
    kd = statistics.seed_summary(rows)["paired"]["distilled_kd - teacher_labels"]["agreement"]
    assert kd["mean"] == pytest.approx(2.5) and kd["n"] == 3


def test_distilled_kd_reads_alpha_as_the_weight_of_the_kd_term():
    from isp_keras.training import plans

    cfg = TrainConfig(alpha=0.9, hard_labels="teacher", row_lrs=["distilled_kd=0.002"]).validate()
    distilled, kd = plans.table_rows(cfg, ["distilled", "distilled_kd"])
    assert (distilled.alpha, kd.alpha) == (0.9, 0.1) and kd.hard_labels == distilled.hard_labels == "teacher"
    assert (kd.lr, distilled.lr) == (0.002, cfg.lr) and not kd.needs_labels
    assert "0.1*CE + 0.9*T^2*KL, T=4" in kd.describe(cfg)


def test_unlabelled_data_skips_ground_truth_rows_or_refuses_them(tiny_teacher, tmp_path, capsys):
    from PIL import Image

    from isp_keras.training import rundir

    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(80):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(flat / f"{i}.png")
    argv = tiny_argv(tiny_teacher, tmp_path / "run", f"--dataset=folder:{flat}", "--train_take=32", "--test_take=16")
    with pytest.raises(UserError, match=r"^--hard_labels=gt: the distilled student needs ground truth, but "):
        run("table", *argv)
    asked = "--rows=teacher_raw,gt_labels,distilled"
    with pytest.raises(UserError, match=r"^--rows=teacher_raw,gt_labels,distilled: gt_labels trains on ground truth"):
        run("table", *argv, asked, "--hard_labels=teacher")
    assert not (tmp_path / "run").exists()  # refused before anything is written
    results = run("table", *argv, "--hard_labels=teacher")
    assert [r["name"] for r in results["rows"]] == ["teacher_clean", "teacher_raw", "teacher_labels", "distilled"]
    assert "note: row gt_labels skipped: it trains on ground truth, but --dataset=folder:" in capsys.readouterr().out
    for r in results["rows"]:
        assert r["top1"] is None and r["top5"] is None and 0 <= r["agreement"] <= 100
    assert results["rows"][0]["agreement"] == 100.0
    assert "| teacher_labels | - | - |" in (tmp_path / "run" / rundir.RESULTS_MD).read_text()


def test_tune_scores_on_held_out_training_data_and_table_takes_its_choice(tiny_teacher, tmp_path, monkeypatch):
    from isp_keras.data import sources
    from isp_keras.training import experiments
    from isp_keras.training.config import TuneConfig

    read = []
    split = sources.Source.split
    monkeypatch.setattr(sources.Source, "split", lambda self, name: read.append(name) or split(self, name))
    fv = flags.FlagValues()
    config.define_flags(TuneConfig, fv)
    fv(["prog", *tiny_argv(tiny_teacher, tmp_path / "tune", "--rows=teacher_clean,teacher_labels", "--lrs=0.5,0.01")])
    cfg = config.from_flags(TuneConfig, fv)
    assert cfg.rows == ["teacher_labels"] and cfg.holdout_fraction == 0.1
    results = experiments.table(cfg, "tune", "test tune")
    assert "test" not in read and "holdout" in read  # the real test split is never read
    scores = {r["lr"]: r["agreement"] for r in results["rows"]}
    assert set(scores) == {0.5, 0.01} and all(r["name"] == "teacher_labels" for r in results["rows"])
    best = max(scores, key=scores.get)
    assert results["best"] == {"teacher_labels": {"lr": best, "metric": "agreement", "score": scores[best]}}
    assert f"`--row_lrs=teacher_labels={best:g}`" in (tmp_path / "tune" / "results.md").read_text()
    table = parse("table", *tiny_argv(tiny_teacher, tmp_path / "t"), f"--row_lrs=teacher_labels={best:g}")
    rows = {r.name: r for r in experiments.plan_for("table", table).rows}
    assert rows["teacher_labels"].lr == best and rows["distilled"].lr == 0.05
    with pytest.raises(UserError, match=r"^--row_lrs=distilled: expected ROW=LR"):
        parse("table", "--row_lrs=distilled")


def test_table_with_seeds_runs_each_seed_and_reports_paired_differences(tiny_teacher, tmp_path):
    from isp_keras.training import rundir

    out = tmp_path / "seeds"
    argv = tiny_argv(tiny_teacher, out, "--rows=teacher_raw,gt_labels,distilled", "--seeds=3,4", "--train_take=64")
    results = run("table", *argv)
    assert [(r["seed"], r["name"]) for r in results["rows"]] == [
        (s, n) for s in (3, 4) for n in ("teacher_raw", "gt_labels", "distilled")
    ]
    assert (out / "seed_3" / "distilled" / rundir.ROW_FILE).exists() and (out / "seed_4" / rundir.NORM_FILE).exists()
    by = {(r["seed"], r["name"]): r for r in results["rows"]}
    assert by[3, "distilled"]["top1"] != by[4, "distilled"]["top1"] or by[3, "gt_labels"] != by[4, "gt_labels"]
    diff = [by[s, "distilled"]["agreement"] - by[s, "gt_labels"]["agreement"] for s in (3, 4)]
    paired = results["seeds"]["paired"]["distilled - gt_labels"]["agreement"]["mean"]
    assert paired == pytest.approx(np.mean(diff), abs=1e-3)
    assert "| distilled - gt_labels |" in (out / rundir.RESULTS_MD).read_text()
    assert "seed" not in results["config"]  # a level field, like a sweep's noise_std
    again = run("table", *argv, "--seeds=3,4,5", "--dry_run")["plan"]  # adding a seed keeps the finished ones
    assert again.count("[done]") == 6 and "seed_5/distilled:" in again


@pytest.mark.slow
def test_imagenet_setting_end_to_end_with_a_tflite_teacher(tmp_path):
    """The paper's setting in miniature on the fixtures: an ImageNet TFLite teacher (1001 outputs), Imagenette photos
    whose WordNet-id folders are mapped into its outputs, every Table 1 row, metrics over 1001 and over 10 classes."""
    fixtures = REPO / "tests" / "fixtures"
    argv = (
        f"--dataset=folder:{fixtures / 'imagenette'}",
        f"--teacher={fixtures / 'imagenet' / 'mobilenet_v1_0.25_128_quant.tflite'}",
        f"--model_dir={tmp_path / 'run'}",
        "--rows=teacher_clean,teacher_raw,gt_labels,teacher_labels,distilled,distilled_gt",
        "--hard_labels=teacher",
        "--epochs=1",
        "--batch_size=10",
        "--lr=0.0002",
        "--weight_decay=4e-5",
    )
    results = run("table", *argv)
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["teacher_clean", "teacher_raw", "gt_labels", "teacher_labels", "distilled", "distilled_gt"]
    for r in rows.values():
        assert set(r) == {"name", "top1", "top5", "top1_subset", "top5_subset", "agreement", "agreement_top5"}
        assert r["top1_subset"] >= r["top1"] and r["top5_subset"] >= r["top5"]
    clean = rows["teacher_clean"]
    # Labels mapped by WordNet id: the teacher is right on 9 of the 20 photos over all 1001 outputs (unmapped
    # labels 0..9 would be background and nine unrelated classes: about 0 %).
    assert clean["top1"] >= 35.0 and clean["agreement"] == 100.0 and clean["top5_subset"] == 100.0
    assert rows["teacher_raw"]["agreement"] < clean["agreement"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert "top-1 (data's classes) %" in md and "| distilled_gt |" in md


def test_student_batchnorm_starts_from_the_teachers_function(tmp_path, tiny_teacher):
    import keras

    from isp_keras.training import experiment
    from isp_keras.training.config import TrainConfig

    fixtures = REPO / "tests" / "fixtures"
    cfg = TrainConfig(
        dataset=f"folder:{fixtures / 'imagenette'}",
        teacher=str(fixtures / "imagenet" / "mobilenet_v1_0.25_128_quant.tflite"),
        student_batchnorm=True,
        batch_size=10,
        model_dir=str(tmp_path / "run"),
    ).validate()
    s = experiment.build_setup(cfg)
    student = experiment.build_student(s, None, sync_bn=False)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in student.layers) == 27
    (x, _), _ = next(iter(s.test_ds()))
    np.testing.assert_allclose(student(x, training=False), s.teacher(x, training=False), atol=1e-3)
    with pytest.raises(UserError, match=r"^--student_batchnorm: restores the BatchNorm a TFLite file folded away"):
        experiment.build_setup(
            TrainConfig(teacher=str(tiny_teacher), student_batchnorm=True, stats_images=64).validate()
        )


def test_input_summary_against_numpy():
    from isp_keras.training import statistics

    agree = {"infill": [60.0, 62.0, 61.0], "packed": [61.0, 61.5, 63.0], "packed_curve": [59.0, 60.0, 64.0]}
    rows = [
        {"name": name, "input": v, "seed": seed, "top1": 50.0 + i, "agreement": agree[v][i] - (name == "teacher_raw")}
        for v in agree
        for i, seed in enumerate((0, 1, 2))
        for name in ("teacher_raw", "distilled")
    ]
    got = statistics.input_summary(rows)
    assert list(got["inputs"]) == list(agree)
    assert got["inputs"]["packed"]["rows"]["distilled"]["agreement"]["mean"] == pytest.approx(
        np.mean(agree["packed"]), abs=1e-3
    )
    d = np.array(agree["packed_curve"]) - agree["infill"]
    paired = got["paired"]["distilled (packed_curve) - distilled (infill)"]["agreement"]
    half = 4.303 * d.std(ddof=1) / np.sqrt(3)
    assert paired["mean"] == pytest.approx(d.mean(), abs=1e-3)
    assert paired["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-3)
    assert set(got["paired"]) == {
        "distilled (packed) - distilled (infill)",
        "distilled (packed_curve) - distilled (infill)",
    }
    text = statistics.format_inputs(got)
    assert "### Student input packed_curve" in text and "### Student inputs against infill" in text
    assert f"| distilled (packed_curve) - distilled (infill) | {d.mean():+.2f} [" in text
    one_seed = statistics.format_inputs(statistics.input_summary([r for r in rows if r["seed"] == 0]))
    assert "One seed (no spread):" in one_seed and "over 1 seeds" not in one_seed
    assert "Differences (points; one seed):" in one_seed and "interval" not in one_seed


def test_table_with_student_inputs_runs_each_input_side_by_side(tiny_teacher, tmp_path):
    from isp_keras.models import adapter, border, teachers
    from isp_keras.training import rundir

    out = tmp_path / "inputs"
    argv = tiny_argv(
        tiny_teacher, out, "--rows=teacher_raw,distilled,distilled_qat", "--student_inputs=infill,packed_curve"
    )
    results = run("table", *argv)
    assert [(r["input"], r["name"]) for r in results["rows"]] == [
        (v, n) for v in ("infill", "packed_curve") for n in ("teacher_raw", "distilled", "distilled_qat")
    ]
    qat = teachers.load_model_file(out / "input_packed_curve" / "distilled_qat" / "student.keras")
    assert any(isinstance(layer, border.FramedConv2D) for layer in qat.layers)  # quantisation-aware through the border
    by = {(r["input"], r["name"]): r for r in results["rows"]}
    assert by["infill", "teacher_raw"]["agreement"] == by["packed_curve", "teacher_raw"]["agreement"]
    student = teachers.load_model_file(out / "input_packed_curve" / "distilled" / "student.keras")
    assert student.input_shape[1:] == (16, 16, 4) and set(adapter.parts(student)) == {"gain", "curve", "mix"}
    meta = json.loads((out / "input_packed_curve" / "distilled" / "student.json").read_text())
    assert (meta["student_input"], meta["raw_adapter"]) == ("packed", "curve")
    assert "student_input" not in results["config"] and "raw_adapter" not in results["config"]
    md = (out / rundir.RESULTS_MD).read_text()
    assert "| input |" in md and "distilled (packed_curve) - distilled (infill)" in md
    assert results["inputs"]["paired"]["distilled (packed_curve) - distilled (infill)"]["agreement"]["n"] == 1


def test_a_curve_started_adapter_normalises_after_its_curve(tiny_teacher, tmp_path):
    """--raw_adapter_curve with --student_inputs=...,packed_curve: that level's normalisation gains the per-site
    statistics after the curve (measured once, kept on resume) and its student centres its tiles by them; the
    infill level keeps the plain statistics."""
    from isp_keras.data import normalisation
    from isp_keras.models import teachers
    from isp_keras.raw import bayer
    from isp_keras.training import rundir

    out = tmp_path / "gamma"
    gamma = ",".join(f"{(k / 4) ** (1 / 2.2):.4f}" for k in range(5))
    argv = tiny_argv(tiny_teacher, out, "--rows=distilled", "--student_inputs=infill,packed_curve")
    run("table", *argv, f"--raw_adapter_curve={gamma}")
    infill = normalisation.load_normalisation(out / "input_infill" / rundir.NORM_FILE)
    norm = normalisation.load_normalisation(out / "input_packed_curve" / rundir.NORM_FILE)
    assert infill.curve is None and norm.curve == [float(v) for v in gamma.split(",")]
    assert (norm.raw_mean, norm.raw_std) == (infill.raw_mean, infill.raw_std)
    assert all(c > r + 0.05 for c, r in zip(norm.curve_mean, norm.raw_mean, strict=True))
    student = teachers.load_model_file(out / "input_packed_curve" / "distilled" / "student.keras")
    (centre,) = [layer for layer in student.layers if layer.name.endswith("_centre")]
    site = bayer.site_index("RGGB").reshape(-1)
    np.testing.assert_allclose(-np.asarray(centre.offset), np.asarray(norm.curve_mean)[site], rtol=1e-6)


def test_sweep_tables_per_measure_on_a_class_subset_and_unlabelled_data(tmp_path):
    from PIL import Image

    from isp_keras.training import report

    def level(std, raw, distilled):
        keys = ("top1", "top1_subset", "agreement")
        pairs = (("teacher_raw", raw), ("distilled", distilled))
        rows = [{"name": n, **dict(zip(keys, v, strict=True))} for n, v in pairs]
        return {"noise_std": std, "rows": rows}

    levels = [level(0.0, (40.0, 80.0, 50.0), (60.0, 90.0, 70.0)), level(0.1, (5.0, 55.0, 6.5), (55.0, 88.5, 61.25))]
    text = report.format_sweep(levels)
    assert text.split("\n\n")[0] == "Top-1 %:"
    head = "| row | std 0 | std 0.1 |\n|---|---:|---:|\n"
    assert f"Top-1 (data's classes) %:\n\n{head}| teacher_raw | 80.00 | 55.00 |" in text
    assert f"Agreement %:\n\n{head}| teacher_raw | 50.00 | 6.50 |\n" in text
    assert text.endswith("| distilled | 70.00 | 61.25 |")
    unlabelled = [level(0.0, (None, None, 50.0), (None, None, 70.0)), level(0.1, (None, None, 6.5), (None, None, 61.0))]
    assert report.sweep_metrics(unlabelled) == ["agreement"]
    assert report.format_sweep(unlabelled).startswith("Agreement %:")
    for name, lv in (("subset.png", levels), ("unlabelled.png", unlabelled)):
        report.plot_sweep(lv, tmp_path / name, "title")
        with Image.open(tmp_path / name) as image:
            assert image.size == report.PLOT_SIZE


def test_a_student_of_another_size_and_its_untrained_baselines(tiny_teacher, tmp_path):
    """--student_init of another input size: the student rows train and save a student of that size (student.json
    says so, for export and predict); student_clean is that model on the clean test crops resized to its size,
    checked against a direct computation; both student baselines need --student_init."""
    import keras
    import tensorflow as tf

    from isp_keras.data import sources
    from isp_keras.models import architectures, teachers

    teacher, spec = teachers.load_teacher(str(tiny_teacher))
    small = architectures.build("resnet_tiny", 10, 24)
    small.set_weights(teacher.get_weights())
    small.save(tmp_path / "small.keras")
    rows = "--rows=teacher_clean,teacher_raw,student_clean,student_raw,distilled"
    out = tmp_path / "t"
    results = run("table", *tiny_argv(tiny_teacher, out, rows, f"--student_init={tmp_path / 'small.keras'}"))
    by_name = {r["name"]: r for r in results["rows"]}
    assert list(by_name) == ["teacher_clean", "teacher_raw", "student_clean", "student_raw", "distilled"]
    assert json.loads((out / "distilled" / "student.json").read_text())["image_size"] == 24
    assert keras.saving.load_model(out / "distilled" / "student.keras").input_shape == (None, 24, 24, 3)

    images = np.stack([image for image, _ in sources.get_source("embedded").split("test").take(64).as_numpy_iterator()])
    rgb = images.astype(np.float32) / 255
    mean, std = np.array(spec.rgb_mean, np.float32), np.array(spec.rgb_std, np.float32)
    scene = tf.image.resize(rgb, [24, 24], antialias=True).numpy()
    agree = np.argmax(small((scene - mean) / std), -1) == np.argmax(teacher((rgb - mean) / std), -1)
    assert by_name["student_clean"]["agreement"] == pytest.approx(100 * agree.mean(), abs=1e-3)
    assert by_name["student_raw"]["agreement"] != by_name["student_clean"]["agreement"]
    with pytest.raises(UserError, match=r"^--rows=student_raw: evaluates the --student_init model"):
        parse("table", *tiny_argv(tiny_teacher, out, "--rows=student_raw")).validate()
