"""User-facing errors: one line, naming the file or flag and the problem, and a non-zero exit."""

from __future__ import annotations

import functools
import logging
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
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; the last complete checkpoint is kept", code=130)

    return wrapper


def _fail(message: str, code: int = 2) -> None:
    from absl import logging as absl_logging

    if absl_logging.get_verbosity() >= absl_logging.DEBUG or logging.getLogger().isEnabledFor(logging.DEBUG):
        import traceback

        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
