"""Where the project's own files live, independent of the working directory (an editable install's checkout)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DATA = PROJECT_ROOT / "data" / "embedded"
EMBEDDED_TEACHER = PROJECT_ROOT / "data" / "teacher" / "resnet20_cifar10.keras"
RUNS = Path("runs")  # run directories are the user's: relative to where the command runs


def teacher_path(name: str) -> str:
    """`embedded` names the ResNet-20 CIFAR-10 teacher shipped in data/teacher; anything else is left as given."""
    return str(EMBEDDED_TEACHER) if name == "embedded" else name


def default_run_dir(command: str) -> str:
    """The one default run-directory rule: runs/<command> (train writes runs/train, which export reads)."""
    return str(RUNS / command)
