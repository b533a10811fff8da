"""The deployed student: a serving graph that takes the sensor's Bayer mosaic and returns class probabilities.

mosaic [batch, H, W, 1] -> pipeline.student_input (bayer.raw_to_input: bilinear infill + per-site normalisation,
the very functions the training pipeline runs, in the run's channel order; for a packed student one space-to-depth,
its first layer holding the rest) -> student -> softmax.
Also: loading a trained student with its run description, the SavedModel archive, and the mosaics of the training
pipeline used for calibration and parity.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from isp_keras.data import normalisation, pipeline, relabel, sources, student_inputs
from isp_keras.errors import UserError
from isp_keras.raw import bayer
from isp_keras.training import student_file

SIGNATURE = "serving_default"
UINT16_SIGNATURE = "serving_uint16"
INPUT_NAME = "mosaic"
OUTPUT_NAME = "probabilities"
LABELS = "labels.txt"
MANIFEST = "manifest.json"


@dataclasses.dataclass
class Student:
    """A trained student and what serving needs to feed it (from student.json written by experiment.save_student)."""

    model: keras.Model
    cfa: str
    image_size: int
    classes: list
    norm: normalisation.Normalisation
    noise_std: float = 0.0
    teacher: str = ""
    dataset: str = "embedded"
    path: str = ""
    wnids: list | None = None  # WordNet ids of the outputs (an ImageNet teacher's), to match a dataset's classes
    student_input: str = "infill"  # or "packed": the model takes the mosaic's 2x2 tiles [batch, H/2, W/2, 4]
    sensor: str = "gaussian"  # the training mosaics' simulation (pipeline.PipelineConfig.sensor), for calibration


def check_student(model, image_size: int, num_classes: int, source: str, student_input: str = "infill") -> None:
    """One-line UserError unless `model` is a plain Keras classifier of the run's size taking 3-channel infilled RAW
    (`student_input` infill) or the mosaic's 2x2 tiles (packed)."""
    from isp_keras.training import distiller

    if isinstance(model, distiller.Distiller):
        raise UserError(
            f"{source}: is a Distiller (the teacher+student training wrapper); export its student "
            "(RUN_DIR/student.keras) instead"
        )
    if not isinstance(model, keras.Model):
        raise UserError(f"{source}: holds a {type(model).__name__}, not a Keras model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(
            f"{source}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "a student has one image input and one logits output"
        )
    shape = tuple(model.inputs[0].shape)
    kind = student_inputs.get(student_input)
    side, _, channels = kind.shape(image_size)
    tiled = kind.tile > 1
    if len(shape) != 4 or shape[-1] != channels:
        said = f" (student.json says student_input {kind.name})" if tiled else ""
        raise UserError(
            f"{source}: the model takes input of shape {shape}; a RAW student takes {kind.description}{said}"
        )
    if any(s is not None and s != side for s in shape[1:3]):
        raise UserError(
            f"{source}: the model takes {shape[1]}x{shape[2]} {'tiles' if tiled else 'images'} but student.json "
            f"says image_size {image_size}{' (tiles of half that side)' if tiled else ''}"
        )
    outputs = int(model.outputs[0].shape[-1])
    if outputs != num_classes:
        raise UserError(f"{source}: the model has {outputs} outputs but student.json lists {num_classes} classes")


