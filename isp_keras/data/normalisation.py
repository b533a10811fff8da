"""Input statistics: per Bayer site for the student, per RGB channel for the teacher; checked, saved, loaded.

The student sees RAW standardised per Bayer site and then mapped into the moments of the teacher's own input on the
training photos (`input_mean`, `input_std`), so that a student cloned from the teacher starts on inputs of the scale
its first layer was trained on. For a teacher fed per-channel standardised RGB those moments are (0, 1) and the
mapping is the identity; for one fed `(rgb - 0.5) / 0.5` (the TFLite classifiers) the std is about 0.56.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from isp_keras.errors import UserError


@dataclasses.dataclass
class Normalisation:
    """Input statistics: per Bayer site for the student, per RGB channel for the teacher; and, for a packed student
    whose RAW adapter starts with a tone curve, per Bayer site after that curve (`curve`: its initial values)."""

    raw_mean: list
    raw_std: list
    rgb_mean: list
    rgb_std: list
    channel_order: str = "RGB"
    curve: list | None = None
    curve_mean: list | None = None
    curve_std: list | None = None
    # The per-channel moments the standardised RAW is mapped to (default: none, unit std).
    input_mean: list = dataclasses.field(default_factory=lambda: [0.0] * 3)
    input_std: list = dataclasses.field(default_factory=lambda: [1.0] * 3)

    def to_json(self):
        return dataclasses.asdict(self)

    def student_stats(self, curve: bool = False) -> tuple[list, list]:
        """(mean, std) per Bayer site such that (raw - mean) / std is what the student sees: the RAW (or, with
        `curve`, its adapter's initial tone curve) standardised per site, then scaled to `input_std` and shifted
        to `input_mean`. The one place where the RAW input scale is decided; training and serving both use it."""
        m = np.asarray(self.curve_mean if curve else self.raw_mean, np.float64)
        s = np.asarray(self.curve_std if curve else self.raw_std, np.float64)
        std = s / np.asarray(self.input_std, np.float64)
        mean = m - np.asarray(self.input_mean, np.float64) * std
        return [float(v) for v in mean], [float(v) for v in std]


def check_normalisation(norm: Normalisation, where: str) -> Normalisation:
    """Finite statistics with positive standard deviations, or one line naming `where` and the bad value."""
    names = ("raw_mean", "raw_std", "rgb_mean", "rgb_std", "input_mean", "input_std")
    names += ("curve_mean", "curve_std") if norm.curve else ()
    for name in names:
        values = np.asarray(getattr(norm, name), np.float64)
        if values.shape != (3,) or not np.all(np.isfinite(values)):
            raise UserError(f"{where}: {name}={getattr(norm, name)} must be 3 finite numbers")
        if name.endswith("std") and not np.all(values > 0):
            raise UserError(f"{where}: {name}={getattr(norm, name)} must be > 0 (constant input images?)")
    return norm


RAW_SCALES = ("auto", "teacher", "unit")
# auto keeps unit std when the teacher's input moments on the data are within this of (0, 1): a teacher that was
# fed per-channel standardised RGB (the embedded ResNet-20) is left as it was trained.
UNIT_TOLERANCE = 0.1


def teacher_input_moments(data_mean, data_std, rgb_mean, rgb_std) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of the teacher's input (rgb - rgb_mean) / rgb_std for RGB data of the given
    per-channel moments (pixels in [0, 1])."""
    rgb_std = np.asarray(rgb_std, np.float64)
    mean = (np.asarray(data_mean, np.float64) - np.asarray(rgb_mean, np.float64)) / rgb_std
    return mean, np.asarray(data_std, np.float64) / rgb_std


def with_input_scale(norm: Normalisation, data_mean, data_std, raw_scale: str = "auto") -> Normalisation:
    """`norm` with the moments its standardised RAW is mapped to: the teacher's input moments on RGB data of the
    given moments (`teacher`), none (`unit`: zero mean, unit std per site), or `auto`: the teacher's unless they
    are already within UNIT_TOLERANCE of (0, 1)."""
    if raw_scale not in RAW_SCALES:
        raise ValueError(f"unknown RAW input scale {raw_scale!r}; expected one of {', '.join(RAW_SCALES)}")
    mean, std = teacher_input_moments(data_mean, data_std, norm.rgb_mean, norm.rgb_std)
    near_unit = np.all(np.abs(mean) <= UNIT_TOLERANCE) and np.all(np.abs(std - 1) <= UNIT_TOLERANCE)
    if raw_scale == "unit" or (raw_scale == "auto" and near_unit):
        mean, std = np.zeros(3), np.ones(3)
    return dataclasses.replace(norm, input_mean=[float(v) for v in mean], input_std=[float(v) for v in std])


def save_normalisation(path, norm: Normalisation) -> None:
    from isp_keras import fsutil

    fsutil.write_json_atomic(path, norm.to_json())


def load_normalisation(path) -> Normalisation:
    try:
        norm = Normalisation(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a normalisation file ({exc})") from None
    return check_normalisation(norm, str(path))
