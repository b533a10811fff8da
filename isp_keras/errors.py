"""User-facing errors: one line, naming the file or flag and the problem, and a non-zero exit."""

from __future__ import annotations

import functools
import logging
import re
import sys


class UserError(Exception):
    """A problem with the user's input (flag, file, data) that is reported as one line, without a traceback."""


def run_main(main):
    """Wrap an absl `main` so UserError (and a few expected failures) print one line and exit 2.

    A traceback is shown only with --verbosity=1 (or higher) / debug logging.
    """

    @functools.wraps(main)
    def wrapper(argv):
        try:
            return main(argv)
        except UserError as exc:
            _fail(str(exc), code=getattr(exc, "exit_code", 2))
        except Exception as exc:
            message = data_error_message(exc) or disk_error_message(exc)
            if message is None:
                raise
            _fail(message)
        except KeyboardInterrupt:
            _fail("interrupted; the last complete checkpoint is kept", code=130)

    return wrapper


def parse_flags(argv, flag_values=None):
    """absl `flags_parser` for app.run: a bad flag or flagfile is one line (naming the flagfile that holds an
    unknown flag) and exit 2, instead of absl's FATAL line plus usage hint. `flag_values`: absl's global FLAGS
    unless given."""
    from absl import flags

    try:
        return (flags.FLAGS if flag_values is None else flag_values)(argv)
    except flags.Error as exc:
        message = str(exc).replace("ERROR:: ", "")
        missing = re.search(r"Flag --(\w+) must have a value other than None", message)
        if missing:
            message = f"--{missing.group(1)}: required (see --helpfull)"
        unknown = re.match(r"Unknown command line flag '([^']+)'", message)
        if unknown:
            where = _flagfile_with(argv, unknown.group(1))
            message = f"{where + ': ' if where else ''}unknown flag --{unknown.group(1)}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _flagfile_with(argv, name: str) -> str | None:
    """The --flagfile among argv whose lines define --name (or --noname), if any."""
    for arg in argv[1:]:
        if not arg.startswith("--flagfile="):
            continue
        path = arg.split("=", 1)[1]
        try:
            lines = [line.strip() for line in open(path, encoding="utf-8")]
        except OSError:
            continue
        if any(re.match(rf"--(no)?{re.escape(name)}(=|$)", line) for line in lines):
            return path
    return None


# TensorFlow errors that mean bad input data rather than a bug: they get one line too.
_DATA_ERRORS = (
    "isp_keras:",
    "Invalid JPEG data",
    "Invalid PNG data",
    "Unknown image file format",
    "corrupted record",
    "truncated record",
    "Input is empty",
)


def data_error_message(exc: BaseException) -> str | None:
    """One line for a tf.errors.OpError raised by bad input data inside a tf.data pipeline, else None."""
    if not type(exc).__module__.startswith("tensorflow") or not hasattr(exc, "message"):
        return None
    text = " ".join(str(exc.message).split())
    if not any(key in text for key in _DATA_ERRORS):
        return None
    if "isp_keras:" in text:  # our own tf.debugging.Assert: "assertion failed: [isp_keras: ...] [12] ..."
        text = text[text.index("isp_keras:") + len("isp_keras:") :]
        text = text.split("[[", 1)[0].replace("] [", " ").replace("[", "").replace("]", "")
    else:
        text = "data pipeline: " + text.split("[[", 1)[0]
    return text.strip()


def disk_error_message(exc: BaseException) -> str | None:
    """One line for a full, read-only or forbidden disk (errors a user fixes, not bugs), else None."""
    import errno

    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _fail(message: str, code: int = 2) -> None:
    from absl import logging as absl_logging

    if absl_logging.get_verbosity() >= absl_logging.DEBUG or logging.getLogger().isEnabledFor(logging.DEBUG):
        import traceback

        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