def _keras_class_name(path: Path) -> str | None:
    """The top-level class of a .keras archive, read from its config without building it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json")).get("class_name")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def load_student(path) -> Student:
    """A run directory (student.keras + student.json) or a student .keras file with its .json beside it."""
    from isp_keras.models import teachers

    path = Path(path)
    keras_path = path / "student.keras" if path.is_dir() else path
    if path.is_dir() and not keras_path.exists():
        raise UserError(f"--student={path}: no student.keras in this directory (is the run finished?)")
    if not keras_path.exists():
        raise UserError(f"--student={path}: no such file or run directory")
    if keras_path.suffix != ".keras":
        raise UserError(f"--student={path}: expected a run directory or a .keras file")
    if _keras_class_name(keras_path) == "Distiller":
        raise UserError(
            f"{keras_path}: is a Distiller (the teacher+student training wrapper); export its student "
            "(RUN_DIR/student.keras) instead"
        )
    meta_path = keras_path.with_suffix(".json")
    if not meta_path.exists():
        raise UserError(
            f"{keras_path}: no {meta_path.name} beside it; export needs the run's CFA and normalisation "
            "(written by the train command)"
        )
    meta = student_file.read(meta_path)
    model = teachers.load_model_file(keras_path)
    check_student(model, meta.image_size, len(meta.classes), str(keras_path), meta.student_input)
    return Student(
        model,
        meta.cfa,
        meta.image_size,
        meta.classes,
        meta.normalisation,
        float(meta.noise_std),
        str(meta.teacher),
        meta.dataset,
        str(keras_path),
        meta.wnids,
        meta.student_input,
        meta.sensor,
    )


def probabilities_fn(student: Student):
    """mosaic float32 [batch, H, W, 1] in [0, 1] -> {"probabilities": [batch, classes]}: the serving graph."""

    def serve(mosaic):
        x = pipeline.student_input(mosaic, cfa=student.cfa, norm=student.norm, kind=student.student_input)
        return {OUTPUT_NAME: tf.nn.softmax(student.model(x, training=False), axis=-1)}

    return serve


def mosaic_spec(image_size: int, dtype=tf.float32) -> tf.TensorSpec:
    return tf.TensorSpec([None, image_size, image_size, 1], dtype, name=INPUT_NAME)


def write_archive(model: keras.Model, endpoints: dict, directory) -> None:
    """A SavedModel of `model` with endpoints {name: (fn, input TensorSpec)}."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, spec) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=[spec])
    archive.write_out(str(directory), verbose=False)


def export_saved_model(student: Student, directory, black_level: float = 0.0, white_level: float = 65535.0) -> None:
    """SavedModel: `serving_default` (float32 mosaic in [0,1]) and `serving_uint16` (sensor counts, fixed levels)."""
    check_student(
        student.model, student.image_size, len(student.classes), student.path or "student", student.student_input
    )
    if not white_level > black_level >= 0:
        raise UserError(f"--black_level={black_level}, --white_level={white_level}: need 0 <= black < white")
    serve = probabilities_fn(student)
    write_archive(
        student.model,
        {
            SIGNATURE: (serve, mosaic_spec(student.image_size)),
            UINT16_SIGNATURE: (
                lambda counts: serve(bayer.scale_levels(counts, black_level, white_level)),
                mosaic_spec(student.image_size, tf.uint16),
            ),
        },
        directory,
    )


def check_representative(samples, image_size: int) -> np.ndarray:
    """Calibration mosaics as float32 [N, H, W, 1]; UserError naming the problem otherwise."""
    samples = np.asarray(samples)
    if samples.ndim == 3:
        samples = samples[..., np.newaxis]
    expected = (image_size, image_size, 1)
    if samples.ndim != 4 or samples.shape[1:] != expected or samples.shape[0] < 1:
        raise UserError(
            f"representative set: shape {samples.shape}; expected N >= 1 mosaics [N, {image_size}, "
            f"{image_size}, 1] (the student's input size, one channel)"
        )
    if not np.issubdtype(samples.dtype, np.floating):
        raise UserError(f"representative set: dtype {samples.dtype}; expected float mosaics in [0, 1]")
    if not np.all(np.isfinite(samples)):
        raise UserError("representative set: holds NaN or Inf values")
    return samples.astype(np.float32)


def labelled_source(student: Student, flag: str, dataset: str = "", seed: int = 0) -> sources.Source:
    """`dataset` (default: the student's own) with its labels in the student's output space, so Imagenette's
    WordNet-id folders count against an ImageNet student's 1001 outputs; `flag` names the student in errors."""
    source = sources.get_source(dataset or student.dataset, seed=seed)
    return relabel.in_label_space(source, student.classes, student.wnids, what=flag)


def pipeline_mosaics(
    student: Student, source: sources.Source, split: str, count: int | None, seed: int = 0, training: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(mosaics float32 [N, H, W, 1], labels) of `split` from the one tf.data builder, with the run's CFA and noise."""
    # Training batches drop their remainder: one batch of `count` (at most the split's size) keeps every example.
    batch_size = min(count, source.counts.get(split, count)) if training and count else 256
    cfg = pipeline.PipelineConfig(
        image_size=student.image_size,
        batch_size=batch_size,
        cfa=student.cfa,
        noise_std=student.noise_std,
        seed=seed,
        take=count,
        cache=False,
        sensor=student.sensor,
    )
    mosaics, labels = [], []
    for raw, _, label in pipeline.build(source, split, cfg, training=training, norm=None, mode="mosaic"):
        mosaics.append(raw.numpy())
        labels.append(label.numpy())
    if not mosaics:
        raise UserError(f"{source.name}: the {split} split is empty")
    return np.concatenate(mosaics), np.concatenate(labels)
