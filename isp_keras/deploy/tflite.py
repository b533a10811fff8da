"""TFLite conversion of the serving graph: float32, dynamic-range and full int8 (activation ranges pinned)."""

from __future__ import annotations

import dataclasses
import tempfile
import warnings

import numpy as np
import tensorflow as tf
from absl import logging

from isp_keras.data import pipeline
from isp_keras.deploy import runtime, serving
from isp_keras.errors import UserError
from isp_keras.training import quantise

TFLITE_FILES = {"float32": "model_float32.tflite", "int8": "model_int8.tflite", "dynamic": "model_dynamic.tflite"}
RANGE_BATCH = 100  # calibration mosaics per batch of the activation-range estimate (quantise.activation_ranges)


def to_tflite(
    saved_model_dir,
    kind: str,
    representative: np.ndarray | None = None,
    signature: str = serving.SIGNATURE,
    input_name: str = serving.INPUT_NAME,
) -> bytes:
    """Convert a SavedModel signature (its input named `input_name`): float32, dynamic-range (int8 weights), or full
    int8 (int8 I/O)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[signature])
    if kind == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif kind == "int8":
        if representative is None:
            raise ValueError("full-integer conversion needs a representative set")
        samples = representative

        def calibration():
            for sample in samples:
                yield {input_name: sample[np.newaxis]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif kind != "float32":
        raise ValueError(f"unknown TFLite kind {kind!r}")
    with warnings.catch_warnings():  # the converter's own calibrator still builds a tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return converter.convert()


def int8_tflite(
    student: serving.Student, representative: np.ndarray, range_batch: int = RANGE_BATCH
) -> tuple[bytes, dict]:
    """Full-integer TFLite of the serving graph, with the student's activation ranges pinned (quantise.py) and the
    RAW front end calibrated by the converter on the same representative mosaics. Returns (model, ranges)."""
    if range_batch < 1:
        raise UserError(f"range batch {range_batch}: must be >= 1")
    inputs = pipeline.student_input(
        tf.constant(representative), cfa=student.cfa, norm=student.norm, kind=student.student_input
    ).numpy()
    try:
        ranges = quantise.activation_ranges(
            student.model, [inputs[i : i + range_batch] for i in range(0, len(inputs), range_batch)]
        )
        ranged = dataclasses.replace(student, model=quantise.with_ranges(student.model, ranges))
    except ValueError as exc:  # not a functional model (Sequential, subclassed): the converter's own ranges
        logging.warning("%s: int8 activation ranges left to the converter (%s)", student.path or "student", exc)
        ranges, ranged = {}, student
    with tempfile.TemporaryDirectory(prefix="isp_keras_int8_") as tmp:
        serving.write_archive(
            ranged.model,
            {serving.SIGNATURE: (serving.probabilities_fn(ranged), serving.mosaic_spec(student.image_size))},
            tmp,
        )
        return to_tflite(tmp, "int8", representative), ranges


def tflite_input_quantisation(model_bytes: bytes) -> dict:
    runner = runtime.TFLiteRunner(model_bytes, num_threads=1)
    scale, zero = runner.input["quantization"]
    return {"dtype": np.dtype(runner.input_dtype).name, "scale": float(scale), "zero_point": int(zero)}
