"""Where the label-free pair of the fast arm gains or loses agreement with the teacher: the Table 1 students of
runs/table_fast (teacher_labels and distilled, seeds 0-2) on the validation mosaics, split by whether the teacher's
clean-RGB top-1 is one of Imagenette's 10 classes and by how sure the teacher is. Run from the repository root:
    python tools/agreement_by_teacher_class_fast.py runs/table_fast \
        docs/results/agreement_by_teacher_class_fast.json
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from isp_keras.data import normalisation
from isp_keras.training import experiment
from isp_keras.training.config import TrainConfig

ROWS = ("teacher_labels", "distilled")
BINS = {"p < 0.5": (0.0, 0.5), "0.5 <= p < 0.8": (0.5, 0.8), "p >= 0.8": (0.8, 1.01)}


def predictions(run: Path, seed: int) -> dict:
    recorded = json.loads((run / "config.json").read_text())["config"]
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in recorded.items() if k in names}, seed=seed).validate()
    level = run / f"seed_{seed}"
    s = experiment.build_setup(cfg, norm=normalisation.load_normalisation(level / "normalisation.json"))
    students = {}
    for row in ROWS:
        students[row] = experiment.build_student(s, None, sync_bn=False)
        students[row].load_weights(level / row / "student.weights.h5")
    out = {"teacher": [], "teacher_p": [], **{row: [] for row in ROWS}}
    for (student_x, teacher_x), _ in s.test_ds():
        t = s.teacher(teacher_x, training=False).numpy()
        p = np.exp(t - t.max(-1, keepdims=True))
        out["teacher"].append(t.argmax(-1))
        out["teacher_p"].append((p / p.sum(-1, keepdims=True)).max(-1))
        for row in ROWS:
            out[row].append(students[row](student_x, training=False).numpy().argmax(-1))
    return {k: np.concatenate(v) for k, v in out.items()} | {"subset": np.asarray(s.source.subset)}


def split(pred: dict) -> dict:
    groups = {"all": np.ones_like(pred["teacher"], bool)}
    inside = np.isin(pred["teacher"], pred["subset"])
    groups["teacher's top-1 in the 10 classes"] = inside
    groups["teacher's top-1 outside them"] = ~inside
    for name, (lo, hi) in BINS.items():
        groups[f"teacher {name}"] = (pred["teacher_p"] >= lo) & (pred["teacher_p"] < hi)
    agree = {row: pred[row] == pred["teacher"] for row in ROWS}
    return {
        name: {"images": int(m.sum()), **{row: float(100 * np.mean(agree[row][m])) for row in ROWS}}
        for name, m in groups.items()
    }


def main(run: str, out: str) -> None:
    start = time.time()
    per_seed = {seed: split(predictions(Path(run), seed)) for seed in (0, 1, 2)}
    table = {}
    for name in per_seed[0]:
        diffs = [per_seed[k][name]["distilled"] - per_seed[k][name]["teacher_labels"] for k in per_seed]
        table[name] = {
            "images": per_seed[0][name]["images"],
            **{row: float(np.mean([per_seed[k][name][row] for k in per_seed])) for row in ROWS},
            "distilled - teacher_labels": float(np.mean(diffs)),
            "per seed": diffs,
        }
        print(name, table[name], flush=True)
    result = {"run": run, "per_seed": per_seed, "mean": table, "seconds": round(time.time() - start, 1)}
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)  # the usage
    main(sys.argv[1], sys.argv[2])
