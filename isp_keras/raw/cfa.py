"""Bayer colour-filter-array layouts (plain Python, so configuration can check them without TensorFlow)."""

from __future__ import annotations

# The colours at (0,0), (0,1), (1,0), (1,1) of each 2x2 tile.
CFA_PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")


def check_cfa(cfa: str) -> str:
    cfa = str(cfa).upper()
    if cfa not in CFA_PATTERNS:
        raise ValueError(f"unknown CFA pattern {cfa!r}; expected one of {', '.join(CFA_PATTERNS)}")
    return cfa
