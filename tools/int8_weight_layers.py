"""Which layers' int8 weights cost an exported student its agreement: the float Keras student with one layer's kernel
rounded to its per-channel int8 grid (as the converter stores it) at a time, then with every kernel rounded but those
of the K layers that cost most (K = 0, 1, 3, 5, 10), top-1 agreement with the float student on the first COUNT of the
export's parity mosaics. Run from the repository root, e.g.
(docs/results/int8_weight_layers_mobilenetv2_realistic.json):
    python tools/int8_weight_layers.py runs/table_mobilenetv2_inputs_realistic/input_infill/distilled \
        runs/export_realistic_infill docs/results/int8_weight_layers_mobilenetv2_realistic.json 200
"""

import json
import sys
import time

from isp_keras import fsutil
from isp_keras.deploy import parity, serving
from isp_keras.training import quantise

KEPT = (0, 1, 3, 5, 10)


def agreement_snapped(student, only, mosaics, reference) -> float:
    """Agreement with the kernels of the layers in `only` on their int8 grid; the kernels are restored after."""
    layers = [student.model.get_layer(name) for name in only]
    kernels = [layer.kernel.numpy() for layer in layers]
    quantise.snap_weights(student.model, only)
    try:
        return parity.top1_agreement(parity.keras_probabilities(student, mosaics), reference)
    finally:
        for layer, kernel in zip(layers, kernels, strict=True):
            layer.kernel.assign(kernel)


def rank(argv, student_dir, export_dir, out, count, prepare, agreement, kept, unit, verb) -> None:
    """The cost of rounding one unit (layer, tensor) at a time, then all but the costliest K, written to `out`.
    `prepare(student, manifest, mosaics, reference)` returns (unit names, extra result fields);
    `agreement(student, names, mosaics, reference)` the agreement with those units rounded."""
    start = time.time()
    student = serving.load_student(student_dir)
    source = serving.labelled_source(student, student_dir)
    manifest = json.loads(open(f"{export_dir}/manifest.json").read())
    mosaics, _ = serving.pipeline_mosaics(student, source, source.test_split, manifest["parity"]["parity_examples"])
    mosaics = mosaics[: int(count)]
    reference = parity.keras_probabilities(student, mosaics)
    names, extra = prepare(student, manifest, mosaics, reference)
    alone = {}
    for i, name in enumerate(names):
        alone[name] = agreement(student, {name}, mosaics, reference)
        print(f"{i + 1}/{len(names)} {name}: {alone[name]:.2f} %", flush=True)
    worst = sorted(names, key=lambda n: alone[n])
    all_but = {k: agreement(student, set(worst[k:]), mosaics, reference) for k in kept}
    result = {
        "command": " ".join(["python", *argv]),
        "student": student_dir,
        "export": export_dir,
        "mosaics": len(mosaics),
        "int8_top1_agreement_of_the_export": manifest["parity"]["int8_top1_agreement"],
        **extra,
        f"one_{unit}_{verb}_top1_agreement": alone,
        f"worst_{unit}s": worst[: max(kept)],
        f"all_but_the_worst_k_{verb}_top1_agreement": {str(k): v for k, v in all_but.items()},
        "wall_seconds": round(time.time() - start),
    }
    fsutil.write_json_atomic(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != f"one_{unit}_{verb}_top1_agreement"}, indent=1))


def kernel_layers(student, manifest, mosaics, reference):
    return [layer.name for layer in student.model.layers if hasattr(layer, "kernel")], {}


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)  # the usage
    rank(sys.argv, *sys.argv[1:], kernel_layers, agreement_snapped, KEPT, "layer", "snapped")
