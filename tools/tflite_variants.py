"""The TFLite files of one or more exports side by side: each file's top-1 agreement and max |prob diff| with its
Keras student (from the export's parity check), its size, and its single-image LiteRT latency (2 threads, one
random mosaic; every file timed in the same interleaved rounds: the median time per call, and the per-round ratio to
the first export's int8 file with its quartiles). Run alone on the CPU, from the repository root:
    python tools/tflite_variants.py OUT NAME=EXPORT_DIR [NAME=EXPORT_DIR ...]
writes OUT.json and OUT.md.
"""

import json
import sys
from pathlib import Path

import numpy as np

from isp_keras import fsutil
from isp_keras.bench import timing
from isp_keras.deploy import runtime

ROUNDS, BLOCK, WARMUP = 40, 5, 5


def measure(exports: dict) -> list[dict]:
    rows, runners, sizes = [], {}, set()
    for name, folder in exports.items():
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
        sizes.add(manifest["input"]["shape"][1])
        parity = manifest["parity"]
        for kind, file in manifest["tflite"].items():
            path = Path(folder) / file
            runners[f"{name}/{kind}"] = runtime.TFLiteRunner(path, num_threads=2)
            rows.append(
                {
                    "export": name,
                    "kind": kind,
                    "file": str(path),
                    "kb": round(path.stat().st_size / 1024, 1),
                    "parity_examples": parity["parity_examples"],
                    "top1_agreement": parity.get(f"{kind}_top1_agreement"),
                    "max_abs_prob_diff": parity.get(f"{kind}_max_abs_prob_diff"),
                }
            )
    if len(sizes) != 1:
        sys.exit(f"the exports take mosaics of different sizes {sorted(sizes)}: time them separately")
    (size,) = sizes
    mosaic = np.random.default_rng(0).uniform(0.0, 1.0, (1, size, size, 1)).astype(np.float32)
    fns = {key: (lambda i, r=runner: r.invoke(mosaic)) for key, runner in runners.items()}
    times = timing.interleaved_ratios(fns, ROUNDS, block=BLOCK, warmup=WARMUP)
    base = f"{next(iter(exports))}/int8"
    for row in rows:
        key = f"{row['export']}/{row['kind']}"
        row["latency_ms"] = round(times.ms(key), 3)
        ratio = times.ratio_figures("over_int8", key, base)
        row.update({k: round(v, 3) for k, v in ratio.items() if k in ("over_int8", "over_int8_q1", "over_int8_q3")})
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# TFLite files side by side: agreement with the Keras student, size, single-image latency",
        "",
        f"`{command}`",
        "",
        "| export | file | top-1 agreement % | max abs prob diff | size KB | latency ms | / first int8 (q1-q3) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        agree = "" if r["top1_agreement"] is None else f"{r['top1_agreement']:.2f}"
        diff = "" if r["max_abs_prob_diff"] is None else f"{r['max_abs_prob_diff']:.3g}"
        lines.append(
            f"| {r['export']} | {r['kind']} | {agree} | {diff} | {r['kb']:.1f} | {r['latency_ms']:.3f} | "
            f"{r['over_int8']:.2f} ({r['over_int8_q1']:.2f}-{r['over_int8_q3']:.2f}) |"
        )
    examples = sorted({r["parity_examples"] for r in rows})
    lines += ["", f"Agreement on {', '.join(map(str, examples))} test mosaics (each export's parity check)."]
    return "\n".join(lines) + "\n"


def main(out: str, *specs: str) -> None:
    if not specs or any("=" not in spec for spec in specs):
        sys.exit(__doc__)
    exports = dict(spec.split("=", 1) for spec in specs)
    command = " ".join(["python", *sys.argv])
    rows = measure(exports)
    fsutil.write_json_atomic(f"{out}.json", {"command": command, "rounds": ROUNDS, "block": BLOCK, "rows": rows})
    Path(f"{out}.md").write_text(markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)  # the usage
    main(*sys.argv[1:])
