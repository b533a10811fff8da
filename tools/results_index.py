"""Write docs/results/README.md, the index of the measured results, from the files in docs/results/: one row per
result (files sharing a name: .md, .json, .png), grouped by setting, with its title, the command recorded in it and
the docs that discuss it. tests/tools/test_results_index.py fails when the committed index is stale. Run from the
repository root:
    python tools/results_index.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
INDEX = RESULTS / "README.md"
KINDS = (".md", ".json", ".png")

# (group title, test on the file stem); the first match wins.
GROUPS = (
    ("Class regimes: the fast arm on 10 to 200 classes", lambda s: s.startswith(("classes_", "raw_scale"))),
    ("Real camera files", lambda s: s.startswith(("real_raw", "predict_"))),
    ("Students cheaper than the teacher (MobileNetV1 students of MobileNetV2)", lambda s: "frontier" in s),
    ("Benchmarks", lambda s: s.startswith(("bench_", "latency_"))),
    (
        "Packed students and RAW adapters",
        lambda s: (
            "_inputs" in s
            or "packed" in s
            or "realistic" in s
            or s.startswith(("adapter_weights", "curve_start", "int8_range", "int8_diagnosis", "export_embedded"))
        ),
    ),
    ("Imagenette, fast arm (MobileNetV1 x0.5, 160 px)", lambda s: "_fast" in s),
    ("Imagenette, MobileNetV2 arm (224 px)", lambda s: "mobilenetv2" in s or s == "tflite_import"),
    ("CIFAR-10, the embedded default (ResNet-20, 32 px)", lambda s: "embedded" in s),
    ("Other", lambda s: True),
)


def group_of(stem: str) -> str:
    return next(title for title, test in GROUPS if test(stem))


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _tool_summary(name: str) -> str:
    """The first sentence of a tools/ script's docstring."""
    path = ROOT / "tools" / f"{name}.py"
    if not path.is_file():
        return ""
    match = re.search(r'"""(.*?)(?:\.\s|:\n|""")', path.read_text(), re.S)
    return _short(match.group(1)) if match else ""


def title_of(stem: str, files: dict) -> str:
    """The result's title: its markdown heading (or first line), what its JSON says of itself, or the first
    sentence of the tool that wrote it."""
    if ".md" in files:
        lines = [line for line in files[".md"].read_text().splitlines() if line.strip()]
        heading = next((line[2:] for line in lines if line.startswith("# ")), "")
        if heading or lines:
            return _short(heading or lines[0]).strip()
    data = _json(files[".json"]) if ".json" in files else {}
    tool = re.match(r"python tools/(\w+)\.py", str(data.get("command", "")))
    summary = _tool_summary(tool.group(1) if tool else stem)
    if summary:
        return summary
    for key in ("what", "note"):
        if isinstance(data.get(key), str):
            return _short(data[key])
    if stem.startswith("bench_deploy") and data.get("student"):
        return f"Deploy benchmark of `{data['student']}`"
    if stem.startswith("export_") and data.get("student"):
        return f"Export manifest of `{data['student']}` (parity of its TFLite files)"
    if ".png" in files:
        return "Plot"
    return stem.replace("_", " ")


def command_of(files: dict) -> str:
    data = _json(files[".json"]) if ".json" in files else {}
    command = data.get("command")
    if isinstance(command, str):
        return command
    if ".md" in files:
        match = re.search(r"^Command: `([^`]+)`", files[".md"].read_text(), re.M)
        if match:
            return match.group(1)
    return ""


def discussed_in(names: list[str], docs: dict) -> list[str]:
    return sorted(rel for rel, text in docs.items() if any(f"results/{name}" in text for name in names))


def render(results: Path = RESULTS) -> str:
    stems: dict = {}
    for path in sorted(results.iterdir()):
        if path.suffix in KINDS and path.name != INDEX.name:
            stems.setdefault(path.stem, {})[path.suffix] = path
    docs_root = results.parent
    docs = {
        str(p.relative_to(docs_root)): p.read_text()
        for p in sorted(docs_root.rglob("*.md"))
        if results not in p.parents and p.parent != results
    }
    groups: dict = {title: [] for title, _ in GROUPS}
    for stem, files in stems.items():
        names = [files[k].name for k in KINDS if k in files]
        links = ", ".join(f"[{n}]({n})" for n in names)
        command = command_of(files)
        where = ", ".join(f"[{d}](../{d})" for d in discussed_in(names, docs))
        row = f"| {links} | {title_of(stem, files)} | {f'`{command}`' if command else ''} | {where} |"
        groups[group_of(stem)].append(row)
    lines = [
        "# Measured results",
        "",
        "Generated by `python tools/results_index.py` from the files in this folder; do not edit it by hand (a test",
        "fails when it is stale). Each result is written by the command recorded in it (a run's `results.json` and",
        "`results.md`, copied here under a descriptive name; a benchmark's or export's JSON; a tool's output), on this",
        "project's 2-core CPU VM without a GPU. The docs that discuss a result are linked beside it.",
    ]
    for title, rows in groups.items():
        if rows:
            lines += ["", f"## {title}", "", "| files | what | command | discussed in |", "|---|---|---|---|", *rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    INDEX.write_text(render())
    print(f"wrote {INDEX}")


if __name__ == "__main__":
    if len(sys.argv) != 1:
        sys.exit(__doc__)  # the usage
    main()
