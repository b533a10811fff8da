"""Inspect camera RAW files: `python -m isp_keras.rawinfo FILE... [--dump DIR] [--cfa RGGB] [--raw_* ...]`.

One line per file: size, CFA pattern (file -> canonical, with the crop offset), black and white levels, as-shot
white balance; or the file's error. `--dump DIR` writes each normalised canonical-phase mosaic as float32 `.npy`.
Headerless sensor dumps and PNG/TIFF mosaics take their format from the `--raw_*` flags and/or a sidecar JSON
(isp_keras/raw/dumps.py). Exit status 1 if any file failed.
"""

from __future__ import annotations

import dataclasses
import sys

from isp_keras import cli
from isp_keras.config import option
from isp_keras.errors import UserError
from isp_keras.raw.cfa import CFA_PATTERNS
from isp_keras.raw.config import RawFormatOptions


@dataclasses.dataclass
class RawinfoConfig(RawFormatOptions):
    dump: str = option("", "Folder for the normalised canonical-phase mosaics (.npy, float32).")
    cfa: str = option("RGGB", "Canonical CFA phase to crop to.", choices=CFA_PATTERNS)
    files: list[str] = option([], "RAW files.", positional=True)

    def validate(self) -> RawinfoConfig:
        super().validate()
        if not self.files:
            raise UserError("rawinfo: give one or more RAW files (python -m isp_keras.rawinfo FILE... [--dump DIR])")
        return self


def run(cfg: RawinfoConfig) -> int:
    from isp_keras.raw import info

    failed = info.run(cfg.files, cfg.cfa, cfg.dump or None, cfg.sensor_format())
    if failed:
        print(f"{failed} of {len(cfg.files)} file(s) failed", file=sys.stderr)
        sys.exit(1)
    return failed


if __name__ == "__main__":
    cli.main(RawinfoConfig, run)
