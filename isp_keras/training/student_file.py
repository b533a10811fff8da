"""student.json: what serving needs beside a saved student (`student.keras`), in one schema with its writer and its
reader. The training run writes it (experiment.save_student); export, predict and the benchmarks read it
(deploy/serving.load_student). Versioned: a file written before a field existed reads with that field's default
(and before `dataset` was recorded, with the run's config.json beside it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from absl import logging

from isp_keras import fsutil
from isp_keras.data import normalisation
from isp_keras.errors import UserError
from isp_keras.raw.cfa import check_cfa
from isp_keras.training.config import SENSORS, STUDENT_INPUTS

VERSION = 1


@dataclasses.dataclass
class StudentFile:
    cfa: str
    image_size: int
    classes: list
    normalisation: normalisation.Normalisation
    student_input: str = "infill"  # or "packed": the model takes the mosaic's 2x2 tiles [batch, H/2, W/2, 4]
    raw_adapter: str = "none"
    noise_std: float = 0.0
    sensor: str = "gaussian"  # the training mosaics' simulation, for calibrating the int8 export
    wnids: list | None = None  # WordNet ids of the outputs (an ImageNet teacher's), to match a dataset's classes
    teacher: str = ""
    dataset: str = "embedded"
    version: int = VERSION

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "normalisation": self.normalisation.to_json()}


def write(path, description: StudentFile) -> None:
    fsutil.write_json_atomic(path, description.to_json())


def read(path) -> StudentFile:
    """The description in `path`, checked; one UserError line naming the file otherwise."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
        fields = {f.name for f in dataclasses.fields(StudentFile)}
        unknown = sorted(set(meta) - fields)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        description = StudentFile(**{**meta, "normalisation": normalisation.Normalisation(**meta["normalisation"])})
        description.cfa = check_cfa(description.cfa)
        description.image_size, description.classes = int(description.image_size), list(description.classes)
        if description.student_input not in STUDENT_INPUTS:
            raise ValueError(f"student_input {description.student_input!r} is neither {' nor '.join(STUDENT_INPUTS)}")
        if description.sensor not in SENSORS:
            raise ValueError(f"sensor {description.sensor!r} is neither {' nor '.join(SENSORS)}")
        if description.version > VERSION:
            raise ValueError(f"version {description.version} is newer than this isp_keras reads ({VERSION})")
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: not a student description ({type(exc).__name__}: {exc})") from None
    if description.image_size % 2:
        raise UserError(f"{path}: image_size {description.image_size} is odd; a Bayer mosaic needs an even size")
    if "sensor" not in meta:
        logging.warning("%s: records no sensor (written before it did); mosaics simulated as gaussian", path)
    if "dataset" not in meta:
        description.dataset = _dataset_from_config(path.parent / "config.json") or description.dataset
    return description


def _dataset_from_config(config_path: Path) -> str | None:
    try:
        return json.loads(config_path.read_text())["config"]["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
