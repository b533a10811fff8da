"""TFLite conversion of the serving graph: float32, dynamic-range, full int8 (activation ranges pinned) and 16x8
(int16 activations, int8 weights)."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf
import tflite as tflite_schema
from absl import logging

from isp_keras import console
from isp_keras.data import pipeline
from isp_keras.deploy import runtime, serving
from isp_keras.errors import UserError
from isp_keras.models import tflite_reader
from isp_keras.training import quantise

TFLITE_FILES = {
    "float32": "model_float32.tflite",
    "int8": "model_int8.tflite",
    "int8_float_head": "model_int8_float_head.tflite",
    "dynamic": "model_dynamic.tflite",
    "int16x8": "model_int16x8.tflite",
}
INTEGER_KINDS = ("int8", "int8_float_head", "int16x8")
# int8_float_head leaves the classifier head in float: over 1000 classes the int8 logits' step (about 0.1 for the
# MobileNetV2 student) and the int8 probabilities' (1/256) exceed many top-2 gaps, so rounding there flips near-ties.
_PASS_THROUGH = ("RESHAPE", "SQUEEZE", "DEQUANTIZE", "QUANTIZE")
RANGE_BATCH = 100  # calibration mosaics per batch of the activation-range estimate (quantise.activation_ranges)


def to_tflite(
    saved_model_dir,
    kind: str,
    representative: np.ndarray | None = None,
    signature: str = serving.SIGNATURE,
    input_name: str = serving.INPUT_NAME,
) -> bytes:
    """Convert a SavedModel signature (its input named `input_name`): float32, dynamic-range (int8 weights), full
    int8 (int8 I/O), int8 with a float head (float I/O) or int16 activations with int8 weights (float I/O)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[signature])
    if kind == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif kind in INTEGER_KINDS:
        if representative is None:
            raise ValueError("full-integer conversion needs a representative set")
        samples = representative

        def calibration():
            for sample in samples:
                yield {input_name: sample[np.newaxis]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        if kind == "int8_float_head":
            return _float_head(converter, lambda: ([sample[np.newaxis]] for sample in samples))
        if kind == "int16x8":
            # 16x8 has no SPACE_TO_DEPTH / DEPTH_TO_SPACE (the infill front end): such ops stay float
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    elif kind != "float32":
        raise ValueError(f"unknown TFLite kind {kind!r}")
    with warnings.catch_warnings(), console.native_stderr_filtered():
        # the converter's own calibrator still builds a tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return converter.convert()


def _float_head(converter, samples) -> bytes:
    """Int8 everywhere but the classifier head, with float32 input and output, by the public selective-quantisation
    route (tf.lite.experimental.QuantizationDebugger): a first conversion with the softmax left float names the
    ops that compute its logits, a second leaves those float too."""
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]

    def convert(nodes: list) -> bytes:
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=["SOFTMAX"], denylisted_nodes=nodes)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=samples, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()

    with warnings.catch_warnings(), console.native_stderr_filtered():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return convert(head_nodes(convert([])))


def head_nodes(model_bytes: bytes) -> list[str]:
    """Output tensor names of the ops computing the softmax's input: back from the (single) SOFTMAX through
    shape and (de)quantisation ops to the FULLY_CONNECTED or CONV_2D that produces the logits, that op included."""
    model = tflite_schema.Model.GetRootAs(model_bytes, 0)
    graph = model.Subgraphs(0)
    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
    name = functools.partial(tflite_reader.opcode_name, model)

    producer = {int(t): op for op in ops for t in op.OutputsAsNumpy()}
    softmax = [op for op in ops if name(op) == "SOFTMAX"]
    if len(softmax) != 1:
        raise UserError(f"float head: expected one SOFTMAX op in the int8 model, found {len(softmax)}")
    nodes, op = [], producer.get(int(softmax[0].Inputs(0)))
    while op is not None and name(op) in _PASS_THROUGH:
        nodes.append(graph.Tensors(int(op.Outputs(0))).Name().decode())
        op = producer.get(int(op.Inputs(0)))
    if op is None or name(op) not in ("FULLY_CONNECTED", "CONV_2D"):
        found = "a graph input" if op is None else name(op)
        raise UserError(f"float head: the softmax's logits come from {found}, not a fully connected or convolution")
    return [*nodes, graph.Tensors(int(op.Outputs(0))).Name().decode()]


def int8_tflite(
    student: serving.Student, representative: np.ndarray, range_batch: int = RANGE_BATCH, kinds=("int8",)
) -> tuple[dict, dict]:
    """Integer TFLite models of the serving graph (`kinds` of INTEGER_KINDS), the int8 ones with the student's
    activation ranges pinned (quantise.py) and the RAW front end calibrated by the converter on the same
    representative mosaics; 16x8 calibrated by the converter alone (the pins are 8-bit fake quantisation).
    Returns ({kind: model}, ranges)."""
    unknown = [kind for kind in kinds if kind not in INTEGER_KINDS]
    if unknown:
        raise ValueError(f"unknown integer TFLite kind(s) {unknown}")
    if range_batch < 1:
        raise UserError(f"range batch {range_batch}: must be >= 1")
    inputs = pipeline.student_input(
        tf.constant(representative), cfa=student.cfa, norm=student.norm, kind=student.student_input
    ).numpy()
    try:
        ranges = quantise.activation_ranges(
            student.model, [inputs[i : i + range_batch] for i in range(0, len(inputs), range_batch)]
        )
    except ValueError as exc:  # not a functional model (Sequential, subclassed): the converter's own ranges
        logging.warning("%s: int8 activation ranges left to the converter (%s)", student.path or "student", exc)
        ranges = {}
    head = head_layers(student.model) if "int8_float_head" in kinds else set()
    if "int8_float_head" in kinds and not head:
        raise UserError(
            f"float head: {student.path or 'the student'} ends in {type(student.model.layers[-1]).__name__} "
            f"({student.model.layers[-1].name}), not a Dense or Conv2D classifier"
        )
    models = {}
    for kind in kinds:
        # A pinned range after the logits would make the converter quantise the head whatever the deny-list.
        pinned = {k: v for k, v in ranges.items() if k not in head} if kind == "int8_float_head" else ranges
        pinned = {} if kind == "int16x8" else pinned
        ranged = dataclasses.replace(student, model=quantise.with_ranges(student.model, pinned)) if pinned else student
        with tempfile.TemporaryDirectory(prefix="isp_keras_int8_") as tmp:
            serving.write_archive(
                ranged.model,
                {serving.SIGNATURE: (serving.probabilities_fn(ranged), serving.mosaic_spec(student.image_size))},
                tmp,
            )
            models[kind] = to_tflite(tmp, kind, representative)
    return models, ranges


def head_layers(model: keras.Model) -> set:
    """The last Dense or Conv2D layer and the reshaping layers after it: the Keras side of head_nodes."""
    names = set()
    for layer in reversed(model.layers):
        names.add(layer.name)
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            return names
        if not isinstance(layer, (keras.layers.Reshape, keras.layers.Flatten, keras.layers.Activation)):
            break
    return set()


def tflite_input_quantisation(model_bytes: bytes) -> dict:
    runner = runtime.TFLiteRunner(model_bytes, num_threads=1)
    scale, zero = runner.input["quantization"]
    return {"dtype": np.dtype(runner.input_dtype).name, "scale": float(scale), "zero_point": int(zero)}
