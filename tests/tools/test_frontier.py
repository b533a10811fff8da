"""tools/frontier.py: the frontier entries from fake run folders, checked field by field: a MobileNetV1 student
(distilled from MobileNetV2, its self-distilled twin judged by MobileNetV2) and MobileNetV2 itself; the 8x target
needs the median and the first quartile of the speed-up and agreement above the student's clean-RGB self."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "frontier.py"


def _write(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def _table(path: Path, **agreements) -> None:
    rows = [{"name": name, "agreement": a, "top1_subset": a - 1} for name, a in agreements.items()]
    _write(path / "results.json", {"rows": rows})


def _bench(path: Path, speedup: float, q1: float) -> None:
    _write(
        path,
        {
            "params": 470000,
            "int8_top1_agreement": 98.5,
            "int8_latency_ms": 0.9,
            "int8_bytes": 512 * 1024,
            "raw_path_latency_ms": 2.0,
            "isp_path_latency_ms": 2.0 * speedup,
            "raw_path_speedup_over_isp_path": speedup,
            "raw_path_speedup_over_isp_path_q1": q1,
        },
    )


def test_entries_and_target(tmp_path):
    tool = runpy.run_path(str(TOOL))
    v1 = tmp_path / "mobilenet_v1_0.25_128"
    _table(v1 / "from_mobilenetv2", teacher_clean=100, teacher_raw=20, student_clean=55, student_raw=3, distilled=60)
    _table(v1 / "self_judged", student_raw=52)
    _bench(v1 / "bench.json", speedup=9.0, q1=8.5)
    v2 = tmp_path / "mobilenet_v2_1.0_224"
    _table(v2 / "from_mobilenetv2", teacher_clean=100, teacher_raw=20, distilled=76)
    _bench(v2 / "bench.json", speedup=2.6, q1=2.5)
    (tmp_path / "mobilenet_v1_0.5_160" / "from_mobilenetv2").mkdir(parents=True)  # unfinished: left out

    small, own = tool["collect"](tmp_path)
    assert (small["student"], small["input_px"], small["int8_kb"]) == ("MobileNetV1 x0.25", 128, 512)
    assert (small["raw_distilled_from_mobilenetv2"], small["raw_distilled_from_itself"]) == (60, 52)
    assert (small["clean_untrained"], small["raw_untrained"], small["top1_10_classes"]) == (55, 3, 59)
    assert small["beats_its_clean_self"] and small["target"]
    assert (own["raw_distilled_from_itself"], own["clean_untrained"], own["raw_untrained"]) == (76, 100.0, 20)
    assert not own["target"]
    text = tool["markdown"]([small, own])
    assert "| MobileNetV1 x0.25 | 128 | 0.47 M | 60.00 | 52.00 | 55.00 | 3.00 | 59.00 | 98.50 |" in text

    _bench(v1 / "bench.json", speedup=9.0, q1=7.9)  # the median alone is not enough
    assert not tool["collect"](tmp_path)[0]["target"]
