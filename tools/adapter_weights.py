"""The learned RAW adapter of a packed student (gain and offset per site, tone-curve value at 0 and segment slopes,
site mix), as JSON, to see how far training moved it from the identity. Run from the repository root:
    python tools/adapter_weights.py runs/table_mobilenetv2_inputs_realistic/input_packed_curve/distilled \
        docs/results/adapter_weights_mobilenetv2_realistic.json
"""

import json
import sys

import numpy as np

from isp_keras import fsutil
from isp_keras.deploy import serving


def main(student_dir: str, out: str) -> None:
    student = serving.load_student(student_dir)
    weights = {
        layer.name: [np.round(np.squeeze(w), 4).tolist() for w in layer.get_weights()]
        for layer in student.model.layers
        if "_raw_adapter_" in layer.name
    }
    if not weights:
        raise SystemExit(f"{student_dir}: the student has no RAW adapter")
    result = {"command": " ".join(["python", *sys.argv]), "student": student_dir, "layers": weights}
    fsutil.write_json_atomic(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)  # the usage
    main(*sys.argv[1:])
