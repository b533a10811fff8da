"""fsutil: atomic writes that never leave a half-written file, and a full disk reported as one clear line."""

from __future__ import annotations

import errno
import json
import os
import tempfile

import pytest

from isp_keras import fsutil
from isp_keras.errors import UserError


@pytest.fixture()
def full_disk(monkeypatch):
    """Writes through fsutil's temporary files hit /dev/full: the kernel answers ENOSPC, as on a full disk."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", mkstemp)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "results.json"
    fsutil.write_json_atomic(path, {"rows": [1]})
    fsutil.write_json_atomic(path, {"rows": [2]})
    assert json.loads(path.read_text()) == {"rows": [2]}
    assert _leftovers(path.parent) == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_full_disk_keeps_previous_file_and_says_so(tmp_path, full_disk):
    path = tmp_path / "results.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(fsutil.WriteError) as info:
        fsutil.write_json_atomic(path, {"new": True})
    err = info.value
    assert isinstance(err, UserError) and isinstance(err, OSError) and err.errno == errno.ENOSPC
    message = str(err)
    assert "\n" not in message and message.startswith(f"{path}: could not write")
    assert "disk is full" in message and "previous version is kept" in message
    assert json.loads(path.read_text()) == {"old": True}
    assert _leftovers(tmp_path) == [], "the temporary file is removed"


def test_unwritable_destination_is_a_write_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(fsutil.WriteError) as info:
        fsutil.write_text_atomic(blocker / "out.json", "{}")
    assert str(info.value).startswith(f"{blocker / 'out.json'}: could not write")


def test_atomic_dir_publishes_whole_or_nothing(tmp_path):
    target = tmp_path / "export"
    with fsutil.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "b").mkdir()
        (tmp / "b" / "c.txt").write_text("2")
    assert (target / "b" / "c.txt").read_text() == "2"

    with pytest.raises(RuntimeError):
        with fsutil.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed half-way")
    assert (target / "a.txt").read_text() == "1", "a failed rewrite leaves the previous export"
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_atomic_dir_full_disk(tmp_path):
    target = tmp_path / "cache"
    with pytest.raises(fsutil.WriteError) as info:
        with fsutil.atomic_dir(target) as tmp:
            (tmp / "part.txt").write_text("ok")
            with open("/dev/full", "wb") as f:  # a write that fails like on a full disk
                f.write(b"x" * 10)
                f.flush()
    assert info.value.errno == errno.ENOSPC and str(info.value).startswith(f"{target}: could not write")
    assert not target.exists() and _leftovers(tmp_path) == []


def test_fsync_tree_and_dir(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"abc")
    fsutil.fsync_tree(tmp_path)
    fsutil.fsync_dir(tmp_path / "missing")  # best effort: no error
