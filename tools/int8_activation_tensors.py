"""Which activation tensors' int8 rounding costs an exported student its agreement: the float Keras student (kernels
on their int8 grid, as the converter stores them) with one of the tensors the int8 file materialises rounded to its
pinned range (the export manifest's) at a time, then with every one rounded but the K that cost most (K = 0, 1, 2,
3, 5, 10), top-1 agreement with the float student on the first COUNT of the export's parity mosaics. Run from the
repository root, e.g. (docs/results/int8_activation_tensors_embedded.json):
    python tools/int8_activation_tensors.py runs/int8_r20 runs/int8_r20/export \\
        docs/results/int8_activation_tensors_embedded.json 10000
"""

import json
import sys

from int8_diagnosis import agreement_on_ranges
from int8_weight_layers import rank

from isp_keras.deploy import parity
from isp_keras.training import quantise

KEPT = (0, 1, 2, 3, 5, 10)


def snapped_tensors(student, manifest, mosaics, reference):
    """The pinned tensors' names, after snapping every kernel (what the int8 file stores) and measuring that alone."""
    snapped = quantise.snap_weights(student.model)
    weights_only = parity.top1_agreement(parity.keras_probabilities(student, mosaics), reference)
    extra = {"kernels_snapped": snapped, "kernels_on_int8_grid_top1_agreement": weights_only}
    return list(manifest["calibration"]["activation_ranges"]["ranges"]), extra


def main(argv) -> None:
    manifest = json.loads(open(f"{argv[2]}/manifest.json").read())
    ranges = manifest["calibration"]["activation_ranges"]["ranges"]

    def agreement(student, names, mosaics, reference) -> float:
        return agreement_on_ranges(student, {name: ranges[name] for name in names}, mosaics, reference)

    rank(argv, *argv[1:], snapped_tensors, agreement, KEPT, "tensor", "rounded")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)  # the usage
    main(sys.argv)
