"""One line per camera RAW file (size, CFA, levels, white balance) and optional normalised mosaic dumps."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from isp_keras import fsutil
from isp_keras.errors import UserError
from isp_keras.raw import rawio
from isp_keras.raw.dumps import SensorFormat


def describe(img: rawio.RawImage) -> str:
    h, w = img.mosaic.shape
    vh, vw = img.visible_shape
    black = ",".join(f"{b:g}" for b in img.black_level)
    wb = "none" if img.wb_gains is None else ",".join(f"{g:.3f}" for g in img.wb_gains)
    return (
        f"{vw}x{vh} visible, CFA {img.file_cfa} -> {img.cfa} offset {img.offset[0]},{img.offset[1]} -> {w}x{h}; "
        f"black {black}; white {img.white_level:g}; wb {wb}; range {img.mosaic.min():.4f}..{img.mosaic.max():.4f}"
    )


def dump_name(path: Path, used: set) -> str:
    """`<file name>.npy`, prefixed with the parent folder when two inputs share a name (HDR+: merged.dng)."""
    name = f"{path.name}.npy"
    if name in used:
        name = f"{path.parent.name}_{path.name}.npy"
    stem, n = name, 1
    while name in used:
        n += 1
        name = f"{n}_{stem}"
    used.add(name)
    return name


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    fsutil.write_bytes_atomic(path, buf.getvalue())


def run(files: list[str], cfa: str = "RGGB", dump: str | None = None, fmt: SensorFormat | None = None) -> int:
    """Print one line per file; returns the number of files that failed. `fmt`: the format of headerless dumps and
    mosaic images (over their sidecars)."""
    out_dir = fsutil.make_dir(dump, "dump") if dump else None
    failed = 0
    used: set = set()
    for name in files:
        try:
            img = rawio.read_raw(name, cfa, fmt)
        except UserError as exc:
            failed += 1
            print(f"{exc}" if str(exc).startswith(f"{name}:") else f"{name}: {exc}", flush=True)
            continue
        line = f"{name}: {describe(img)}"
        if out_dir is not None:
            target = out_dir / dump_name(Path(name), used)
            save_npy(target, img.mosaic)
            line += f"; dumped {target}"
        print(line, flush=True)
    return failed
