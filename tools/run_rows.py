"""Carries a long experiment's finished rows across machines in git, for tables that take longer than one sitting:
`save` writes one JSON file holding the run directory's config.json, every level's normalisation.json and every
finished row's row.json; `restore` writes them back where they are missing, so that rerunning the same command
skips those rows (the runner's resume reads exactly these files; a table's rows do not need the students' weights).
Run from the repository root (ARCHIVE defaults to docs/results/rows/<run directory's name>.json):
    python tools/run_rows.py save runs/table_classes_mini_imagenet [ARCHIVE]
    python tools/run_rows.py restore runs/table_classes_mini_imagenet [ARCHIVE]
"""

import json
import sys
from pathlib import Path

KEPT = ("config.json", "normalisation.json", "row.json")


def default_archive(run_dir: Path) -> Path:
    return Path("docs/results/rows") / f"{run_dir.name}.json"


def save(run_dir: Path, archive: Path) -> int:
    files = {
        str(path.relative_to(run_dir)): json.loads(path.read_text())
        for path in sorted(run_dir.rglob("*.json"))
        if path.name in KEPT
    }
    if "config.json" not in files:
        sys.exit(f"{run_dir}: no config.json (not a run directory)")
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_text(json.dumps({"run_dir": str(run_dir), "files": files}, indent=1, sort_keys=True) + "\n")
    return sum(name.endswith("row.json") for name in files)


def restore(run_dir: Path, archive: Path) -> int:
    """Writes the archive's files that `run_dir` lacks; returns how many rows it wrote."""
    if not archive.is_file():
        sys.exit(f"{archive}: no such archive")
    written = 0
    for name, content in json.loads(archive.read_text())["files"].items():
        path = run_dir / name
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n")
        written += name.endswith("row.json")
    return written


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("save", "restore"):
        sys.exit(__doc__)  # the usage
    run = Path(sys.argv[2])
    where = Path(sys.argv[3]) if len(sys.argv) == 4 else default_archive(run)
    if sys.argv[1] == "save":
        print(f"{where}: {save(run, where)} finished rows of {run}")
    else:
        print(f"{run}: {restore(run, where)} rows restored from {where}")
