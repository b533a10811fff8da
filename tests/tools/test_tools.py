"""Each analysis script in tools/ still imports (the package internals it uses exist) and, started without its
arguments, prints its usage and runs nothing."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
SCRIPTS = sorted(p.name for p in TOOLS.glob("*.py"))


def test_every_script_is_listed():
    assert len(SCRIPTS) >= 10 and "int8_diagnosis.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_starts_and_prints_its_usage(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(TOOLS))  # as when run as a script: its folder first on the path
    argv = [str(TOOLS / script)]
    if script == "save_untrained_students.py":  # a command on the project's flags
        argv.append("--no_such_flag")
    if script == "results_index.py":  # takes no arguments (without, it would write the index)
        argv.append("unexpected")
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(TOOLS / script), run_name="__main__")
    if script == "save_untrained_students.py":
        assert info.value.code == 2 and "no_such_flag" in capsys.readouterr().err
    else:
        assert f"python tools/{script}" in str(info.value.code)
