"""Which activation tensors' int8 rounding costs an exported student its agreement: the float Keras student (kernels
on their int8 grid, as the converter stores them) with one of the tensors the int8 file materialises rounded to its
pinned range (the export manifest's) at a time, then with every one rounded but the K that cost most (K = 0, 1, 2,
3, 5, 10), top-1 agreement with the float student on the first COUNT of the export's parity mosaics. Run from the
repository root, e.g. (docs/results/int8_activation_tensors_embedded.json):
    python tools/int8_activation_tensors.py runs/int8_r20 runs/int8_r20/export \
        docs/results/int8_activation_tensors_embedded.json 10000
"""

import dataclasses
import json
import sys
import time

from isp_keras import fsutil
from isp_keras.deploy import parity, serving
from isp_keras.training import quantise

KEPT = (0, 1, 2, 3, 5, 10)


def agreement_on_ranges(student, ranges: dict, mosaics, reference) -> float:
    """Top-1 agreement with `reference` of the student with the tensors named in `ranges` rounded to them."""
    pinned = dataclasses.replace(student, model=quantise.with_ranges(student.model, ranges))
    return parity.top1_agreement(parity.keras_probabilities(pinned, mosaics), reference)


def main(student_dir: str, export_dir: str, out: str, count: str) -> None:
    start = time.time()
    student = serving.load_student(student_dir)
    source = serving.labelled_source(student, student_dir)
    manifest = json.loads(open(f"{export_dir}/manifest.json").read())
    mosaics, _ = serving.pipeline_mosaics(student, source, source.test_split, manifest["parity"]["parity_examples"])
    mosaics = mosaics[: int(count)]
    reference = parity.keras_probabilities(student, mosaics)
    snapped = quantise.snap_weights(student.model)
    weights_only = parity.top1_agreement(parity.keras_probabilities(student, mosaics), reference)
    ranges = manifest["calibration"]["activation_ranges"]["ranges"]
    alone = {}
    for i, name in enumerate(ranges):
        alone[name] = agreement_on_ranges(student, {name: ranges[name]}, mosaics, reference)
        print(f"{i + 1}/{len(ranges)} {name}: {alone[name]:.2f} %", flush=True)
    worst = sorted(ranges, key=lambda n: alone[n])
    all_but = {k: agreement_on_ranges(student, {n: ranges[n] for n in worst[k:]}, mosaics, reference) for k in KEPT}
    result = {
        "command": " ".join(["python", *sys.argv]),
        "student": student_dir,
        "export": export_dir,
        "mosaics": len(mosaics),
        "int8_top1_agreement_of_the_export": manifest["parity"]["int8_top1_agreement"],
        "kernels_snapped": snapped,
        "kernels_on_int8_grid_top1_agreement": weights_only,
        "one_tensor_rounded_top1_agreement": alone,
        "worst_tensors": worst[: max(KEPT)],
        "all_but_the_worst_k_rounded_top1_agreement": {str(k): v for k, v in all_but.items()},
        "wall_seconds": round(time.time() - start),
    }
    fsutil.write_json_atomic(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "one_tensor_rounded_top1_agreement"}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)  # the usage
    main(*sys.argv[1:])
