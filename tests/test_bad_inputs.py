"""Every bad input gets one line naming the file or flag and the problem, and a non-zero exit.

Most cases run in-process through `errors.run_main`, the wrapper every entry point uses, so the user-facing
contract (one `error: ...` line on stderr, exit 2, no traceback) is what is checked. One subprocess checks the
real command line for a flagfile with an unknown flag.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from isp_keras import errors, fsutil
from isp_keras.data import normalisation, pipeline, records, sources
from isp_keras.models import teachers
from isp_keras.raw import rawio
from isp_keras.training import experiment
from isp_keras.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def one_line(capsys, fn, code=2):
    """Run fn under errors.run_main as an entry point would; return its single stderr line (without 'error: ')."""
    with pytest.raises(SystemExit) as info:
        errors.run_main(lambda argv: fn())([])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == code, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0][len("error: ") :]


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(seed, h=32, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_folder(root: Path, classes=("cat", "dog", "owl"), per_class=4, size=(32, 32)) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _png(root / "train" / name / f"{i}.png", _rgb(c * 100 + i, *size))
            _png(root / "test" / name / f"{i}.png", _rgb(c * 100 + 50 + i, *size))
    return root


# ----------------------------------------------------------------------- flags and names


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("alpha", 1.5, "--alpha=1.5: must be in [0, 1]"),
        ("alpha", -0.1, "--alpha=-0.1: must be in [0, 1]"),
        ("temperature", 0.0, "--temperature=0.0: must be > 0"),
        ("temperature", -2.0, "--temperature=-2.0: must be > 0"),
        ("temperature", float("nan"), "--temperature=nan: must be a finite number"),
        ("noise_std", float("inf"), "--noise_std=inf: must be a finite number"),
        ("lr", float("nan"), "--lr=nan: must be a finite number"),
        ("image_size", 31, "--image_size=31: must be even"),
        ("checkpoint_steps", -1, "--checkpoint_steps must be >= 0"),
    ],
)
def test_bad_flag_values(capsys, field, value, words):
    assert words in one_line(capsys, lambda: TrainConfig(**{field: value}).validate())


def test_unknown_dataset_name(capsys):
    line = one_line(capsys, lambda: sources.get_source("imagenet"))
    assert line.startswith("--dataset: unknown dataset 'imagenet'")
    line = one_line(capsys, lambda: sources.get_source("folder:/no/such/dir"))
    assert line == "--dataset=folder:/no/such/dir: not a directory"


def test_unknown_model_name(capsys):
    line = one_line(capsys, lambda: teachers.load_teacher("ResNet999"))
    assert line.startswith("--teacher: 'ResNet999' is neither a file nor a known keras.applications name")


def test_teacher_input_size_and_classes_must_match_the_data(capsys, tiny_teacher, tmp_path):
    folder = make_folder(tmp_path / "three")
    cfg = TrainConfig(dataset=f"folder:{folder}", teacher=str(tiny_teacher), model_dir=str(tmp_path / "run"))
    line = one_line(capsys, lambda: experiment.build_setup(dataclasses.replace(cfg, image_size=64).validate()))
    assert line == f"{tiny_teacher}: the teacher takes 32x32 images but the data is 64x64 (set --image_size=32)"
    line = one_line(capsys, lambda: experiment.build_setup(cfg.validate()))
    assert line == (
        f"folder:{folder}: 1 of its 3 classes match no class of --teacher={tiny_teacher} (10 outputs; matched by "
        "WordNet id or name): owl"
    )


FIXTURE_TFLITE = ROOT / "tests" / "fixtures" / "imagenet" / "mobilenet_v1_0.25_128_quant.tflite"


@pytest.mark.parametrize(
    "layout,changes,words",
    [
        ("names", {}, "3 of its 3 classes match no class of --teacher="),
        ("imagenette", {"train_per_class": 4}, "--train_per_class=4: folder:{root}: class n01440764 holds 3 images"),
        ("tiny", {}, "{root}/val: holds only images/ (Tiny-ImageNet's validation layout) but no val_annotations.txt"),
    ],
)
def test_data_that_cannot_be_matched_or_subset_is_refused_before_anything_is_written(
    capsys, tmp_path, layout, changes, words
):
    """Class folders that are not WordNet ids against a 1001-output teacher, a per-class count above what a class
    holds, Tiny-ImageNet's validation images without their annotations: one line, exit 2, no run directory."""
    from isp_keras import train

    if layout == "names":
        root = make_folder(tmp_path / "data")
    elif layout == "imagenette":
        root = ROOT / "tests" / "fixtures" / "imagenette"
    else:
        root = tmp_path / "data"
        _png(root / "train" / "n01443537" / "images" / "a.JPEG", _rgb(0))
        _png(root / "train" / "n01629819" / "images" / "b.JPEG", _rgb(1))
        _png(root / "val" / "images" / "val_0.JPEG", _rgb(2))
    out = tmp_path / "run"
    cfg = TrainConfig(dataset=f"folder:{root}", teacher=str(FIXTURE_TFLITE), model_dir=str(out), **changes)
    line = one_line(capsys, lambda: train.run(cfg.validate()))
    assert words.format(root=root) in line
    assert not out.exists()


