"""Input statistics: per Bayer site for the student, per RGB channel for the teacher; checked, saved, loaded."""

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

    def to_json(self):
        return dataclasses.asdict(self)


def check_normalisation(norm: Normalisation, where: str) -> Normalisation:
    """Finite statistics with positive standard deviations, or one line naming `where` and the bad value."""
    names = ("raw_mean", "raw_std", "rgb_mean", "rgb_std") + (("curve_mean", "curve_std") if norm.curve else ())
    for name in names:
        values = np.asarray(getattr(norm, name), np.float64)
        if values.shape != (3,) or not np.all(np.isfinite(values)):
            raise UserError(f"{where}: {name}={getattr(norm, name)} must be 3 finite numbers")
        if name.endswith("std") and not np.all(values > 0):
            raise UserError(f"{where}: {name}={getattr(norm, name)} must be > 0 (constant input images?)")
    return norm


def save_normalisation(path, norm: Normalisation) -> None:
    from isp_keras import fsutil

    fsutil.write_json_atomic(path, norm.to_json())


def load_normalisation(path) -> Normalisation:
    try:
        norm = Normalisation(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a normalisation file ({exc})") from None
    return check_normalisation(norm, str(path))
