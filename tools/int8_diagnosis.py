"""Where an exported student's int8 agreement goes: for each student and its export, (1) the float Keras student on
its test mosaics rounded to the int8 file's input grid (does the int8 input alone cost agreement?), (2) the float
student with every convolution and dense kernel rounded to its per-channel int8 grid, as the converter stores it
(do the weights?), (3) the float student with every activation the int8 model stores rounded to its pinned range
(the manifest's, FakeQuant in Keras; do the activations?) and with only one of the first five rounded (which?), and
(4) the pinned ranges of the first layers and the median width of all of them (a range's int8 step is its
width / 255). Run from the repository root after the exports, e.g.:
    python tools/int8_diagnosis.py docs/results/int8_diagnosis_untrained_mobilenetv2.json \
        infill=runs/untrained_mobilenetv2/infill:runs/export_untrained_mobilenetv2_infill \
        packed=runs/untrained_mobilenetv2/packed:runs/export_untrained_mobilenetv2_packed
(int8_diagnosis_mobilenetv2_realistic.json was written by the first version, without (2), under another name.)
"""

import dataclasses
import json
import statistics
import sys
import time

import numpy as np

from isp_keras import fsutil
from isp_keras.deploy import parity, serving
from isp_keras.training import quantise


def agreement_on_ranges(student, ranges: dict, mosaics: np.ndarray, reference: np.ndarray) -> float:
    """Top-1 agreement with `reference` of the float student with the tensors named in `ranges` rounded to them."""
    pinned = dataclasses.replace(student, model=quantise.with_ranges(student.model, ranges))
    return parity.top1_agreement(parity.keras_probabilities(pinned, mosaics), reference)


def diagnose(student_dir: str, export_dir: str) -> dict:
    student = serving.load_student(student_dir)
    source = serving.labelled_source(student, student_dir)
    manifest = json.loads(open(f"{export_dir}/manifest.json").read())
    # the export's parity mosaics: its figures and these are over the same images
    mosaics, _ = serving.pipeline_mosaics(student, source, source.test_split, manifest["parity"]["parity_examples"])
    quant = manifest["int8_input_quantisation"]
    scale, zero = quant["scale"], quant["zero_point"]
    rounded = ((np.clip(np.round(mosaics / scale + zero), -128, 127) - zero) * scale).astype(np.float32)
    reference = parity.keras_probabilities(student, mosaics)
    snapped = serving.load_student(student_dir)
    quantise.snap_weights(snapped.model)
    ranges = manifest["calibration"]["activation_ranges"]["ranges"]
    first = {name: ranges[name] for name in list(ranges)[:5]}
    return {
        "export": export_dir,
        "int8_top1_agreement": manifest["parity"]["int8_top1_agreement"],
        "int8_float_head_top1_agreement": manifest["parity"].get("int8_float_head_top1_agreement"),
        "parity_examples": manifest["parity"]["parity_examples"],
        "float_on_int8_input_grid_top1_agreement": parity.top1_agreement(
            parity.keras_probabilities(student, rounded), reference
        ),
        "float_weights_on_int8_grid_top1_agreement": parity.top1_agreement(
            parity.keras_probabilities(snapped, mosaics), reference
        ),
        "float_activations_on_pinned_ranges_top1_agreement": agreement_on_ranges(student, ranges, mosaics, reference),
        "float_one_activation_on_its_range_top1_agreement": {
            name: agreement_on_ranges(student, {name: first[name]}, mosaics, reference) for name in first
        },
        "input_scale": scale,
        "mean_mosaic_level": float(mosaics.mean()),
        "first_ranges": first,
        "median_range_width": statistics.median(hi - lo for lo, hi in ranges.values()),
    }


def run(measure, out: str, *specs: str) -> None:
    """`measure(student_dir, export_dir)` for each NAME=STUDENT_DIR:EXPORT_DIR spec, written to `out` as JSON."""
    start = time.time()
    result = {"command": " ".join(["python", *sys.argv]), "students": {}}
    for spec in specs:
        name, dirs = spec.split("=", 1)
        student_dir, export_dir = dirs.split(":", 1)
        result["students"][name] = measure(student_dir, export_dir)
    result["wall_seconds"] = round(time.time() - start)
    fsutil.write_json_atomic(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)  # the usage
    run(diagnose, *sys.argv[1:])