# ----------------------------------------------------------------------- image files


def test_one_and_four_channel_images_are_converted_and_said(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=2)
    gray = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    rgba = np.concatenate([_rgb(2), np.full((32, 32, 1), 7, np.uint8)], axis=-1)
    _png(root / "test" / "cat" / "gray.png", gray)
    _png(root / "test" / "dog" / "rgba.png", rgba)
    source = sources.folder_source(root)
    notes = " | ".join(source.notes)
    assert "converting 1 1-channel (grayscale) image(s) to RGB by repeating the channel" in notes
    assert "gray.png" in notes
    assert "dropping the alpha channel of 1 4-channel image(s)" in notes and "rgba.png" in notes
    decoded = [x.numpy() for x, _ in source.split("test")]
    assert len(decoded) == 8 and all(im.shape == (32, 32, 3) for im in decoded)
    assert any(np.array_equal(im, np.repeat(gray[..., None], 3, -1)) for im in decoded), "gray -> R=G=B"
    assert any(np.array_equal(im, rgba[..., :3]) for im in decoded), "alpha dropped, RGB unchanged"


def test_odd_image_sizes_are_cropped_and_said(tmp_path):
    root = make_folder(tmp_path / "odd", per_class=2, size=(33, 31))
    source = sources.folder_source(root)
    assert any("odd width or height" in n and "(31x33)" in n for n in source.notes), source.notes
    cfg = pipeline.PipelineConfig(image_size=32, batch_size=2, noise_std=0.0)
    ((raw, rgb, _),) = list(pipeline.build(source, "test", cfg, training=False, norm=None, mode="mosaic").take(1))
    assert raw.shape == (2, 32, 32, 1) and rgb.shape == (2, 32, 32, 3)


def _corrupt_folder(tmp_path):
    root = make_folder(tmp_path / "bad", per_class=3)
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "notes.png").write_text("this is not a picture")
    return root


def test_unreadable_images_are_skipped_with_a_count(tmp_path):
    root = _corrupt_folder(tmp_path)
    source = sources.folder_source(root)
    assert source.counts == {"train": 9, "test": 9}
    note = next(n for n in source.notes if "unreadable" in n)
    assert "skipped 2 unreadable image file(s)" in note and "--strict stops instead" in note
    assert len(list(source.split("train"))) == 9


def test_unreadable_image_with_strict_stops_naming_the_file(capsys, tmp_path):
    root = _corrupt_folder(tmp_path)
    line = one_line(capsys, lambda: sources.get_source(f"folder:{root}", strict=True))
    assert line.startswith(str(root / "train" / "cat" / "empty.jpg") + ": not a readable image")
    assert "--strict" in line


