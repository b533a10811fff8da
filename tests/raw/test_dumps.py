"""dumps: real headerless dumps and a real PNG mosaic (tests/fixtures/raw) read exactly as NumPy reads them; MIPI
RAW10/RAW12 packed by an independent NumPy packer read back exactly, with and without row padding; sidecars and
flags; one-line errors for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from isp_keras.errors import UserError
from isp_keras.raw import dumps, rawio
from isp_keras.raw.dumps import SensorFormat

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "raw"
NIKON = FIXTURES / "nikon_d750_rose_crop_96x64_{}_14bit.raw"
OPENISP = FIXTURES / "openisp_chart_crop_128x96_rggb_10bit.raw"
N900 = FIXTURES / "nokia_n900_dog_grbg_10bit.png"
INFINITE = FIXTURES / "infiniteisp_outdoor1_crop_96x64_grbg_8bit.raw"


@pytest.mark.parametrize("canonical, offset", [("RGGB", (0, 0)), ("GRBG", (0, 1)), ("BGGR", (1, 1))])
def test_u16_dump_with_sidecar_matches_numpy(canonical, offset, read_raw_reference):
    img = rawio.read_raw(str(NIKON).format("rggb"), canonical)
    counts = np.fromfile(str(NIKON).format("rggb"), "<u2").reshape(64, 96)
    np.testing.assert_array_equal(img.mosaic, read_raw_reference(counts, [600] * 4, 15520, offset))
    assert (img.file_cfa, img.cfa, img.offset, img.visible_shape) == ("RGGB", canonical, offset, (64, 96))
    assert img.black_level == [600.0] * 4 and img.white_level == 15520.0 and img.color_matrix is None
    np.testing.assert_allclose(img.wb_gains, [1.949, 1.0, 1.344])


def test_u8_dump_with_sidecar_matches_numpy(read_raw_reference):
    img = rawio.read_raw(str(INFINITE), "RGGB")
    counts = np.fromfile(INFINITE, np.uint8).reshape(64, 96).astype(np.uint16)
    np.testing.assert_array_equal(img.mosaic, read_raw_reference(counts, [12] * 4, 255, (0, 1)))
    assert (img.file_cfa, img.offset, img.white_level) == ("GRBG", (0, 1), 255.0)


def test_a_dump_of_the_wrong_size_or_depth_names_the_bytes_it_needs():
    for packing, bits, needed in (("u16", 8, 12288), ("mipi10", None, 7680)):
        fmt = SensorFormat(width=96, height=64, packing=packing, bits=bits, cfa="GRBG")
        with pytest.raises(UserError) as info:
            rawio.read_raw(str(INFINITE), "RGGB", fmt)
        assert str(info.value) == f"{INFINITE}: 96x64 {packing} needs {needed} bytes, the file has 6144"
    with pytest.raises(UserError, match=r"u8 holds 8-bit pixels, not 10-bit"):
        rawio.read_raw(str(INFINITE), "RGGB", SensorFormat(bits=10))


def test_gbrg_file_is_the_rggb_file_with_each_tile_rotated():
    """The source re-phased the shot by rotating every 2x2 tile ([[R, G1], [G2, B]] -> [[G1, B], [R, G2]]), not by
    shifting it a row: read in RGGB phase, its R and G2 sites are the RGGB file's from the same tile row, its G1 and B
    sites those of the next tile row, so it is no crop of the RGGB mosaic."""
    a = rawio.read_raw(str(NIKON).format("rggb"), "RGGB").mosaic
    g = rawio.read_raw(str(NIKON).format("gbrg"), "RGGB")
    assert g.file_cfa == "GBRG" and g.offset == (1, 0) and g.mosaic.shape == (62, 96)
    m = g.mosaic
    np.testing.assert_array_equal(m[0::2, 0::2], a[0:62:2, 0::2])  # R
    np.testing.assert_array_equal(m[0::2, 1::2], a[1:62:2, 0::2])  # G2 of the RGGB file
    np.testing.assert_array_equal(m[1::2, 0::2], a[2:64:2, 1::2])  # G1, next tile row
    np.testing.assert_array_equal(m[1::2, 1::2], a[3:64:2, 1::2])  # B, next tile row
    assert not np.array_equal(m, a[:62]) and not np.array_equal(m, a[1:63])


def test_stem_sidecar_and_flags_over_the_sidecar(tmp_path, read_raw_reference):
    assert dumps.sidecar_path(OPENISP) == FIXTURES / "openisp_chart_crop_128x96_rggb_10bit.json"
    img = rawio.read_raw(OPENISP)
    counts = np.fromfile(OPENISP, "<u2").reshape(96, 128)
    np.testing.assert_array_equal(img.mosaic, read_raw_reference(counts, [0] * 4, 1023, (0, 0)))
    assert img.wb_gains is None
    flagged = rawio.read_raw(OPENISP, "RGGB", SensorFormat(black=(1.0, 2.0, 3.0, 4.0), white=1000.0))
    np.testing.assert_array_equal(flagged.mosaic, read_raw_reference(counts, [1, 2, 3, 4], 1000, (0, 0)))
    assert flagged.black_level == [1.0, 2.0, 3.0, 4.0] and flagged.white_level == 1000.0
    shutil.copy(OPENISP, tmp_path / "shot.raw")  # <file>.json wins over <stem>.json
    (tmp_path / "shot.json").write_text('{"cfa": "BGGR"}')
    (tmp_path / "shot.raw.json").write_text(json.dumps({"width": 128, "height": 96, "bits": 10, "cfa": "GBRG"}))
    assert rawio.read_raw(tmp_path / "shot.raw").file_cfa == "GBRG"


def test_png_mosaic_matches_numpy_and_tiff_reads_the_same(tmp_path, read_raw_reference):
    counts = np.asarray(Image.open(N900))
    assert counts.shape == (344, 256) and counts.dtype == np.uint16
    img = rawio.read_raw(N900, "RGGB")
    assert (img.file_cfa, img.offset, img.visible_shape, img.mosaic.shape) == ("GRBG", (0, 1), (344, 256), (344, 254))
    np.testing.assert_array_equal(img.mosaic, read_raw_reference(counts, [0] * 4, 1023, (0, 1)))
    tifffile.imwrite(tmp_path / "dog.tif", counts)
    (tmp_path / "dog.json").write_text('{"cfa": "GRBG", "white": 1023}')
    np.testing.assert_array_equal(rawio.read_raw(tmp_path / "dog.tif").mosaic, img.mosaic)
    Image.fromarray((counts >> 3).astype(np.uint8)).save(tmp_path / "dog8.png")  # 8-bit: bits from the sample type
    img8 = rawio.read_raw(tmp_path / "dog8.png", "RGGB", SensorFormat(cfa="GRBG"))
    assert img8.white_level == 255.0


def pack_mipi10(m: np.ndarray) -> np.ndarray:
    p = m.reshape(m.shape[0], -1, 4).astype(np.uint16)
    low = (p[..., 0] & 3) | (p[..., 1] & 3) << 2 | (p[..., 2] & 3) << 4 | (p[..., 3] & 3) << 6
    return np.concatenate([p >> 2, low[..., None]], -1).astype(np.uint8).reshape(m.shape[0], -1)


def pack_mipi12(m: np.ndarray) -> np.ndarray:
    p = m.reshape(m.shape[0], -1, 2).astype(np.uint16)
    low = (p[..., 0] & 15) | (p[..., 1] & 15) << 4
    return np.concatenate([p >> 4, low[..., None]], -1).astype(np.uint8).reshape(m.shape[0], -1)


def test_the_packers_follow_the_csi2_layout():
    assert pack_mipi10(np.array([[0x3FF, 0x001, 0x202, 0x0C3]])).tolist() == [[0xFF, 0x00, 0x80, 0x30, 0xE7]]
    assert pack_mipi12(np.array([[0xABC, 0x123]])).tolist() == [[0xAB, 0x12, 0x3C]]


@pytest.mark.parametrize("pad", [0, 24])
@pytest.mark.parametrize("packing", ["mipi10", "mipi12"])
def test_mipi_roundtrip_exact(tmp_path, packing, pad, read_raw_reference):
    if packing == "mipi10":  # real data: the Nikon crop's top 10 bits (the openISP chart's 2 LSBs are all zero)
        m = np.fromfile(str(NIKON).format("rggb"), "<u2").reshape(64, 96) >> 4
        assert len(np.unique(m % 4)) == 4
        packed, bits = pack_mipi10(m), 10
    else:
        m = np.random.default_rng(pad).integers(0, 4096, (30, 42)).astype(np.uint16)
        packed, bits = pack_mipi12(m), 12
    h, w = m.shape
    rows = np.concatenate([packed, np.full((h, pad), 0xA5, np.uint8)], axis=1)  # padding bytes must be ignored
    rows.tofile(tmp_path / "cap.bin")
    fmt = SensorFormat(width=w, height=h, packing=packing, cfa="GBRG", black=(16.0,))
    if pad:
        fmt = SensorFormat(stride=packed.shape[1] + pad).merged(fmt)
    counts, full = dumps.read_dump(tmp_path / "cap.bin", fmt)
    np.testing.assert_array_equal(counts, m)
    assert full.bits == bits and full.white == 2**bits - 1 and full.stride == rows.shape[1]
    img = rawio.read_raw(tmp_path / "cap.bin", "RGGB", fmt)
    np.testing.assert_array_equal(img.mosaic, read_raw_reference(m, [16] * 4, 2**bits - 1, (1, 0)))


def test_sidecar_format_checks(tmp_path):
    fmt = SensorFormat.from_dict({"width": 8, "cfa": "rggb", "black": [1, 2, 3, 4], "wb_gains": [2, 1, 1.5]}, "x")
    assert fmt.cfa == "RGGB" and fmt.black4() == [1.0, 2.0, 3.0, 4.0] and fmt.wb_gains == (2.0, 1.0, 1.5)
    assert SensorFormat(bits=10, white=900.0).merged(SensorFormat(white=1000.0)) == SensorFormat(bits=10, white=1000.0)
    assert SensorFormat().is_empty() and SensorFormat(black=(0.0,)).black4() == [0.0] * 4
    cases = [
        ({"widht": 8, "colour": "x"}, "x: unknown field(s) widht, colour (known: width, height,"),
        ({"bits": 17}, "x: bits 17 is not in 1..16"),
        ({"bits": 0}, "x: bits must be a positive integer, got 0"),
        ({"width": "768"}, "x: width must be a positive integer, got '768'"),
        ({"packing": "raw10"}, "x: packing 'raw10' is not one of u16, u8, mipi10, mipi12"),
        ({"cfa": "RGBG"}, "x: cfa 'RGBG' is not one of RGGB"),
        ({"black": [1, 2, 3]}, "x: black must be 1 or 4 finite number(s), got [1, 2, 3]"),
        ({"wb_gains": [2, 0, 1]}, "x: wb_gains [2.0, 0.0, 1.0] must be three positive"),
        ({"white": -1}, "x: white must be > 0, got -1"),
    ]
    for values, words in cases:
        with pytest.raises(UserError) as info:
            SensorFormat.from_dict(values, "x")
        assert str(info.value).startswith(words), (values, str(info.value))


def _copy(src: Path, folder: Path, name: str, sidecar: dict | str | None) -> Path:
    path = folder / name
    shutil.copy(src, path)
    if sidecar is not None:
        text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
        (folder / f"{name}.json").write_text(text)
    return path


NIKON_FORMAT = {"width": 96, "height": 64, "bits": 14, "cfa": "RGGB", "black": 600, "white": 15520}


def _bad_inputs(tmp_path: Path):
    """(path, format given, the expected one-line message) for each bad input."""
    nikon = str(NIKON).format("rggb")
    cut = tmp_path / "cut.raw"
    cut.write_bytes(Path(nikon).read_bytes()[:-32])
    (tmp_path / "cut.raw.json").write_text(json.dumps(NIKON_FORMAT))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "rgba.png")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint16), photometric="rgb")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((8, 8), np.float32))
    mipi = tmp_path / "mipi.bin"
    mipi.write_bytes(bytes(200))
    mipi_fmt = {"width": 96, "height": 4, "packing": "mipi10", "cfa": "RGGB"}
    t = tmp_path
    dump = lambda name, sidecar: _copy(nikon, t, name, sidecar)
    png = lambda name, sidecar: _copy(N900, t, name, sidecar)
    return [
        (
            dump("shot.raw", None),
            None,
            f"{t}/shot.raw: a headerless sensor dump needs its format: give --raw_width, "
            f"--raw_height, --raw_bits, --raw_cfa (or a sidecar {t}/shot.raw.json)",
        ),
        (
            dump("part.raw", {"width": 96, "bits": 14}),
            None,
            f"{t}/part.raw: the format lacks height, cfa: give "
            f"--raw_height, --raw_cfa (or add them to {t}/part.raw.json)",
        ),
        (cut, None, f"{cut}: 96x64 u16 needs 12288 bytes, the file has 12256"),
        (cut, SensorFormat(stride=200), f"{cut}: 96x64 u16 with stride 200 needs 12800 bytes, the file has 12256"),
        (
            dump("odd.raw", {**NIKON_FORMAT, "width": 95}),
            None,
            f"{t}/odd.raw: 95x64 has an odd side; a Bayer sensor dump has even width and height",
        ),
        (
            mipi,
            SensorFormat(**{**mipi_fmt, "width": 98}),
            f"{mipi}: width 98 is not a multiple of 4 px, the mipi10 pixel group",
        ),
        (
            mipi,
            SensorFormat(**mipi_fmt, stride=100),
            f"{mipi}: stride 100 bytes is below the mipi10 row of 96 px (120 bytes)",
        ),
        (mipi, SensorFormat(**mipi_fmt, bits=12), f"{mipi}: mipi10 holds 10-bit pixels, not 12-bit"),
        (mipi, SensorFormat(**mipi_fmt), f"{mipi}: 96x4 mipi10 needs 480 bytes, the file has 200"),
        (
            dump("twelve.raw", {**NIKON_FORMAT, "bits": 12, "white": 4000}),
            None,
            f"{t}/twelve.raw: values up to "
            "10246 need 14 bits but the format says 12-bit (wrong bit depth, packing or byte order?)",
        ),
        (
            dump("hot.raw", {**NIKON_FORMAT, "white": 20000}),
            None,
            f"{t}/hot.raw: white level 20000 is above the 14-bit maximum 16383",
        ),
        (
            dump("dark.raw", {**NIKON_FORMAT, "black": [600, 600, 600, 16000]}),
            None,
            f"{t}/dark.raw: white level 15520 is not above the black level 16000",
        ),
        (dump("notjson.raw", "{width: 96"), None, f"{t}/notjson.raw.json: not JSON (Expecting property name"),
        (
            dump("list.raw", "[96, 64]"),
            None,
            f"{t}/list.raw.json: a sidecar is a JSON object of format fields, got list",
        ),
        (
            dump("unknown.raw", {**NIKON_FORMAT, "endian": "little"}),
            None,
            f"{t}/unknown.raw.json: unknown field(s) endian (known: width, height, bits, packing, stride, cfa, black, "
            "white, wb_gains)",
        ),
        (
            png("dog.png", None),
            None,
            f"{t}/dog.png: a mosaic image needs its format: give --raw_cfa (or a sidecar {t}/dog.png.json)",
        ),
        (
            png("dog9.png", {"cfa": "GRBG", "bits": 9, "white": 511}),
            None,
            f"{t}/dog9.png: values up to 1053 need 11 bits but the format says 9-bit",
        ),
        (
            png("big.png", {"cfa": "GRBG", "width": 344, "height": 256}),
            None,
            f"{t}/big.png: the image is 256x344 but the format says 344x256",
        ),
        (t / "rgb.png", SensorFormat(cfa="RGGB"), f"{t}/rgb.png: is RGB, not a single-channel mosaic"),
        (t / "rgba.png", SensorFormat(cfa="RGGB"), f"{t}/rgba.png: is RGBA, not a single-channel mosaic"),
        (t / "rgb.tif", SensorFormat(cfa="RGGB"), f"{t}/rgb.tif: is RGB, not a single-channel mosaic"),
        (
            t / "float.tif",
            SensorFormat(cfa="RGGB"),
            f"{t}/float.tif: holds float32 samples; a mosaic image holds 8- or 16-bit sensor counts",
        ),
    ]


def test_bad_inputs_are_one_line_naming_the_file(tmp_path):
    for path, fmt, expected in _bad_inputs(tmp_path):
        with pytest.raises(UserError) as info:
            rawio.read_raw(path, "RGGB", fmt)
        message = str(info.value)
        assert message.startswith(expected), (path.name, message)
        assert "\n" not in message
