"""docs/results/README.md is the index tools/results_index.py generates from the results files: stale means failed."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load():
    spec = importlib.util.spec_from_file_location("results_index", TOOLS / "results_index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_index_is_what_the_results_files_give():
    index = load()
    assert index.INDEX.read_text() == index.render(), "stale: run `python tools/results_index.py`"


def test_a_new_result_is_listed_in_its_group_with_its_command_and_docs(tmp_path):
    index = load()
    docs = tmp_path / "docs"
    results = docs / "results"
    results.mkdir(parents=True)
    shutil.copy(index.RESULTS / "table1_embedded.md", results / "table1_embedded.md")
    (results / "classes_summary.json").write_text(json.dumps({"what": "Margins by regime", "command": "python x"}))
    (docs / "imagenet-setting.md").write_text("See [the summary](results/classes_summary.json).\n")
    text = index.render(results)
    assert "## Class regimes: the fast arm on 10 to 200 classes" in text
    assert (
        "| [classes_summary.json](classes_summary.json) | Margins by regime | `python x` | "
        "[imagenet-setting.md](../imagenet-setting.md) |"
    ) in text
    assert "## CIFAR-10, the embedded default" in text and "| Table 1: teacher baselines and RAW students |" in text
    assert "## Benchmarks" not in text  # empty groups are left out
