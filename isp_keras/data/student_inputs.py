"""What a student's first layer sees, one entry per kind (`--student_input`): used by the training pipeline, the
configs, the students' construction and the serving graph alike. No TensorFlow is imported until an input is made,
so the configs can list the kinds.

infill  the bilinearly infilled mosaic, normalised per Bayer site (in the teacher's input scale), [.., H, W, 3] in the
        teacher's channel order
packed  the mosaic's 2x2 tiles [.., H/2, W/2, 4]; a packed student's first layer holds the infill and the
        normalisation (models/packed.py)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


def _infill(raw, cfa: str, norm):
    from isp_keras.raw import bayer

    x = bayer.raw_to_input(raw, cfa, *norm.student_stats())
    return x[..., ::-1] if norm.channel_order == "BGR" else x


def _packed(raw, cfa: str, norm):
    from isp_keras.raw import bayer

    return bayer.pack(raw)


@dataclasses.dataclass(frozen=True)
class StudentInput:
    name: str
    channels: int
    tile: int  # the input's side is the image size divided by this
    description: str  # what the model takes, for errors
    make: Callable  # (mosaic [.., H, W, 1], cfa, normalisation) -> the model's input

    def shape(self, image_size: int) -> tuple[int, int, int]:
        side = image_size // self.tile
        return side, side, self.channels


STUDENT_INPUTS = {
    kind.name: kind
    for kind in (
        StudentInput("infill", 3, 1, "the 3-channel bilinearly infilled mosaic [batch, H, W, 3]", _infill),
        StudentInput("packed", 4, 2, "the mosaic's 2x2 tiles [batch, H/2, W/2, 4]", _packed),
    )
}
NAMES = tuple(STUDENT_INPUTS)


def get(name: str) -> StudentInput:
    if name not in STUDENT_INPUTS:
        raise ValueError(f"unknown student input {name!r}; expected {' or '.join(NAMES)}")
    return STUDENT_INPUTS[name]
