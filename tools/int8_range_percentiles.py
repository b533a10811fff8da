"""Would other int8 activation ranges help? For each student and its export, the float student with every activation
the int8 model stores rounded to a range (FakeQuant in Keras, as in int8_diagnosis.py), for three ways of choosing
the ranges on the export's calibration mosaics (300 training mosaics, seed 0): the export's own (the mean over
batches of 100 of the per-batch min and max, recomputed here), and each tensor's 0.1-99.9 and 0.01-99.99
percentiles over all its calibration values. A simulation, not an int8 file: scored by top-1 agreement with the
plain float student on the export's parity mosaics. Run from the repository root after the exports, e.g.:
    python tools/int8_range_percentiles.py docs/results/int8_range_percentiles_embedded.json \
        realistic_infill=runs/table_embedded_inputs_realistic/input_infill/seed_0/distilled_qat:runs/export_embedded_realistic_infill
"""

import json
import sys

import keras
import numpy as np
import tensorflow as tf
from int8_diagnosis import agreement_on_ranges, run  # this folder's script, on sys.path when run as a script

from isp_keras.data import pipeline
from isp_keras.deploy import parity, serving
from isp_keras.training import quantise

CALIBRATION = 300
BATCH = 100
PERCENTILES = (99.9, 99.99)


def student_inputs(student, mosaics: np.ndarray) -> list:
    return [
        pipeline.student_input(
            tf.constant(mosaics[i : i + BATCH]), cfa=student.cfa, norm=student.norm, kind=student.student_input
        ).numpy()
        for i in range(0, len(mosaics), BATCH)
    ]


def percentile_ranges(model, batches: list, q: float) -> dict:
    names = quantise.quantised_layers(model)
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in names])
    values = {name: [] for name in [quantise.INPUT, *names]}
    for batch in batches:
        values[quantise.INPUT].append(batch.ravel())
        for name, out in zip(names, probe(batch, training=False)):
            values[name].append(np.asarray(out).ravel())
    ranges = {}
    for name, parts in values.items():
        lo, hi = np.percentile(np.concatenate(parts), [100 - q, q])
        ranges[name] = [min(float(lo), 0.0), max(float(hi), 0.0)]
    return ranges


def probe(student_dir: str, export_dir: str) -> dict:
    student = serving.load_student(student_dir)
    source = serving.labelled_source(student, student_dir)
    manifest = json.loads(open(f"{export_dir}/manifest.json").read())
    calibration, _ = serving.pipeline_mosaics(student, source, source.train_split, CALIBRATION, 0, training=True)
    batches = student_inputs(student, calibration)
    mosaics, _ = serving.pipeline_mosaics(student, source, source.test_split, manifest["parity"]["parity_examples"])
    reference = parity.keras_probabilities(student, mosaics)
    choices = {"mean_of_batch_extremes": quantise.activation_ranges(student.model, batches)}
    for q in PERCENTILES:
        choices[f"percentile_{q:g}"] = percentile_ranges(student.model, batches, q)
    result = {"export": export_dir, "int8_top1_agreement": manifest["parity"]["int8_top1_agreement"]}
    for name, ranges in choices.items():
        result[name] = {
            "float_activations_on_ranges_top1_agreement": agreement_on_ranges(student, ranges, mosaics, reference),
            "median_range_width": float(np.median([hi - lo for lo, hi in ranges.values()])),
            "first_ranges": {key: ranges[key] for key in list(ranges)[:3]},
        }
    return result


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)  # the usage
    run(probe, *sys.argv[1:])
