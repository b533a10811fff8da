"""tools/class_summary.py: margins come from each table's paired seed summary, a control run is its own labelled line,
an interval that excludes zero is starred, and the plot is written."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "class_summary.py"


def table(tmp_path: Path, name: str, distilled_margin: tuple, kd_margin: tuple | None = None) -> str:
    """A three-seed table's results.json holding only what the summary reads."""

    def stats(mean, lo, hi):
        return {"mean": mean, "n": 3, "std": 0.5, "ci95": [lo, hi]}

    paired = {"distilled - teacher_labels": {"agreement": stats(*distilled_margin)}}
    if kd_margin:
        paired["distilled_kd - teacher_labels"] = {"agreement": stats(*kd_margin)}
    data = {
        "rows": [{"name": "distilled", "seed": s} for s in (0, 1, 2)],
        "seeds": {
            "rows": {
                "teacher_raw": {"agreement": stats(3.0, 2.0, 4.0)},
                "teacher_labels": {"agreement": stats(40.0, 39.0, 41.0), "top1": stats(20.0, 19.0, 21.0)},
                "distilled": {"agreement": stats(41.0, 40.0, 42.0)},
            },
            "paired": paired,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_regimes_and_a_control_line(tmp_path):
    tool = runpy.run_path(str(TOOL))
    out = tmp_path / "summary"
    tool["main"](
        str(out),
        [
            "mini_imagenet=" + table(tmp_path, "mini", (-0.17, -1.04, 0.70), (1.5, 0.2, 2.8)),
            "mini_imagenet/kd at 3e-4=" + table(tmp_path, "mini_kd", (0.33, -0.13, 0.80)),
            "imagewoof=" + table(tmp_path, "woof", (0.34, -0.71, 1.39)),
        ],
    )
    summary = json.loads(out.with_suffix(".json").read_text())
    assert sorted(summary) == ["imagewoof", "mini_imagenet", "mini_imagenet/kd at 3e-4"]
    control = summary["mini_imagenet/kd at 3e-4"]
    assert (control["regime"], control["note"], control["classes"]) == ("mini_imagenet", "kd at 3e-4", 100)
    margin = control["margins"]["distilled - teacher_labels"]
    assert margin == {"metric": "agreement", "mean": 0.33, "ci95": [-0.13, 0.8]}
    assert summary["mini_imagenet"]["rows"]["teacher_labels"] == {"top1": 20.0, "agreement": 40.0}

    lines = out.with_suffix(".md").read_text().splitlines()
    body = [line for line in lines if line.startswith("| ") and "regime" not in line]
    # ordered by classes, then a regime before its control line
    assert [line.split(" | ")[0] for line in body] == [
        "| Imagewoof: 10 dog breeds",
        "| mini-ImageNet: 100 classes",
        "| mini-ImageNet: 100 classes (kd at 3e-4)",
    ]
    assert "+1.50 [+0.20, +2.80] *" in body[1]  # excludes zero: starred
    assert "-0.17 [-1.04, +0.70] |" in body[1]  # spans zero: no star
    assert out.with_suffix(".png").stat().st_size > 0


def test_unknown_regime_is_refused(tmp_path):
    tool = runpy.run_path(str(TOOL))
    with pytest.raises(SystemExit, match=re.escape("unknown regime(s) ['cifar']")):
        tool["main"](str(tmp_path / "s"), ["cifar/x=" + table(tmp_path, "c", (0.0, -1.0, 1.0))])
