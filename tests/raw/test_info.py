"""rawinfo: one line per file (DNGs, sensor dumps, PNG mosaics), .npy dumps equal read_raw's mosaic, non-zero exit
when any file fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from absl import flags

from isp_keras import cli, config, rawinfo
from isp_keras.errors import UserError
from isp_keras.raw import info, rawio

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "raw"


def _files(tmp_path):
    rng = np.random.default_rng(0)
    a = tmp_path / "a" / "merged.dng"
    b = tmp_path / "b" / "merged.dng"  # same name in another folder, as in the HDR+ layout
    a.parent.mkdir()
    b.parent.mkdir()
    rawio.write_dng(a, rng.integers(0, 1024, (24, 32)).astype(np.uint16), "GRBG", black_level=64, white_level=1023)
    rawio.write_dng(b, rng.integers(0, 4096, (26, 30)).astype(np.uint16), "RGGB", black_level=[1, 2, 3, 4])
    bad = tmp_path / "bad.dng"
    bad.write_bytes(b"\x00" * 100)
    return a, b, bad


def test_lines_and_dumps(tmp_path, capsys):
    a, b, bad = _files(tmp_path)
    failed = info.run([str(a), str(bad), str(b)], "RGGB", str(tmp_path / "dump"))
    assert failed == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(
        f"{a}: 32x24 visible, CFA GRBG -> RGGB offset 0,1 -> 30x24; black 64,64,64,64; white 1023"
    )
    assert lines[1].startswith(f"{bad}: ") and "not a RAW file" in lines[1]
    assert lines[2].startswith(f"{b}: 30x26 visible, CFA RGGB -> RGGB offset 0,0 -> 30x26; black 1,2,3,4; white 4095")
    dumps = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert dumps == ["b_merged.dng.npy", "merged.dng.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "dump" / "merged.dng.npy"), rawio.read_raw(a).mosaic)
    np.testing.assert_array_equal(np.load(tmp_path / "dump" / "b_merged.dng.npy"), rawio.read_raw(b).mosaic)


def test_exit_status(tmp_path, capsys, run_command):
    """One line per file, the failure count last, exit status 1 when any file failed (the command line itself,
    start-up included, runs in tests/test_layout.py)."""
    a, _, bad = _files(tmp_path)
    assert run_command(rawinfo.RawinfoConfig, rawinfo.run, [str(a), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 2 and "Traceback" not in err
    assert out.startswith(f"{a}: ") and err.strip().endswith("1 of 2 file(s) failed")


def test_no_files_is_a_user_error():
    with pytest.raises(UserError, match="give one or more RAW files"):
        rawinfo.RawinfoConfig().validate()


def test_dump_and_png_mosaic_lines(capsys):
    """Sidecars beside the fixtures give the formats; the --raw_* flags (parsed as on the command line) override
    them for every file."""
    dump = FIXTURES / "nikon_d750_rose_crop_96x64_gbrg_14bit.raw"
    png = FIXTURES / "nokia_n900_dog_grbg_10bit.png"
    assert info.run([str(dump), str(png)], "RGGB") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(
        f"{dump}: 96x64 visible, CFA GBRG -> RGGB offset 1,0 -> 96x62; black 600,600,600,600; white 15520; "
        "wb 1.949,1.000,1.344; range "
    )
    assert lines[1].startswith(
        f"{png}: 256x344 visible, CFA GRBG -> RGGB offset 0,1 -> 254x344; black 0,0,0,0; white 1023; wb none; range "
    )
    fv = flags.FlagValues()
    config.define_flags(rawinfo.RawinfoConfig, fv)
    argv = fv(["rawinfo", "--raw_black=0,0,0,0", "--raw_white=16383", "--raw_cfa=BGGR", str(dump), str(png)])
    cli.make_main(rawinfo.RawinfoConfig, rawinfo.run, fv)(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(
        f"{dump}: 96x64 visible, CFA BGGR -> RGGB offset 1,1 -> 94x62; black 0,0,0,0; white 16383"
    )
    assert lines[1].startswith(f"{png}: 256x344 visible, CFA BGGR -> RGGB offset 1,1 -> 254x342; black 0,0,0,0; white")