def test_corrupt_image_data_skipped_or_one_line_with_strict(capsys, tmp_path):
    root = make_folder(tmp_path / "trunc", per_class=2)
    buf = tmp_path / "whole.jpg"
    Image.fromarray(_rgb(9, 64, 64)).save(buf, quality=95)
    data = buf.read_bytes()
    (root / "train" / "owl" / "cut.jpg").write_bytes(data[: len(data) // 3])  # header fine, pixels missing
    lenient = sources.folder_source(root)
    assert lenient.counts["train"] == 7 and len(list(lenient.split("train"))) == 6
    strict = sources.folder_source(root, strict=True)
    line = one_line(capsys, lambda: list(strict.split("train")))
    assert line.startswith("data pipeline:") and "JPEG" in line


def test_nan_in_the_pipeline_names_the_example(capsys, tmp_path):
    source = sources.get_source("embedded")
    cfg = pipeline.PipelineConfig(image_size=32, batch_size=4, noise_std=0.0, take=8)
    bad = normalisation.Normalisation([0.4] * 3, [0.25, 0.0, 0.25], [0.5] * 3, [0.25] * 3)  # a zero std: Inf/NaN
    ds = pipeline.build(source, "test", cfg, training=False, norm=bad)
    line = one_line(capsys, lambda: list(ds))
    assert line.startswith("embedded test: NaN/Inf in the model input at batch 0 row 0 = example 0 in pipeline order")
    # Statistics files are checked when read, before any pipeline runs.
    path = tmp_path / "norm.json"
    path.write_text(json.dumps(dataclasses.asdict(bad)))
    line = one_line(capsys, lambda: normalisation.load_normalisation(path))
    assert line == f"{path}: raw_std=[0.25, 0.0, 0.25] must be > 0 (constant input images?)"


# ----------------------------------------------------------------------- model files (safe loading)


def test_model_file_that_is_not_a_model(capsys, tmp_path):
    junk = tmp_path / "teacher.keras"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip")
    assert one_line(capsys, lambda: teachers.load_model_file(junk)).startswith(f"{junk}: not a loadable Keras model")
    txt = tmp_path / "teacher.h5"
    txt.write_text("hello")
    assert (
        one_line(capsys, lambda: teachers.load_model_file(txt))
        == f"{txt}: expected a .keras file, a .tflite file or a SavedModel directory"
    )
    folder = tmp_path / "saved"
    folder.mkdir()
    assert "not a SavedModel" in one_line(capsys, lambda: teachers.load_model_file(folder))


def test_model_file_with_code_is_refused_by_safe_mode(capsys, tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with zipfile.ZipFile(path) as z:
        assert "config.json" in z.namelist()
    line = one_line(capsys, lambda: teachers.load_model_file(path))
    assert line.startswith(f"{path}: not a loadable Keras model") and "Lambda" in line


def test_no_pickle_of_untrusted_input_anywhere():
    """Nothing in the package unpickles, disables Keras safe mode or loads numpy arrays with pickle."""
    forbidden = (
        "import pickle",
        "pickle.load",
        "allow_pickle=True",
        "safe_mode=False",
        "cloudpickle",
        "dill",
        "yaml.load(",
        "marshal.loads",
    )
    offenders = [
        f"{p.relative_to(ROOT)}: {word}"
        for p in (ROOT / "isp_keras").rglob("*.py")
        for word in forbidden
        if word in p.read_text()
    ]
    assert offenders == []
    loads = [p for p in (ROOT / "isp_keras").rglob("*.py") if "np.load(" in p.read_text()]
    for p in loads:
        for line in p.read_text().splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{p}: {line.strip()}"


def test_manifest_paths_stay_inside_the_dataset_root(capsys, tmp_path):
    root = tmp_path / "records"
    records.write_records(root, ["a", "b"], {"train": [(b"x", 0)], "test": [(b"y", 1)]})
    index = json.loads((root / "index.json").read_text())
    index["splits"]["train"]["files"] = {"../../etc/passwd": "0"}
    (root / "index.json").write_text(json.dumps(index))
    line = one_line(capsys, lambda: records.split_files(root, "train"))
    assert line == f"{root}/index.json: file '../../etc/passwd' escapes the records directory"
    index["splits"]["train"]["files"] = {"/etc/passwd": "0"}
    (root / "index.json").write_text(json.dumps(index))
    assert "escapes the records directory" in one_line(capsys, lambda: records.split_files(root, "train"))


@pytest.mark.parametrize("content, words", [(b"", "empty file"), (b"not a raw file at all" * 20, "")])
def test_raw_files(capsys, tmp_path, content, words):
    """The RAW reader's own errors (rawio, tested in depth in test_rawio.py) reach the user as one line."""
    path = tmp_path / "shot.dng"
    path.write_bytes(content)
    line = one_line(capsys, lambda: rawio.read_raw(path))
    assert line.startswith(f"{path}: ") and words in line


def test_raw_dumps_and_mosaic_images(capsys, tmp_path):
    """Sensor dumps and mosaic images (rawio via raw/dumps.py, tested in depth in tests/raw/test_dumps.py): no
    format, a byte count that does not match, a broken sidecar, an RGB PNG, data above the declared bit depth."""
    from isp_keras.raw.dumps import SensorFormat

    shot = tmp_path / "shot.raw"
    np.zeros((512, 768), "<u2").tofile(shot)
    assert one_line(capsys, lambda: rawio.read_raw(shot)) == (
        f"{shot}: a headerless sensor dump needs its format: give --raw_width, --raw_height, --raw_bits, --raw_cfa "
        f"(or a sidecar {shot}.json)"
    )
    fmt = SensorFormat(width=768, height=512, bits=14, cfa="RGGB")
    shot.write_bytes(shot.read_bytes()[:-32])
    assert one_line(capsys, lambda: rawio.read_raw(shot, "RGGB", fmt)) == (
        f"{shot}: 768x512 u16 needs 786432 bytes, the file has 786400"
    )
    (tmp_path / "shot.raw.json").write_text('{"width": 768, "hieght": 512}')
    assert one_line(capsys, lambda: rawio.read_raw(shot)).startswith(f"{shot}.json: unknown field(s) hieght (known:")
    _png(tmp_path / "rgb.png", _rgb(0))
    line = one_line(capsys, lambda: rawio.read_raw(tmp_path / "rgb.png", "RGGB", fmt))
    assert line == f"{tmp_path / 'rgb.png'}: is RGB, not a single-channel mosaic"
    np.full((4, 4), 65535, "<u2").tofile(tmp_path / "hot.bin")
    line = one_line(capsys, lambda: rawio.read_raw(tmp_path / "hot.bin", "RGGB", SensorFormat(4, 4, 14, cfa="RGGB")))
    assert line.startswith(f"{tmp_path / 'hot.bin'}: values up to 65535 need 16 bits but the format says 14-bit")


# ----------------------------------------------------------------------- outputs and run directories


def train_plan(model_dir, **changes):
    from isp_keras.training import experiments

    return experiments.plan_for("train", TrainConfig(model_dir=str(model_dir), **changes).validate())


def test_output_directory_not_writable(capsys, tmp_path):
    from isp_keras.training import rundir

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = one_line(capsys, lambda: rundir.prepare_out(train_plan(blocker / "run")))
    assert line.startswith(f"{blocker / 'run'}: cannot write the run directory")


def test_run_directory_of_another_command_is_refused(capsys, tmp_path):
    from isp_keras.training import experiments, rundir
    from isp_keras.training.config import TableConfig

    rundir.prepare_out(experiments.plan_for("table", TableConfig(model_dir=str(tmp_path)).validate()))
    line = one_line(capsys, lambda: rundir.prepare_out(train_plan(tmp_path)))
    assert line == f"{tmp_path}: holds a table run, not a train run; choose another --model_dir"


def test_resume_with_different_flags_is_refused(capsys, tmp_path):
    from isp_keras.training import checkpoint, rundir

    rundir.prepare_out(train_plan(tmp_path, lr=0.05))
    checkpoint.save_checkpoint(
        tmp_path / "distilled", lambda folder: (folder / "w").write_text("w"), {"epochs_done": 1}
    )
    line = one_line(capsys, lambda: rundir.prepare_out(train_plan(tmp_path, lr=0.1)))
    assert line == (
        f"{tmp_path}: its rows were made with --lr=0.05 (now 0.1); rerun with the same flags to resume, "
        f"pass --overwrite to redo them, or choose another --model_dir"
    )
    rundir.prepare_out(train_plan(tmp_path, lr=0.05, checkpoint_steps=7, strategy="mirrored"))  # resumable changes
    rundir.prepare_out(train_plan(tmp_path, lr=0.1, overwrite=True))
    assert not (tmp_path / "distilled").exists()
    rundir.prepare_out(train_plan(tmp_path, lr=0.1))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_full_disk_while_saving_results(capsys, tmp_path, monkeypatch):
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):  # fsutil's temporary file lands on /dev/full: ENOSPC from the kernel
        fd, path = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", mkstemp)
    from isp_keras.training import report

    rows = [{"name": "distilled", "top1": 50.0, "top5": 90.0, "agreement": 60.0}]
    line = one_line(capsys, lambda: report.write_results(train_plan(tmp_path), [{"rows": rows}], 1.0))
    assert line.startswith(f"{tmp_path / 'results.json'}: could not write: No space left on device (the disk is full)")
    assert not (tmp_path / "results.json").exists() and os.listdir(tmp_path) == []


def test_flagfile_with_unknown_flag_on_the_command_line(tmp_path, monkeypatch, capsys, run_command):
    from isp_keras import train

    flagfile = tmp_path / "preset.cfg"
    flagfile.write_text("--noise_std=0.1\n--nosie_std=0.2\n")
    monkeypatch.chdir(ROOT)
    assert run_command(TrainConfig, train.run, [f"--flagfile={flagfile}"]) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert ours == [f"error: {flagfile}: unknown flag --nosie_std"], err[-1000:]
    assert "Traceback" not in err


def test_data_error_message_ignores_bugs():
    """Only data problems are shortened to one line; a programming error keeps its traceback."""
    assert errors.data_error_message(ValueError("Invalid JPEG data")) is None
    bug = tf.errors.InvalidArgumentError(None, None, "Incompatible shapes: [2,3] vs. [4]")
    assert errors.data_error_message(bug) is None
    data = tf.errors.InvalidArgumentError(
        None, None, "Invalid JPEG data or crop window, data size 512\n\t [[{{node x}}]]"
    )
    assert errors.data_error_message(data) == "data pipeline: Invalid JPEG data or crop window, data size 512"


def test_packed_student_input_needs_even_sides(capsys):
    line = one_line(capsys, lambda: TrainConfig(student_input="packed", image_size=33).validate())
    assert line == "--student_input=packed: image size 33 is odd; packing needs even sides"


@pytest.mark.parametrize(
    "settings, expected",
    [
        (
            dict(raw_adapter="curve", student_input="packed", raw_adapter_curve=[0.0, 0.6, 0.5, 1.0]),
            "--raw_adapter_curve=0,0.6,0.5,1: not monotone: value 2 (0.5) is below value 1 (0.6)",
        ),
        (
            dict(raw_adapter="affine"),
            "--raw_adapter=affine: needs --student_input=packed (the adapter acts on the sensor's values per CFA "
            "site, which the infill input has already mixed)",
        ),
        (
            dict(raw_adapter="affine", student_input="packed", raw_adapter_curve=[0.0, 1.0]),
            "--raw_adapter_curve: only with --raw_adapter=curve (got affine)",
        ),
    ],
)
def test_raw_adapter_flags(capsys, settings, expected):
    assert one_line(capsys, lambda: TrainConfig(**settings).validate()) == expected


def test_unknown_student_input_variant(capsys):
    from isp_keras.training.config import TableConfig

    line = one_line(capsys, lambda: TableConfig(student_inputs=["infill", "packed_gamma"]).validate())
    assert line == (
        "--student_inputs: unknown input 'packed_gamma'; choose from infill, packed, packed_affine, packed_curve"
    )


def test_resume_of_a_run_recorded_before_a_field_existed(capsys, tmp_path):
    """A config.json without student_input (written before the flag) resumes as the default, infill."""
    from isp_keras.training import rundir

    rundir.prepare_out(train_plan(tmp_path))
    path = tmp_path / rundir.CONFIG_FILE
    record = json.loads(path.read_text())
    del record["config"]["student_input"]
    path.write_text(json.dumps(record))
    rundir.prepare_out(train_plan(tmp_path))
    path.write_text(json.dumps(record))
    line = one_line(capsys, lambda: rundir.prepare_out(train_plan(tmp_path, student_input="packed")))
    assert line.startswith(f"{tmp_path}: its rows were made with --student_input=infill (now packed)")
