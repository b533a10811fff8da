"""The `--raw_*` flags of every command that reads RAW files: a config mixin (plain values, no TensorFlow)."""

from __future__ import annotations

import dataclasses

from isp_keras.config import option
from isp_keras.raw.cfa import CFA_PATTERNS
from isp_keras.raw.dumps import PACKINGS, SensorFormat


@dataclasses.dataclass
class RawFormatOptions:
    """Format of headerless sensor dumps and mosaic images (PNG/TIFF); each given flag overrides the file's sidecar
    JSON (`<file>.json` or `<stem>.json`). DNGs and other camera RAW files ignore them."""

    raw_width: int | None = option(None, "Sensor dumps: width in pixels.")
    raw_height: int | None = option(None, "Sensor dumps: height in pixels.")
    raw_bits: int | None = option(None, "Dumps and mosaic images: bit depth of the data (1..16).")
    raw_packing: str | None = option(None, "Sensor dumps: pixel packing (default u16).", choices=tuple(PACKINGS))
    raw_stride: int | None = option(None, "Sensor dumps: bytes per row (default: the packed row).")
    raw_cfa: str | None = option(None, "Dumps and mosaic images: CFA of the file's top-left 2x2 tile.", CFA_PATTERNS)
    raw_black: list[float] = option([], "Dumps and mosaic images: black level, one value or four (per CFA site).")
    raw_white: float | None = option(None, "Dumps and mosaic images: white level (default 2**bits - 1).")

    def validate(self):
        self.sensor_format()
        return self

    def sensor_format(self) -> SensorFormat | None:
        """The format the flags give (None if none is given); UserError naming the flag for a bad value."""
        fmt = SensorFormat()
        for field in dataclasses.fields(RawFormatOptions):
            value = getattr(self, field.name)
            if value is None or value == []:
                continue
            name = field.name.removeprefix("raw_")
            fmt = fmt.merged(SensorFormat.from_dict({name: value}, f"--{field.name}"))
        return None if fmt.is_empty() else fmt
