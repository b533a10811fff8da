"""Fixtures shared by the RAW tests."""

from __future__ import annotations

import numpy as np
import pytest


def _read_raw_reference(counts: np.ndarray, black4, white, offset) -> np.ndarray:
    """NumPy reference of read_raw: per-site black, divide by (white - black), crop to phase and even sides."""
    h, w = counts.shape
    black = np.tile(np.asarray(black4, np.float64).reshape(2, 2), (h // 2 + 1, w // 2 + 1))[:h, :w]
    norm = ((counts.astype(np.float64) - black) / (white - black)).astype(np.float32)
    dy, dx = offset
    norm = norm[dy:, dx:]
    return norm[: norm.shape[0] // 2 * 2, : norm.shape[1] // 2 * 2]


@pytest.fixture
def read_raw_reference():
    return _read_raw_reference
