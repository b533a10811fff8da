"""The deployed student: a serving graph that takes the sensor's Bayer mosaic and returns class probabilities.

mosaic [batch, H, W, 1] -> datasets.student_input (bayer.raw_to_input: bilinear infill + per-site normalisation,
the very functions the training pipeline runs, in the run's channel order) -> student -> softmax.
Also: loading a trained student with its run description, TFLite conversion (float32, dynamic-range, full int8),
a LiteRT runner, the representative set and the parity figures the export command gates on.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from isp_keras import bayer, datasets, quantise, records
from isp_keras.errors import UserError

SIGNATURE = "serving_default"
UINT16_SIGNATURE = "serving_uint16"
INPUT_NAME = "mosaic"
OUTPUT_NAME = "probabilities"
TFLITE_FILES = {"float32": "model_float32.tflite", "int8": "model_int8.tflite", "dynamic": "model_dynamic.tflite"}
LABELS = "labels.txt"
MANIFEST = "manifest.json"
# Parity gates of the issue: float models match the Keras student's probabilities; int8 agrees on top-1.
MAX_FLOAT_PROB_DIFF = 1e-4
MIN_INT8_AGREEMENT = 98.0


@dataclasses.dataclass
class Student:
    """A trained student and what serving needs to feed it (from student.json written by experiment.save_student)."""

    model: keras.Model
    cfa: str
    image_size: int
    classes: list
    norm: datasets.Normalisation
    noise_std: float = 0.0
    teacher: str = ""
    dataset: str = "embedded"
    path: str = ""


def check_student(model, image_size: int, num_classes: int, source: str) -> None:
    """One-line UserError unless `model` is a plain Keras classifier of 3-channel infilled RAW of the run's size."""
    from isp_keras import distiller

    if isinstance(model, distiller.Distiller):
        raise UserError(f"{source}: is a Distiller (the teacher+student training wrapper); export its student "
                        "(RUN_DIR/student.keras) instead")
    if not isinstance(model, keras.Model):
        raise UserError(f"{source}: holds a {type(model).__name__}, not a Keras model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(f"{source}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                        "a student has one image input and one logits output")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise UserError(f"{source}: the model takes input of shape {shape}; a RAW student takes the 3-channel "
                        "bilinearly infilled mosaic [batch, H, W, 3]")
    if any(s is not None and s != image_size for s in shape[1:3]):
        raise UserError(f"{source}: the model takes {shape[1]}x{shape[2]} images but student.json says "
                        f"image_size {image_size}")
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
    from isp_keras import models

    path = Path(path)
    keras_path = path / "student.keras" if path.is_dir() else path
    if path.is_dir() and not keras_path.exists():
        raise UserError(f"--student={path}: no student.keras in this directory (is the run finished?)")
    if not keras_path.exists():
        raise UserError(f"--student={path}: no such file or run directory")
    if keras_path.suffix != ".keras":
        raise UserError(f"--student={path}: expected a run directory or a .keras file")
    if _keras_class_name(keras_path) == "Distiller":
        raise UserError(f"{keras_path}: is a Distiller (the teacher+student training wrapper); export its student "
                        "(RUN_DIR/student.keras) instead")
    meta_path = keras_path.with_suffix(".json")
    if not meta_path.exists():
        raise UserError(f"{keras_path}: no {meta_path.name} beside it; export needs the run's CFA and normalisation "
                        "(written by the train command)")
    try:
        meta = json.loads(meta_path.read_text())
        norm = datasets.Normalisation(**meta["normalisation"])
        cfa = bayer.check_cfa(meta["cfa"])
        image_size, classes = int(meta["image_size"]), list(meta["classes"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{meta_path}: not a student description ({type(exc).__name__}: {exc})") from None
    if image_size % 2:
        raise UserError(f"{meta_path}: image_size {image_size} is odd; a Bayer mosaic needs an even size")
    model = models.load_model_file(keras_path)
    check_student(model, image_size, len(classes), str(keras_path))
    dataset = "embedded"
    config_path = keras_path.parent / "config.json"
    if config_path.exists():
        try:
            dataset = json.loads(config_path.read_text())["config"]["dataset"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return Student(model, cfa, image_size, classes, norm, float(meta.get("noise_std", 0.0)),
                   str(meta.get("teacher", "")), dataset, str(keras_path))


def probabilities_fn(student: Student):
    """mosaic float32 [batch, H, W, 1] in [0, 1] -> {"probabilities": [batch, classes]}: the serving graph."""

    def serve(mosaic):
        x = datasets.student_input(mosaic, cfa=student.cfa, norm=student.norm)
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
    check_student(student.model, student.image_size, len(student.classes), student.path or "student")
    if not white_level > black_level >= 0:
        raise UserError(f"--black_level={black_level}, --white_level={white_level}: need 0 <= black < white")
    serve = probabilities_fn(student)
    write_archive(student.model, {
        SIGNATURE: (serve, mosaic_spec(student.image_size)),
        UINT16_SIGNATURE: (lambda counts: serve(bayer.scale_levels(counts, black_level, white_level)),
                           mosaic_spec(student.image_size, tf.uint16))}, directory)


def check_representative(samples, image_size: int) -> np.ndarray:
    """Calibration mosaics as float32 [N, H, W, 1]; UserError naming the problem otherwise."""
    samples = np.asarray(samples)
    if samples.ndim == 3:
        samples = samples[..., np.newaxis]
    expected = (image_size, image_size, 1)
    if samples.ndim != 4 or samples.shape[1:] != expected or samples.shape[0] < 1:
        raise UserError(f"representative set: shape {samples.shape}; expected N >= 1 mosaics [N, {image_size}, "
                        f"{image_size}, 1] (the student's input size, one channel)")
    if not np.issubdtype(samples.dtype, np.floating):
        raise UserError(f"representative set: dtype {samples.dtype}; expected float mosaics in [0, 1]")
    if not np.all(np.isfinite(samples)):
        raise UserError("representative set: holds NaN or Inf values")
    return samples.astype(np.float32)


def pipeline_mosaics(student: Student, source: datasets.Source, split: str, count: int | None, seed: int = 0,
                     training: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mosaics float32 [N, H, W, 1], labels) of `split` from the one tf.data builder, with the run's CFA and noise."""
    # Training batches drop their remainder: one batch of `count` keeps every example.
    batch_size = count if training and count else 256
    cfg = datasets.PipelineConfig(image_size=student.image_size, batch_size=batch_size, cfa=student.cfa,
                                  noise_std=student.noise_std, seed=seed, take=count, cache=False)
    mosaics, labels = [], []
    for raw, _, label in datasets.build(source, split, cfg, training=training, norm=None, mode="mosaic"):
        mosaics.append(raw.numpy())
        labels.append(label.numpy())
    if not mosaics:
        raise UserError(f"{source.name}: the {split} split is empty")
    return np.concatenate(mosaics), np.concatenate(labels)


def to_tflite(saved_model_dir, kind: str, representative: np.ndarray | None = None,
              signature: str = SIGNATURE) -> bytes:
    """Convert a SavedModel signature: float32, dynamic-range (int8 weights), or full int8 (int8 I/O)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[signature])
    if kind == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif kind == "int8":
        if representative is None:
            raise ValueError("full-integer conversion needs a representative set")
        samples = representative

        def calibration():
            for sample in samples:
                yield {INPUT_NAME: sample[np.newaxis]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif kind != "float32":
        raise ValueError(f"unknown TFLite kind {kind!r}")
    return converter.convert()


RANGE_BATCH = 100  # calibration mosaics per batch of the activation-range estimate (quantise.activation_ranges)


def int8_tflite(student: Student, representative: np.ndarray, range_batch: int = RANGE_BATCH) -> tuple[bytes, dict]:
    """Full-integer TFLite of the serving graph, with the student's activation ranges pinned (quantise.py) and the
    RAW front end calibrated by the converter on the same representative mosaics. Returns (model, ranges)."""
    if range_batch < 1:
        raise UserError(f"range batch {range_batch}: must be >= 1")
    inputs = datasets.student_input(tf.constant(representative), cfa=student.cfa, norm=student.norm).numpy()
    try:
        ranges = quantise.activation_ranges(
            student.model, [inputs[i:i + range_batch] for i in range(0, len(inputs), range_batch)])
        ranged = dataclasses.replace(student, model=quantise.with_ranges(student.model, ranges))
    except ValueError as exc:  # not a functional model (Sequential, subclassed): the converter's own ranges
        logging.warning("%s: int8 activation ranges left to the converter (%s)", student.path or "student", exc)
        ranges, ranged = {}, student
    with tempfile.TemporaryDirectory(prefix="isp_keras_int8_") as tmp:
        write_archive(ranged.model, {SIGNATURE: (probabilities_fn(ranged), mosaic_spec(student.image_size))}, tmp)
        return to_tflite(tmp, "int8", representative), ranges


class TFLiteRunner:
    """A LiteRT interpreter over a mosaic -> probabilities model; quantises int8 input/output transparently."""

    def __init__(self, model, num_threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        kwargs = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        try:
            self.interpreter = Interpreter(num_threads=num_threads, **kwargs)
        except (ValueError, RuntimeError) as exc:
            name = kwargs.get("model_path", "model")
            raise UserError(f"{name}: not a TFLite model LiteRT can load ({exc})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(s) for s in self.input["shape"][1:])
        self.batch = int(self.input["shape"][0])
        self.interpreter.allocate_tensors()

    @property
    def input_dtype(self):
        return self.input["dtype"]

    def _resize(self, batch: int) -> None:
        if batch != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input_shape])
            self.interpreter.allocate_tensors()
            self.batch = batch

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        scale, zero = self.input["quantization"]
        if scale == 0:  # not a quantised input (float32 mosaic, uint16 counts, uint8 RGB): feed as is
            return x.astype(self.input["dtype"])
        info = np.iinfo(self.input["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.input["dtype"])

    def _dequantise(self, y: np.ndarray) -> np.ndarray:
        scale, zero = self.output["quantization"]
        if scale == 0:
            return y
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def invoke(self, mosaics: np.ndarray) -> np.ndarray:
        """One interpreter call on the whole batch: float32 [N, H, W, 1] -> probabilities [N, classes]."""
        self._resize(len(mosaics))
        self.interpreter.set_tensor(self.input["index"], self._quantise(mosaics))
        self.interpreter.invoke()
        return self._dequantise(self.interpreter.get_tensor(self.output["index"]))

    def predict(self, mosaics: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate([self.invoke(mosaics[i:i + batch_size])
                               for i in batches(len(mosaics), batch_size, "LiteRT")])


def batches(count: int, batch_size: int, desc: str):
    """Batch start indices, with a progress bar when there is more than one batch."""
    from tqdm.auto import tqdm

    return tqdm(range(0, count, batch_size), desc=desc, leave=False, disable=count <= batch_size)


def keras_probabilities(student: Student, mosaics: np.ndarray, batch_size: int = 256) -> np.ndarray:
    serve = tf.function(probabilities_fn(student))
    return np.concatenate([serve(tf.constant(mosaics[i:i + batch_size]))[OUTPUT_NAME].numpy()
                           for i in batches(len(mosaics), batch_size, "Keras student")])


def saved_model_probabilities(directory, mosaics: np.ndarray, batch_size: int = 256,
                              signature: str = SIGNATURE) -> np.ndarray:
    fn = tf.saved_model.load(str(directory)).signatures[signature]
    return np.concatenate([fn(**{INPUT_NAME: tf.constant(mosaics[i:i + batch_size])})[OUTPUT_NAME].numpy()
                           for i in batches(len(mosaics), batch_size, f"SavedModel {signature}")])


def top1_agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> float:
    """Percentage of examples whose arg-max class is the same."""
    return float(100.0 * np.mean(np.argmax(probs_a, -1) == np.argmax(probs_b, -1)))


def parity_figures(reference: np.ndarray, candidates: dict) -> dict:
    """{name_max_abs_prob_diff, name_top1_agreement} of each candidate's probabilities against the Keras student."""
    figures = {"parity_examples": int(len(reference))}
    for name, probs in candidates.items():
        figures[f"{name}_max_abs_prob_diff"] = float(np.max(np.abs(probs - reference)))
        figures[f"{name}_top1_agreement"] = top1_agreement(probs, reference)
    return figures


def parity_failures(figures: dict) -> list[str]:
    """The gates the export must pass; an empty list when all hold."""
    failures = []
    for name in ("saved_model", "float32"):
        key = f"{name}_max_abs_prob_diff"
        if key in figures and not figures[key] <= MAX_FLOAT_PROB_DIFF:
            failures.append(f"{name} max |prob diff| {figures[key]:.3g} > {MAX_FLOAT_PROB_DIFF:g}")
    if "int8_top1_agreement" in figures and not figures["int8_top1_agreement"] >= MIN_INT8_AGREEMENT:
        failures.append(f"int8 top-1 agreement {figures['int8_top1_agreement']:.2f}% < {MIN_INT8_AGREEMENT:g}%")
    return failures


def file_hashes(directory) -> dict:
    """sha256 of every file under `directory` but the manifest, by relative path."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): records.sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def tflite_input_quantisation(model_bytes: bytes) -> dict:
    runner = TFLiteRunner(model_bytes, num_threads=1)
    scale, zero = runner.input["quantization"]
    return {"dtype": np.dtype(runner.input_dtype).name, "scale": float(scale), "zero_point": int(zero)}


def manifest(student: Student, directory, kinds: list, parity: dict, levels: tuple, int8_model: bytes,
             calibration: dict) -> dict:
    """What a device needs besides the files (classes, input, CFA, statistics) plus parity and every file's sha256."""
    size = student.image_size
    return {
        "classes": list(student.classes), "input": {"shape": [None, size, size, 1], "dtype": "float32",
                                                    "range": [0.0, 1.0]},
        "cfa": student.cfa, "normalisation": student.norm.to_json(), "noise_std": student.noise_std,
        "uint16_input": {"signature": UINT16_SIGNATURE, "black_level": levels[0], "white_level": levels[1]},
        "signatures": [SIGNATURE, UINT16_SIGNATURE], "output": OUTPUT_NAME,
        "tflite": {kind: TFLITE_FILES[kind] for kind in kinds},
        "int8_input_quantisation": tflite_input_quantisation(int8_model), "calibration": calibration,
        "parity": parity, "student": student.path, "teacher": student.teacher, "files": file_hashes(directory)}
