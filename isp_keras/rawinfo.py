"""Inspect camera RAW files: `python -m isp_keras.rawinfo FILE... [--dump DIR] [--cfa RGGB]`.

One line per file: size, CFA pattern (file -> canonical, with the crop offset), black and white levels, as-shot
white balance; or the file's error. `--dump DIR` writes each normalised canonical-phase mosaic as float32 `.npy`.
Exit status 1 if any file failed.
"""

from __future__ import annotations

import dataclasses
import sys

from isp_keras import cli
from isp_keras.config import option
from isp_keras.errors import UserError
from isp_keras.raw.cfa import CFA_PATTERNS


@dataclasses.dataclass
class RawinfoConfig:
    dump: str = option("", "Folder for the normalised canonical-phase mosaics (.npy, float32).")
    cfa: str = option("RGGB", "Canonical CFA phase to crop to.", choices=CFA_PATTERNS)
    files: list[str] = option([], "RAW files.", positional=True)

    def validate(self) -> RawinfoConfig:
        if not self.files:
            raise UserError("rawinfo: give one or more RAW files (python -m isp_keras.rawinfo FILE... [--dump DIR])")
        return self


def run(cfg: RawinfoConfig) -> int:
    from isp_keras.raw import info

    failed = info.run(cfg.files, cfg.cfa, cfg.dump or None)
    if failed:
        print(f"{failed} of {len(cfg.files)} file(s) failed", file=sys.stderr)
        sys.exit(1)
    return failed


if __name__ == "__main__":
    cli.main(RawinfoConfig, run)
