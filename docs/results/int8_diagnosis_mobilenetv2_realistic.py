"""Why the realistic-sensor MobileNetV2 students (no quantisation-aware epoch) lose so much in int8: for each exported
student, (1) the float Keras student on its test mosaics rounded to the int8 file's input grid (does the int8 input
alone cost agreement?), and (2) the pinned activation ranges of the first layers (a range's int8 step is its
width / 255). Run from the repository root after the exports:
    python docs/results/int8_diagnosis_mobilenetv2_realistic.py docs/results/int8_diagnosis_mobilenetv2_realistic.json \
        infill=runs/table_mobilenetv2_inputs_realistic/input_infill/distilled:runs/export_mobilenetv2_realistic_infill \
        packed=runs/table_mobilenetv2_inputs_realistic/input_packed/distilled:runs/export_mobilenetv2_realistic_packed
"""

import json
import sys
import time

import numpy as np

from isp_keras.deploy import parity, serving

IMAGES = 256


def diagnose(student_dir: str, export_dir: str) -> dict:
    student = serving.load_student(student_dir)
    source = serving.labelled_source(student, student_dir)
    mosaics, _ = serving.pipeline_mosaics(student, source, source.test_split, IMAGES)
    manifest = json.loads(open(f"{export_dir}/manifest.json").read())
    quant = manifest["int8_input_quantisation"]
    scale, zero = quant["scale"], quant["zero_point"]
    rounded = ((np.clip(np.round(mosaics / scale + zero), -128, 127) - zero) * scale).astype(np.float32)
    reference = parity.keras_probabilities(student, mosaics)
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
        "input_scale": scale,
        "mean_mosaic_level": float(mosaics.mean()),
        "first_ranges": first,
    }


def main(out: str, *specs: str) -> None:
    start = time.time()
    result = {"command": " ".join(["python", *sys.argv]), "images_for_the_input_grid_check": IMAGES, "students": {}}
    for spec in specs:
        name, dirs = spec.split("=", 1)
        student_dir, export_dir = dirs.split(":", 1)
        result["students"][name] = diagnose(student_dir, export_dir)
    result["wall_seconds"] = round(time.time() - start)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
