"""The RAW adapter's kinds and the check of a tone curve's initial values: plain Python, so that configs can
validate flags before TensorFlow loads (the layers are in models.adapter)."""

from __future__ import annotations

import math

ADAPTERS = ("none", "affine", "curve")
SEGMENTS = 8  # the identity curve's knots: 9 values at 0, 1/8, ..., 1


def identity_curve(segments: int = SEGMENTS) -> list[float]:
    return [k / segments for k in range(segments + 1)]


def curve_problem(values) -> str | None:
    """Why `values` (the curve at evenly spaced knots over [0, 1]) cannot start a monotone tone curve, or None."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return f"{len(values)} value(s); need at least 2 (the curve at 0 and at 1)"
    if not all(math.isfinite(v) for v in values):
        return "not all finite"
    for k in range(1, len(values)):
        if values[k] < values[k - 1]:
            return f"not monotone: value {k} ({values[k]:g}) is below value {k - 1} ({values[k - 1]:g})"
    if not values[-1] > values[0]:
        return "flat: the last value must be above the first"
    return None
