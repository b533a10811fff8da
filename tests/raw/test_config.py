"""raw.config: the --raw_* flags become a SensorFormat (None when none is given); a bad value names its flag."""

from __future__ import annotations

import pytest

from isp_keras.errors import UserError
from isp_keras.raw.config import RawFormatOptions
from isp_keras.raw.dumps import SensorFormat


def test_flags_to_format():
    assert RawFormatOptions().validate().sensor_format() is None
    opts = RawFormatOptions(raw_width=768, raw_height=512, raw_bits=14, raw_cfa="RGGB", raw_black=[600.0])
    assert opts.sensor_format() == SensorFormat(width=768, height=512, bits=14, cfa="RGGB", black=(600.0,))
    assert RawFormatOptions(raw_packing="mipi10", raw_stride=1024, raw_white=1000.0).sensor_format() == SensorFormat(
        packing="mipi10", stride=1024, white=1000.0
    )


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("raw_black", [1.0, 2.0, 3.0], "--raw_black: black must be 1 or 4 finite number(s), got [1.0, 2.0, 3.0]"),
        ("raw_bits", 17, "--raw_bits: bits 17 is not in 1..16"),
        ("raw_width", -4, "--raw_width: width must be a positive integer, got -4"),
        ("raw_white", 0.0, "--raw_white: white must be > 0, got 0"),
    ],
)
def test_bad_flag_names_the_flag(field, value, words):
    with pytest.raises(UserError) as info:
        RawFormatOptions(**{field: value}).validate()
    assert str(info.value) == words
