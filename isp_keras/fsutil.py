"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

A failed write (full disk, read-only folder) removes the temporary file, leaves any previous version in place
and raises WriteError: a UserError naming the file (one line for the user) that is also an OSError.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from isp_keras.errors import UserError


class WriteError(UserError, OSError):
    """Writing an output failed; the previous version of the file, if any, is untouched."""

    def __str__(self):
        return self.strerror


def write_error(path, exc: OSError, what: str = "could not write") -> WriteError:
    reason = exc.strerror or str(exc)
    hint = " (the disk is full)" if exc.errno == errno.ENOSPC else ""
    return WriteError(exc.errno or 0, f"{path}: {what}: {reason}{hint}; any previous version is kept")


def make_dir(path, flag: str) -> Path:
    """Create the output folder `path` (and its parents) or raise a one-line UserError naming `--flag=path`."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--{flag}={path}: cannot create the folder ({exc.strerror or exc})") from None
    return folder


def write_bytes_atomic(path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        _discard(tmp)
        if isinstance(exc, WriteError):
            raise
        raise write_error(path, exc) from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp) -> None:
    if tmp and os.path.exists(tmp):
        os.unlink(tmp)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary sibling folder to fill; on success it replaces `path` (a whole export or cache appears
    at once), on failure it is removed and `path` is untouched. Disk errors become WriteError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        yield tmp
        fsync_tree(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, WriteError):
            raise
        raise write_error(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_tree(folder) -> None:
    """Flush every file under folder to disk, so a rename that publishes it never exposes empty files."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(folder) -> None:
    """Persist a rename inside folder (best effort: some file systems refuse to fsync directories)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
