"""rawio: DNGs written with tifffile read back exactly through rawpy in every CFA phase; bad files: clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import rawpy
import tifffile

from isp_keras.errors import UserError
from isp_keras.raw import bayer, rawio

PHASES = ["RGGB", "GRBG", "GBRG", "BGGR"]


@pytest.mark.parametrize("white", [1023, 4095, 16383])
@pytest.mark.parametrize("file_cfa", PHASES)
def test_dng_roundtrip_exact_all_phases(tmp_path, file_cfa, white, read_raw_reference):
    rng = np.random.default_rng(PHASES.index(file_cfa) * 100000 + white)
    m = rng.integers(0, white + 1, (29, 38)).astype(np.uint16)  # odd height: a final row must go
    black = [60, 61, 62, 63] if white > 1023 else [16, 17, 18, 19]
    path = tmp_path / f"{file_cfa}.dng"
    rawio.write_dng(path, m, file_cfa, black_level=black, white_level=white)
    with rawpy.imread(str(path)) as raw:  # the contract: rawpy reads our DNG's pixels back exactly
        np.testing.assert_array_equal(raw.raw_image_visible, m)
    img = rawio.read_raw(path, "RGGB")
    expected_offset = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}[file_cfa]
    assert img.file_cfa == file_cfa and img.cfa == "RGGB" and img.offset == expected_offset
    assert img.black_level == [float(b) for b in black] and img.white_level == float(white)
    assert img.visible_shape == (29, 38)
    assert img.mosaic.dtype == np.float32 and img.mosaic.shape[0] % 2 == 0 and img.mosaic.shape[1] % 2 == 0
    np.testing.assert_array_equal(img.mosaic, read_raw_reference(m, black, white, expected_offset))


@pytest.mark.parametrize("canonical", PHASES)
def test_any_canonical_phase_keeps_colours(tmp_path, canonical):
    """A mosaic whose value encodes the colour of its site: after canonicalisation the sites match `canonical`."""
    h, w = 24, 30
    value = {0: 1000, 1: 2000, 2: 3000}
    idx = np.tile(bayer.site_index("GBRG"), (h // 2, w // 2))
    m = np.vectorize(value.get)(idx).astype(np.uint16)
    rawio.write_dng(tmp_path / "c.dng", m, "GBRG", black_level=0, white_level=4095)
    img = rawio.read_raw(tmp_path / "c.dng", canonical)
    want = np.vectorize(value.get)(np.tile(bayer.site_index(canonical), (h // 2, w // 2)))[
        : img.mosaic.shape[0], : img.mosaic.shape[1]
    ]
    np.testing.assert_array_equal(img.mosaic, (want / 4095.0).astype(np.float32))


def test_offset_crop_matches_position_code(tmp_path):
    h, w = 26, 34
    m = (np.arange(h)[:, None] * 100 + np.arange(w)[None, :]).astype(np.uint16)  # value = 100*row + col
    rawio.write_dng(tmp_path / "p.dng", m, "BGGR", white_level=65535)
    img = rawio.read_raw(tmp_path / "p.dng", "RGGB")
    rows, cols = rawio.canonical_crop(h, w, img.offset)
    np.testing.assert_array_equal(np.round(img.mosaic * 65535).astype(np.int64), m[rows, cols])
    assert img.mosaic[0, 0] * 65535 == pytest.approx(101)  # starts at row 1, col 1


def test_metadata_wb_and_colour_matrix(tmp_path):
    m = np.random.default_rng(0).integers(64, 1024, (24, 24)).astype(np.uint16)
    rawio.write_dng(tmp_path / "m.dng", m, "RGGB", black_level=64, white_level=1023, wb_gains=[2.1, 1.0, 1.6])
    img = rawio.read_raw(tmp_path / "m.dng")
    np.testing.assert_allclose(img.wb_gains, [2.1, 1.0, 1.6], rtol=1e-5)
    # The default ColorMatrix1 describes a camera with sRGB primaries: LibRaw's camera->sRGB is the identity.
    np.testing.assert_allclose(img.color_matrix, np.eye(3), atol=2e-3)


def test_cfa_offset_table():
    assert rawio.cfa_offset("RGGB", "RGGB") == (0, 0)
    assert rawio.cfa_offset("RGGB", "BGGR") == (1, 1)
    assert rawio.cfa_offset("GRBG", "RGGB") == (0, 1)
    assert rawio.cfa_offset("GBRG", "RGGB") == (1, 0)
    assert rawio.canonical_crop(7, 9, (1, 0)) == (slice(1, 7), slice(0, 8))


def test_write_dng_rejects_what_libraw_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="22"):
        rawio.write_dng(tmp_path / "s.dng", np.zeros((16, 40), np.uint16), "RGGB")
    with pytest.raises(ValueError, match="uint16"):
        rawio.write_dng(tmp_path / "f.dng", np.zeros((24, 24), np.float32), "RGGB")
    with pytest.raises(ValueError, match="black_level"):
        rawio.write_dng(tmp_path / "b.dng", np.zeros((24, 24), np.uint16), "RGGB", black_level=5000)
    assert not list(tmp_path.iterdir())


@pytest.fixture()
def good_dng(tmp_path):
    m = np.random.default_rng(1).integers(0, 4096, (32, 40)).astype(np.uint16)
    path = tmp_path / "good.dng"
    rawio.write_dng(path, m, "RGGB", black_level=64, white_level=4095)
    return path


def _bad_files(tmp_path, good_dng):
    data = good_dng.read_bytes()
    start = tifffile.TiffFile(good_dng).pages.first.dataoffsets[0]
    files = {}

    def put(name, content):
        (tmp_path / name).write_bytes(content)
        files[name] = tmp_path / name

    put("truncated.dng", data[: start + 100])
    put("header_only.dng", data[:start])
    put("corrupt.dng", np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    put("notes.txt", b"not an image\n" * 50)
    put("empty.dng", b"")
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "photo.jpg")
    files["photo.jpg"] = tmp_path / "photo.jpg"
    tifffile.imwrite(
        tmp_path / "linear.dng",
        np.ones((32, 40, 3), np.uint16),
        photometric=34892,
        extratags=[(50706, 1, 4, (1, 4, 0, 0), True), (50717, 4, 1, 4095, True)],
    )
    files["linear.dng"] = tmp_path / "linear.dng"
    tifffile.imwrite(tmp_path / "plain.tif", np.arange(32 * 40, dtype=np.uint16).reshape(32, 40))
    files["plain.tif"] = tmp_path / "plain.tif"
    rawio.write_dng(tmp_path / "flat.dng", np.full((32, 40), 700, np.uint16), "RGGB", 64, 4095)
    files["flat.dng"] = tmp_path / "flat.dng"
    return files


EXPECTED = {
    "truncated.dng": "truncated",
    "header_only.dng": "header only",
    "corrupt.dng": "not a RAW file LibRaw can read",
    "notes.txt": "not a RAW file LibRaw can read",
    "empty.dng": "empty file",
    "photo.jpg": "not a RAW file LibRaw can read",
    "linear.dng": "LinearRaw DNG",
    "plain.tif": "plain TIFF",
    "flat.dng": "no real pixel data",
}


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, good_dng, capfd):
    files = _bad_files(tmp_path, good_dng)
    assert set(files) == set(EXPECTED)
    for name, path in files.items():
        with pytest.raises(UserError) as info:
            rawio.read_raw(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and EXPECTED[name] in message, (name, message)
        assert "\n" not in message
    with pytest.raises(UserError, match="no such file"):
        rawio.read_raw(tmp_path / "missing.dng")
    assert "Unexpected end of file" not in capfd.readouterr().err  # LibRaw's own chatter is silenced


def test_raw_in_a_subifd_behind_a_preview(tmp_path, read_raw_reference):
    """Camera DNGs keep a preview in IFD0 and the raw in a SubIFD: the raw is found, checked and read exactly."""
    m = np.random.default_rng(3).integers(64, 1024, (40, 48)).astype(np.uint16)
    cfa_tags = [
        (33421, 3, 2, (2, 2), True),
        (33422, 1, 4, (1, 2, 0, 1), True),
        (50713, 3, 2, (2, 2), True),
        (50714, 4, 4, (64, 64, 64, 64), True),
        (50717, 4, 1, 1023, True),
    ]
    ifd0_tags = [
        (50706, 1, 4, (1, 4, 0, 0), True),
        (50708, 2, None, "cam", True),
        (50778, 3, 1, 21, True),
        (50721, 10, 9, tuple(x for v in np.eye(3).reshape(-1) for x in (int(v * 10000), 10000)), True),
    ]
    path = tmp_path / "camera.dng"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((20, 24, 3), np.uint8), photometric="rgb", subfiletype=1, subifds=1, extratags=ifd0_tags)
        tw.write(m, photometric=32803, subfiletype=0, extratags=cfa_tags)
    img = rawio.read_raw(path)
    assert img.file_cfa == "GBRG" and img.offset == (1, 0)
    np.testing.assert_array_equal(img.mosaic, read_raw_reference(m, [64] * 4, 1023, (1, 0)))
    (tmp_path / "cut.dng").write_bytes(path.read_bytes()[:-500])
    with pytest.raises(UserError, match="cut.dng: truncated"):
        rawio.read_raw(tmp_path / "cut.dng")


def test_dispatch_dng_camera_header_dump_and_image(tmp_path, good_dng, read_raw_reference):
    """A given dump format does not touch DNGs or files with a camera header; plain TIFFs and PNGs are mosaic images;
    a .raw without a format is refused instead of going to LibRaw, whose file-size table would guess its geometry."""
    from isp_keras.raw.dumps import SensorFormat

    fmt = SensorFormat(width=40, height=32, bits=12, cfa="BGGR")
    assert rawio.read_raw(good_dng, "RGGB", fmt).file_cfa == "RGGB"
    (tmp_path / "shot.raf").write_bytes(b"FUJIFILMCCD-RAW " + bytes(2544))
    with pytest.raises(UserError, match="shot.raf: not a RAW file LibRaw can read"):
        rawio.read_raw(tmp_path / "shot.raf", "RGGB", fmt)
    m = np.random.default_rng(4).integers(0, 4096, (32, 40)).astype(np.uint16)
    m.astype("<u2").tofile(tmp_path / "shot.dat")
    img = rawio.read_raw(tmp_path / "shot.dat", "RGGB", fmt)  # any name, when the geometry is given
    np.testing.assert_array_equal(img.mosaic, read_raw_reference(m, [0] * 4, 4095, (1, 1)))
    tifffile.imwrite(tmp_path / "plain.tif", m)
    np.testing.assert_array_equal(rawio.read_raw(tmp_path / "plain.tif", "RGGB", fmt).mosaic, img.mosaic)
    m.astype("<u2").tofile(tmp_path / "shot.raw")
    with pytest.raises(UserError, match="shot.raw: a headerless sensor dump needs its format"):
        rawio.read_raw(tmp_path / "shot.raw")
