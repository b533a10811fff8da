"""Camera RAW files: read any LibRaw format (rawpy) as a normalised Bayer mosaic in the canonical CFA phase; write
DNGs (tifffile) that LibRaw reads back exactly.

`read_raw` takes the visible sensor area, subtracts the per-site black level, divides by (white - black) and crops
the leading row and/or column needed to bring the file's CFA phase to the requested canonical one (plus a final
row/column to keep both sides even). `RawImage.offset` says what was cropped so the matching RGB image can be cut
the same way. Everything that is not a 2x2 RGB Bayer mosaic with real pixel data raises `UserError("<path>: ...")`.

Which reader a file gets, by its first bytes and then its name: a DNG or camera TIFF (DNGVersion or Make tag) or
another camera header -> LibRaw; a PNG or a plain TIFF -> a single-channel mosaic image; anything else with a
sidecar JSON, a dump suffix (.raw, .bin, ...) or a given width/height -> a headerless sensor dump (`raw/dumps.py`,
which also describes the format, its sidecar and its errors); the rest -> LibRaw.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
from pathlib import Path

import numpy as np

from isp_keras import fsutil
from isp_keras.errors import UserError
from isp_keras.raw import bayer, dumps
from isp_keras.raw.cfa import CFA_PATTERNS

# LibRaw refuses images smaller than this on either side (its identify() treats them as "not raw").
MIN_SIDE = 22
_CFA_CODE = {"R": 0, "G": 1, "B": 2}
_TIFF_MAGIC = dumps.TIFF_MAGIC
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Headers of non-TIFF camera formats LibRaw reads (ORF, RW2, RAF, CRW, MRW, X3F, IIQ; CR3 is ISO BMFF, "ftyp" at 4):
# such files go to LibRaw even when a dump format is given for the other files of a command.
_CAMERA_MAGIC = (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00", b"FUJIFILM", b"II\x1a\x00", b"\x00MRM", b"FOVb", b"IIII")
_PHOTOMETRIC_CFA = 32803
_PHOTOMETRIC_LINEAR_RAW = 34892
# XYZ (D65) -> linear sRGB: the default DNG ColorMatrix1 (XYZ -> camera) of a camera whose primaries are sRGB's,
# for which LibRaw's camera -> sRGB matrix is the identity.
XYZ_TO_SRGB = np.array(
    [[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560], [0.0556434, -0.2040259, 1.0572252]]
)


@dataclasses.dataclass
class RawImage:
    path: str
    mosaic: np.ndarray  # float32 [H, W], black-subtracted, divided by (white - black), in the canonical phase `cfa`
    cfa: str  # the pattern of `mosaic` after canonicalisation (== the requested canonical phase)
    file_cfa: str  # the pattern as stored in the file (of the visible area's top-left 2x2 tile)
    offset: tuple[int, int]  # (rows, cols) cropped from the visible area's top-left to reach the canonical phase
    black_level: list[float]  # per CFA site of the file's tile, row-major: (0,0), (0,1), (1,0), (1,1)
    white_level: float
    wb_gains: list[float] | None  # camera as-shot white balance (R, G, B multipliers, G = 1) if present
    color_matrix: list[list[float]] | None  # camera RGB -> linear sRGB (LibRaw's rgb_cam) if the file defines one
    visible_shape: tuple[int, int] = (0, 0)  # (H, W) of the visible area before the canonical crop


def cfa_offset(file_cfa: str, cfa: str) -> tuple[int, int]:
    """(rows, cols) to drop from the top-left of a `file_cfa` mosaic so that it starts with the `cfa` phase."""
    file_cfa, cfa = bayer.check_cfa(file_cfa), bayer.check_cfa(cfa)
    tile = bayer.site_index(file_cfa)
    for dy in (0, 1):
        for dx in (0, 1):
            if np.array_equal(np.roll(tile, (-dy, -dx), axis=(0, 1)), bayer.site_index(cfa)):
                return dy, dx
    raise ValueError(f"{file_cfa} cannot be shifted to {cfa}")


def canonical_crop(height: int, width: int, offset: tuple[int, int]) -> tuple[slice, slice]:
    """Slices of the visible area kept by `read_raw`: skip `offset`, then drop a final row/col to keep sides even."""
    dy, dx = offset
    h = (height - dy) // 2 * 2
    w = (width - dx) // 2 * 2
    return slice(dy, dy + h), slice(dx, dx + w)


@contextlib.contextmanager
def quiet_libraw():
    """LibRaw prints its own diagnostics (e.g. 'Unexpected end of file') on the C-level stderr; our one-line
    UserError replaces them, so fd 2 is pointed at /dev/null while LibRaw reads."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _tiff_problem(path: Path, size: int) -> str | None:
    """Structural problems of TIFF-based files that LibRaw reports badly or not at all; None if none found."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            first = tif.pages.first
            tags = first.tags
            if "DNGVersion" not in tags:
                return None  # a TIFF-based camera format (CR2, NEF, ARW, ...): LibRaw knows its layout
            pages = list(tif.pages)
            for page in list(pages):
                if page.subifds:
                    pages.extend(tifffile.TiffPages(page))
            raws = [p for p in pages if _tag(p, "NewSubfileType", 0) == 0]
            if not raws:
                return "the DNG holds only preview images, no full-resolution raw image"
            page = raws[0]
            photometric = _tag(page, "PhotometricInterpretation", None)
            if photometric == _PHOTOMETRIC_LINEAR_RAW:
                return (
                    f"a LinearRaw DNG ({page.samplesperpixel} sample(s) per pixel: demosaiced or monochrome), "
                    "not a Bayer mosaic"
                )
            if photometric != _PHOTOMETRIC_CFA:
                return f"the DNG's raw image has photometric {photometric}, not a colour filter array (32803)"
            dim = tuple(_tag(page, "CFARepeatPatternDim", (2, 2)))
            if dim != (2, 2):
                return f"CFA repeat pattern {dim[0]}x{dim[1]} (e.g. X-Trans), not a 2x2 Bayer mosaic"
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                if offset >= size:
                    return f"header only: the pixel data starts at byte {offset} but the file has {size} bytes"
                if offset + count > size:
                    return f"truncated: the pixel data ends at byte {offset + count} but the file has {size} bytes"
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        return f"corrupt TIFF/DNG structure ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def _plain_tiff(path: Path) -> bool:
    """A TIFF without DNGVersion and Make tags: an image (e.g. a mosaic), not a camera RAW file. LibRaw would read a
    16-bit one as a raw with an invented pattern."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages.first.tags
            return "DNGVersion" not in tags and "Make" not in tags
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError):
        return False  # _tiff_problem names the corruption


