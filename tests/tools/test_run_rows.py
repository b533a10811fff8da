"""tools/run_rows.py: a run directory's resume files survive a save and a restore into an empty folder, and a
restore never overwrites what a run directory already holds."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "run_rows.py"


def test_save_and_restore_round_trip(tmp_path):
    tool = runpy.run_path(str(TOOL))
    run = tmp_path / "runs" / "table_x"
    files = {
        "config.json": {"command": "table", "config": {"seeds": [0, 1]}},
        "seed_0/normalisation.json": {"raw_mean": [0.1, 0.2, 0.3]},
        "seed_0/distilled/row.json": {"row": {"name": "distilled", "agreement": 50.0}, "seconds": 12.0},
        "seed_0/teacher_clean/row.json": {"row": {"name": "teacher_clean", "agreement": 100.0}, "seconds": 1.0},
    }
    for name, content in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(json.dumps(content))
    (run / "seed_0" / "distilled" / "checkpoint.json").write_text("{}")  # not a resume file: left out
    archive = tmp_path / "rows.json"
    assert tool["save"](run, archive) == 2

    fresh = tmp_path / "fresh"
    assert tool["restore"](fresh, archive) == 2
    restored = {str(p.relative_to(fresh)): json.loads(p.read_text()) for p in fresh.rglob("*.json")}
    assert restored == files

    (fresh / "seed_0" / "distilled" / "row.json").write_text('{"row": {"name": "distilled"}, "seconds": 3.0}')
    (fresh / "seed_0" / "teacher_clean" / "row.json").unlink()
    assert tool["restore"](fresh, archive) == 1
    assert json.loads((fresh / "seed_0" / "distilled" / "row.json").read_text())["seconds"] == 3.0
    assert tool["default_archive"](run) == Path("docs/results/rows/table_x.json")
