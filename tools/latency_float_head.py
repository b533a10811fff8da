"""Single-image LiteRT latency of each TFLite file an export holds (float32, full int8, and int8 with a float head,
16x8 or dynamic-range when written), 2 threads,
median and quartiles of repeated calls on one validation-sized random mosaic. Run alone on the CPU:
    python tools/latency_float_head.py runs/export_mobilenetv2_qat2_float_head \
        docs/results/latency_float_head_mobilenetv2.json
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from isp_keras import fsutil
from isp_keras.deploy import runtime

WARMUP, REPEATS = 10, 100


def main(export_dir: str, out: str) -> None:
    manifest = json.loads((Path(export_dir) / "manifest.json").read_text())
    size = manifest["input"]["shape"][1]
    mosaic = np.random.default_rng(0).uniform(0.0, 1.0, (1, size, size, 1)).astype(np.float32)
    result = {"command": " ".join(["python", *sys.argv]), "image_size": size, "repeats": REPEATS, "ms": {}}
    for kind, name in manifest["tflite"].items():
        runner = runtime.TFLiteRunner(Path(export_dir) / name, num_threads=2)
        for _ in range(WARMUP):
            runner.invoke(mosaic)
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            runner.invoke(mosaic)
            times.append(1000.0 * (time.perf_counter() - start))
        q1, median, q3 = np.percentile(times, [25, 50, 75])
        result["ms"][kind] = {"median": round(median, 3), "q1": round(q1, 3), "q3": round(q3, 3)}
    fsutil.write_json_atomic(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)  # the usage
    main(*sys.argv[1:])
