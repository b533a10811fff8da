"""The learning rate of each row, best over one or more `experiments.tune` runs (their results.json `best`), as the
table's --row_lrs value. Run from the repository root:
    python tools/best_lrs.py runs/tune_classes_imagenette/results.json runs/tune_classes_imagenette_kd/results.json
"""

import json
import sys


def best_lrs(paths: list[str]) -> dict:
    best = {}
    for path in paths:
        with open(path) as f:
            for row, choice in json.load(f)["best"].items():
                if row not in best or choice["score"] > best[row]["score"]:
                    best[row] = choice
    return best


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)  # the usage
    print(",".join(f"{row}={choice['lr']:g}" for row, choice in best_lrs(sys.argv[1:]).items()))