def _tag(page, name, default):
    tag = page.tags.get(name)
    return default if tag is None else tag.value


def _pattern(colors: np.ndarray, desc: bytes) -> str:
    letters = desc.decode("ascii", "replace")
    return "".join(letters[int(c)] for c in colors[:2, :2].reshape(-1))


def _from_counts(path: Path, counts: np.ndarray, fmt: dumps.SensorFormat, cfa: str) -> RawImage:
    """The RawImage of a dump's or mosaic image's sensor counts, normalised like LibRaw's."""
    height, width = counts.shape
    if counts.min() == counts.max():
        raise UserError(f"{path}: holds no real pixel data (all {counts.size} pixels equal {counts.min():g})")
    offset = cfa_offset(fmt.cfa, cfa)
    rows, cols = canonical_crop(height, width, offset)
    if rows.stop - rows.start < 2 or cols.stop - cols.start < 2:
        raise UserError(f"{path}: {width}x{height} is too small after the CFA-phase crop")
    black4 = fmt.black4()
    black = np.tile(np.reshape(black4, (2, 2)), (height // 2 + 1, width // 2 + 1))[:height, :width]
    visible = counts.astype(np.float64)
    mosaic = ((visible[rows, cols] - black[rows, cols]) / (fmt.white - black[rows, cols])).astype(np.float32)
    gains = None if fmt.wb_gains is None else [g / fmt.wb_gains[1] for g in fmt.wb_gains]
    return RawImage(str(path), mosaic, cfa, fmt.cfa, offset, black4, fmt.white, gains, None, (height, width))


def sensor_counts(path: Path, fmt: dumps.SensorFormat | None) -> tuple[np.ndarray, dumps.SensorFormat] | None:
    """(counts [H, W], format) of a mosaic image or headerless dump; None for a file LibRaw reads (camera header)."""
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(_PNG_MAGIC) or (magic[:4] in _TIFF_MAGIC and _plain_tiff(path)):
        return dumps.read_image(path, fmt)
    camera = magic[:4] in _TIFF_MAGIC or magic.startswith(_CAMERA_MAGIC) or magic[4:8] == b"ftyp"
    if not camera and dumps.is_dump(path, fmt):
        return dumps.read_dump(path, fmt)
    return None


def read_raw(path, cfa: str = "RGGB", fmt: dumps.SensorFormat | None = None) -> RawImage:
    """A camera RAW file, headerless sensor dump or mosaic image as a normalised mosaic in the canonical `cfa`
    phase; UserError for anything else. `fmt`: the format of dumps and mosaic images (over their sidecars)."""
    import rawpy

    cfa = bayer.check_cfa(cfa)
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: empty file")
    counts = sensor_counts(path, fmt)
    if counts is not None:
        return _from_counts(path, *counts, cfa)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:4] in _TIFF_MAGIC:
        problem = _tiff_problem(path, size)
        if problem:
            raise UserError(f"{path}: {problem}")
    try:
        with quiet_libraw(), rawpy.imread(str(path)) as raw:
            if raw.raw_type != rawpy.RawType.Flat:
                raise UserError(f"{path}: a demosaiced/linear raw ({raw.raw_type.name} layout), not a Bayer mosaic")
            pattern = raw.raw_pattern
            if pattern is None or raw.num_colors == 1:
                raise UserError(f"{path}: a monochrome sensor, not a Bayer mosaic")
            if pattern.shape != (2, 2):
                raise UserError(
                    f"{path}: CFA repeat pattern {pattern.shape[0]}x{pattern.shape[1]} (e.g. X-Trans), "
                    "not a 2x2 Bayer mosaic"
                )
            # The counts stay uint16 and the colours are read only as the 2x2 pattern: a 12-megapixel file in
            # float64 copies touched some 600 MB, and first touches of fresh pages cost seconds on this VM.
            visible = np.array(raw.raw_image_visible)
            colors = np.array(raw.raw_colors_visible[:2, :2])
            desc = bytes(raw.color_desc)
            black_per_colour = np.asarray(raw.black_level_per_channel, np.float64)
            white = float(raw.white_level)
            wb = list(raw.camera_whitebalance)
            rgb_cam = np.asarray(raw.color_matrix, np.float64)[:3, :3]
    except UserError:
        raise
    except rawpy.LibRawFileUnsupportedError:
        raise UserError(f"{path}: not a RAW file LibRaw can read (unsupported or corrupt format)") from None
    except rawpy.LibRawIOError:
        raise UserError(f"{path}: truncated or unreadable pixel data (LibRaw I/O error)") from None
    except rawpy.LibRawError as exc:
        raise UserError(f"{path}: LibRaw could not decode it ({type(exc).__name__}: {exc})") from None
    file_cfa = _pattern(colors, desc)
    if file_cfa not in CFA_PATTERNS:
        raise UserError(
            f"{path}: CFA colours {file_cfa!r} ({desc.decode('ascii', 'replace')}), not an RGB Bayer mosaic"
        )
    height, width = visible.shape
    if height < 2 or width < 2:
        raise UserError(f"{path}: visible area {height}x{width} is too small for a 2x2 Bayer tile")
    black = black_per_colour[colors]  # [2, 2]: per site of the visible area's first tile
    if white <= black.max():
        raise UserError(f"{path}: white level {white:g} is not above the black level {black.max():g}")
    if visible.min() == visible.max():
        raise UserError(f"{path}: holds no real pixel data (all {visible.size} pixels equal {visible.min():g})")
    offset = cfa_offset(file_cfa, cfa)
    rows, cols = canonical_crop(height, width, offset)
    if rows.stop - rows.start < 2 or cols.stop - cols.start < 2:
        raise UserError(f"{path}: visible area {height}x{width} is too small after the CFA-phase crop")
    mosaic = visible[rows, cols].astype(np.float32)
    for i in range(2):
        for j in range(2):
            site = black[(rows.start + i) % 2, (cols.start + j) % 2]
            phase = mosaic[i::2, j::2]
            phase -= np.float32(site)
            phase /= np.float32(white - site)
    gains = None
    if wb[1] > 0 and wb[0] > 0 and wb[2] > 0:
        gains = [float(wb[0] / wb[1]), 1.0, float(wb[2] / wb[1])]
    matrix = rgb_cam.tolist() if np.any(rgb_cam) else None
    return RawImage(
        str(path),
        mosaic,
        cfa,
        file_cfa,
        offset,
        [float(b) for b in black[:2, :2].reshape(-1)],
        white,
        gains,
        matrix,
        (height, width),
    )


def _rationals(values, denominator: int, signed: bool = False) -> tuple:
    out = []
    for v in np.asarray(values, np.float64).reshape(-1):
        out += [int(round(v * denominator)), denominator]
    if not signed and any(n < 0 for n in out[::2]):
        raise ValueError(f"negative value in an unsigned rational tag: {values}")
    return tuple(out)


def write_dng(
    path, mosaic: np.ndarray, cfa: str, black_level=0, white_level=4095, wb_gains=None, color_matrix=None
) -> None:
    """Write a uint16 [H, W] Bayer mosaic as a minimal DNG 1.4 (uncompressed CFA), atomically.

    `black_level`: one value or four (per site of the `cfa` tile, row-major). `wb_gains`: as-shot (R, G, B)
    multipliers, stored as AsShotNeutral = 1/gain. `color_matrix`: DNG ColorMatrix1, XYZ(D65) -> camera, 3x3;
    by default the camera's primaries are sRGB's. LibRaw needs both sides >= 22 px.
    """
    import tifffile

    cfa = bayer.check_cfa(cfa)
    mosaic = np.asarray(mosaic)
    if mosaic.dtype != np.uint16 or mosaic.ndim != 2:
        raise ValueError(f"write_dng needs a uint16 [H, W] mosaic, got {mosaic.dtype} {mosaic.shape}")
    if min(mosaic.shape) < MIN_SIDE:
        raise ValueError(f"mosaic {mosaic.shape[0]}x{mosaic.shape[1]}: LibRaw cannot read sides below {MIN_SIDE} px")
    black = (
        np.broadcast_to(np.asarray(black_level, np.float64), (4,))
        if np.ndim(black_level) == 0
        else np.asarray(black_level, np.float64).reshape(-1)
    )
    if black.shape != (4,):
        raise ValueError(f"black_level must be one value or four (one per CFA site), got {black_level}")
    if not 0 < white_level <= 65535 or np.any(black >= white_level) or np.any(black < 0):
        raise ValueError(f"need 0 <= black_level < white_level <= 65535, got {black.tolist()} and {white_level}")
    if color_matrix is None:
        color_matrix = XYZ_TO_SRGB
    color_matrix = np.asarray(color_matrix, np.float64)
    if color_matrix.shape != (3, 3):
        raise ValueError(f"color_matrix must be 3x3, got {color_matrix.shape}")
    integer_black = np.all(black == np.round(black))
    tags = [
        (33421, 3, 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, 1, 4, tuple(_CFA_CODE[c] for c in cfa), True),  # CFAPattern
        (50706, 1, 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, 1, 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, 2, None, "isp_keras synthetic camera", True),  # UniqueCameraModel
        (50710, 1, 3, (0, 1, 2), True),  # CFAPlaneColor
        (50711, 3, 1, 1, True),  # CFALayout: rectangular
        (50713, 3, 2, (2, 2), True),  # BlackLevelRepeatDim
        (50714, 4, 4, tuple(int(b) for b in black), True)
        if integer_black
        else (50714, 5, 4, _rationals(black, 1000), True),  # BlackLevel
        (50717, 4, 1, int(white_level), True),  # WhiteLevel
        (50721, 10, 9, _rationals(color_matrix, 10000, signed=True), True),  # ColorMatrix1
        (50778, 3, 1, 21, True),  # CalibrationIlluminant1: D65
    ]
    if wb_gains is not None:
        gains = np.asarray(wb_gains, np.float64).reshape(-1)
        if gains.shape != (3,) or np.any(gains <= 0):
            raise ValueError(f"wb_gains must be three positive (R, G, B) multipliers, got {wb_gains}")
        tags.append((50728, 5, 3, _rationals(gains[1] / gains, 1000000), True))  # AsShotNeutral
    buf = io.BytesIO()
    tifffile.imwrite(
        buf, mosaic, photometric=_PHOTOMETRIC_CFA, subfiletype=0, extratags=tags, software="isp_keras", metadata=None
    )
    fsutil.write_bytes_atomic(path, buf.getvalue())
