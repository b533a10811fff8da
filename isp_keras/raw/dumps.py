"""Headerless sensor dumps and single-channel mosaic images (PNG/TIFF): their format, and their sensor counts.

A dump carries no metadata, so its format (`SensorFormat`) comes from the user: `--raw_*` flags and/or a sidecar
JSON beside the file, `<file>.json` (e.g. `shot.raw.json`) or else `<stem>.json` (`shot.json`); flags override the
sidecar field by field. Sidecar fields (all optional; unknown ones are refused):

    {"width": 768, "height": 512, "bits": 14, "packing": "u16", "stride": 1536, "cfa": "RGGB",
     "black": 600, "white": 15520, "wb_gains": [1.949, 1.0, 1.344]}

- `packing`: `u16` (little-endian 16-bit, the default), `u8` (one byte a site), `mipi10` (MIPI CSI-2 RAW10: 4
  pixels in 5 bytes, the 8 MSBs of each then one byte of 2-bit LSBs, pixel 0 in bits 0-1) or `mipi12` (RAW12: 2
  pixels in 3 bytes, the 8 MSBs of each then one byte of 4-bit LSBs, pixel 0 in bits 0-3).
- `stride`: bytes per row (MIPI rows are often padded); default the packed row, e.g. width * 5 / 4 for RAW10.
- `bits`: the data's bit depth (1..16); default 8 for u8, 10 for mipi10, 12 for mipi12, and for images the sample
  size (8/16).
  A u16 dump needs it.
- `cfa`: the pattern of the file's top-left 2x2 tile. `black`: one value, or four per site of that tile
  (row-major). `white`: default 2**bits - 1. `wb_gains`: optional as-shot (R, G, B) multipliers.

A dump needs width, height, cfa and (for u16) bits; a mosaic image takes its size and sample type from the file and
needs only the cfa. Refused with one line naming the file: byte count != stride * height (both counts given), odd
width or height of a dump, a MIPI width that is not a whole number of pixel groups, a stride below the packed row,
bits outside 1..16 or above what the packing holds, white above 2**bits - 1 or not above black, an image that is not
single-channel (RGB, RGBA, palette...), and data using more bits than declared. That last one is refused, not
warned about: it means the declared bit depth, packing or byte order is wrong, and normalising by a wrong white
level would silently scale every pixel.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from isp_keras.errors import UserError
from isp_keras.raw.cfa import CFA_PATTERNS

# packing -> (pixels per group, bytes per group, bits a pixel can hold)
PACKINGS = {"u16": (1, 2, 16), "u8": (1, 1, 8), "mipi10": (4, 5, 10), "mipi12": (2, 3, 12)}
# Suffixes of files that are headerless dumps unless their content says otherwise; without a format they are refused
# rather than handed to LibRaw, whose file-size table would guess a wrong geometry for them.
DUMP_SUFFIXES = (".raw", ".bin", ".raw10", ".raw12", ".raw16", ".mipi")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclasses.dataclass(frozen=True)
class SensorFormat:
    """The format of a dump or mosaic image; None = not given (a default or the other source applies)."""

    width: int | None = None
    height: int | None = None
    bits: int | None = None
    packing: str | None = None
    stride: int | None = None
    cfa: str | None = None
    black: tuple[float, ...] | None = None  # one value, or four per site of the file's 2x2 tile (row-major)
    white: float | None = None
    wb_gains: tuple[float, float, float] | None = None

    @classmethod
    def from_dict(cls, values: dict, where: str) -> SensorFormat:
        """From JSON-like values, checked; `where` (a file or flag name) starts each error."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(known)})")
        out = {}
        for name, value in values.items():
            if value is None:
                continue
            if name in ("width", "height", "bits", "stride"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise UserError(f"{where}: {name} must be a positive integer, got {value!r}")
            elif name in ("packing", "cfa"):
                allowed = PACKINGS if name == "packing" else CFA_PATTERNS
                value = str(value) if name == "packing" else str(value).upper()
                if value not in allowed:
                    raise UserError(f"{where}: {name} {value!r} is not one of {', '.join(allowed)}")
            elif name == "black":
                value = _numbers(value, where, name, (1, 4))
                if min(value) < 0:
                    raise UserError(f"{where}: black {list(value)} must be >= 0")
            elif name == "wb_gains":
                value = _numbers(value, where, name, (3,))
                if min(value) <= 0:
                    raise UserError(f"{where}: wb_gains {list(value)} must be three positive (R, G, B) multipliers")
            elif name == "white":
                (value,) = _numbers(value, where, name, (1,))
                if value <= 0:
                    raise UserError(f"{where}: white must be > 0, got {value:g}")
            out[name] = value
        if out.get("bits") is not None and out["bits"] > 16:
            raise UserError(f"{where}: bits {out['bits']} is not in 1..16")
        return cls(**out)

    @classmethod
    def from_sidecar(cls, path) -> SensorFormat:
        try:
            values = json.loads(Path(path).read_text())
        except OSError as exc:
            raise UserError(f"{path}: cannot read the sidecar ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise UserError(f"{path}: not JSON ({exc})") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: a sidecar is a JSON object of format fields, got {type(values).__name__}")
        return cls.from_dict(values, str(path))

    def merged(self, override: SensorFormat | None) -> SensorFormat:
        """This format with every field `override` gives replaced (flags over a sidecar)."""
        if override is None:
            return self
        given = {f.name: getattr(override, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))

    def black4(self) -> list[float]:
        black = self.black or (0.0,)
        return [float(b) for b in (black * 4 if len(black) == 1 else black)]


def _numbers(value, where: str, name: str, lengths: tuple[int, ...]) -> tuple[float, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    if len(values) not in lengths or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in values
    ):
        counts = " or ".join(str(n) for n in lengths)
        raise UserError(f"{where}: {name} must be {counts} finite number(s), got {value!r}")
    return tuple(float(v) for v in values)


def sidecar_path(path) -> Path | None:
    """`<file>.json`, else `<stem>.json`, if one exists beside the file."""
    path = Path(path)
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate != path and candidate.is_file():
            return candidate
    return None


def file_format(path, given: SensorFormat | None) -> tuple[SensorFormat, Path | None]:
    """The format of `path`: its sidecar's (if any) with the `given` fields over it; and the sidecar used."""
    sidecar = sidecar_path(path)
    base = SensorFormat.from_sidecar(sidecar) if sidecar else SensorFormat()
    return base.merged(given), sidecar


def is_dump(path, given: SensorFormat | None) -> bool:
    """A file without a recognised header is a dump when it has a sidecar, a dump suffix or a given geometry."""
    path = Path(path)
    geometry = given is not None and (given.width is not None or given.height is not None)
    return geometry or path.suffix.lower() in DUMP_SUFFIXES or sidecar_path(path) is not None


def _flag(name: str) -> str:
    return f"--raw_{name}"


def _need(path: Path, fmt: SensorFormat, sidecar: Path | None, fields: list[str], what: str) -> None:
    missing = [f for f in fields if getattr(fmt, f) is None]
    if not missing:
        return
    json_name = sidecar or path.with_name(path.name + ".json")
    if fmt.is_empty():
        flags = ", ".join(_flag(f) for f in fields)
        raise UserError(f"{path}: {what} needs its format: give {flags} (or a sidecar {json_name})")
    raise UserError(
        f"{path}: the format lacks {', '.join(missing)}: give {', '.join(_flag(f) for f in missing)} "
        f"(or add {'it' if len(missing) == 1 else 'them'} to {json_name})"
    )


def _levels(path: Path, fmt: SensorFormat, bits: int, counts: np.ndarray) -> SensorFormat:
    """The format with bits and white filled in, after checking the levels and that the data fits the bits."""
    top = (1 << bits) - 1
    white = top if fmt.white is None else fmt.white
    if white > top:
        raise UserError(f"{path}: white level {white:g} is above the {bits}-bit maximum {top}")
    if white <= max(fmt.black4()):
        raise UserError(f"{path}: white level {white:g} is not above the black level {max(fmt.black4()):g}")
    peak = int(counts.max())
    if peak > top:
        raise UserError(
            f"{path}: values up to {peak} need {peak.bit_length()} bits but the format says {bits}-bit "
            "(wrong bit depth, packing or byte order?)"
        )
    return dataclasses.replace(fmt, bits=bits, white=float(white))


def unpack(data: np.ndarray, width: int, packing: str) -> np.ndarray:
    """uint16 [H, width] pixels from packed rows uint8 [H, packed row bytes]."""
    if packing == "u16":
        return data.copy().view("<u2").astype(np.uint16)
    if packing == "u8":
        return data.astype(np.uint16)
    group_px, group_bytes, bits = PACKINGS[packing]
    groups = data.reshape(data.shape[0], width // group_px, group_bytes).astype(np.uint16)
    low_bits = bits - 8
    lsb = groups[..., group_px]
    pixels = [(groups[..., i] << low_bits) | ((lsb >> (low_bits * i)) & ((1 << low_bits) - 1)) for i in range(group_px)]
    return np.stack(pixels, axis=-1).reshape(data.shape[0], width)


def read_dump(path, given: SensorFormat | None = None) -> tuple[np.ndarray, SensorFormat]:
    """(uint16 counts [H, W], the complete format) of a headerless dump; UserError naming the file otherwise."""
    path = Path(path)
    fmt, sidecar = file_format(path, given)
    packing = fmt.packing or "u16"
    required = ["width", "height", "bits", "cfa"] if packing == "u16" else ["width", "height", "cfa"]
    _need(path, fmt, sidecar, required, "a headerless sensor dump")
    width, height = fmt.width, fmt.height
    group_px, group_bytes, packing_bits = PACKINGS[packing]
    bits = fmt.bits or packing_bits
    if width % 2 or height % 2:
        raise UserError(f"{path}: {width}x{height} has an odd side; a Bayer sensor dump has even width and height")
    if width % group_px:
        raise UserError(f"{path}: width {width} is not a multiple of {group_px} px, the {packing} pixel group")
    if bits > packing_bits:
        raise UserError(f"{path}: {packing} holds {packing_bits}-bit pixels, not {bits}-bit")
    row = width // group_px * group_bytes
    stride = fmt.stride or row
    if stride < row:
        raise UserError(f"{path}: stride {stride} bytes is below the {packing} row of {width} px ({row} bytes)")
    size = path.stat().st_size
    if size != stride * height:
        layout = f"{width}x{height} {packing}" + (f" with stride {stride}" if stride != row else "")
        raise UserError(f"{path}: {layout} needs {stride * height} bytes, the file has {size}")
    data = np.fromfile(path, np.uint8).reshape(height, stride)[:, :row]
    counts = unpack(data, width, packing)
    return counts, _levels(path, dataclasses.replace(fmt, packing=packing, stride=stride), bits, counts)


_MODES = {"RGB": "RGB", "RGBA": "RGBA", "LA": "greyscale with alpha", "P": "a palette image", "1": "1-bit"}


def _image_counts(path: Path, tiff: bool) -> np.ndarray:
    """The samples of a single-channel PNG/TIFF as uint8/uint16 [H, W]."""
    if tiff:
        import tifffile

        try:
            counts = tifffile.imread(path, key=0)
        except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
            raise UserError(f"{path}: unreadable TIFF ({type(exc).__name__}: {str(exc)[:120]})") from None
        if counts.ndim == 3 and counts.shape[-1] == 1:
            counts = counts[..., 0]
        if counts.ndim == 3 and counts.shape[-1] in (3, 4):
            raise UserError(f"{path}: is {'RGB' if counts.shape[-1] == 3 else 'RGBA'}, not a single-channel mosaic")
        if counts.ndim != 2:
            raise UserError(f"{path}: holds an array of shape {counts.shape}, not a single-channel mosaic")
        return counts
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in _MODES or mode not in ("L", "I", "I;16", "I;16B", "I;16L"):
                raise UserError(f"{path}: is {_MODES.get(mode, f'mode {mode}')}, not a single-channel mosaic")
            counts = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({str(exc)[:120]})") from None
    # Older Pillow opens 16-bit greyscale PNGs in mode I (int32); PNG samples are at most 16 bits.
    return counts.astype(np.uint16) if counts.dtype.kind == "i" or counts.dtype.byteorder == ">" else counts


def read_image(path, given: SensorFormat | None = None) -> tuple[np.ndarray, SensorFormat]:
    """(counts [H, W], the complete format) of a single-channel PNG/TIFF mosaic; UserError naming the file."""
    path = Path(path)
    with open(path, "rb") as f:
        tiff = f.read(4) in TIFF_MAGIC
    counts = _image_counts(path, tiff)
    if counts.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{path}: holds {counts.dtype} samples; a mosaic image holds 8- or 16-bit sensor counts")
    fmt, sidecar = file_format(path, given)
    what = "a plain TIFF image (no DNGVersion or Make tag) holding a mosaic" if tiff else "a mosaic image"
    _need(path, fmt, sidecar, ["cfa"], what)
    height, width = counts.shape
    if (fmt.width is not None and fmt.width != width) or (fmt.height is not None and fmt.height != height):
        raise UserError(f"{path}: the image is {width}x{height} but the format says {fmt.width}x{fmt.height}")
    sample_bits = counts.dtype.itemsize * 8
    bits = fmt.bits or sample_bits
    if bits > sample_bits:
        raise UserError(f"{path}: {sample_bits}-bit samples cannot hold {bits}-bit data")
    return counts, _levels(path, dataclasses.replace(fmt, width=width, height=height), bits, counts)
