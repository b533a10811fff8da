"""Parity of an export with its Keras student: probabilities of each format, the figures, the gates."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from isp_keras.deploy import runtime, serving

MAX_FLOAT_PROB_DIFF = 1e-4
MIN_INT8_AGREEMENT = 98.0


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
    for name in ("int8", "int8_float_head", "int16x8"):
        key = f"{name}_top1_agreement"
        if key in figures and not figures[key] >= MIN_INT8_AGREEMENT:
            failures.append(f"{name} top-1 agreement {figures[key]:.2f}% < {MIN_INT8_AGREEMENT:g}%")
    return failures


def keras_probabilities(student: serving.Student, mosaics: np.ndarray, batch_size: int = 256) -> np.ndarray:
    serve = tf.function(serving.probabilities_fn(student))
    return np.concatenate(
        [
            serve(tf.constant(mosaics[i : i + batch_size]))[serving.OUTPUT_NAME].numpy()
            for i in runtime.batches(len(mosaics), batch_size, "Keras student")
        ]
    )


def saved_model_probabilities(
    directory, mosaics: np.ndarray, batch_size: int = 256, signature: str = serving.SIGNATURE
) -> np.ndarray:
    fn = tf.saved_model.load(str(directory)).signatures[signature]
    return np.concatenate(
        [
            fn(**{serving.INPUT_NAME: tf.constant(mosaics[i : i + batch_size])})[serving.OUTPUT_NAME].numpy()
            for i in runtime.batches(len(mosaics), batch_size, f"SavedModel {signature}")
        ]
    )
