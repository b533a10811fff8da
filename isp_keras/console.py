"""What a command shows a person besides its results: progress lines on stderr, and the native libraries' own
console lines (TensorFlow's C++ start-up, the TFLite converter's and LiteRT's INFO prints) hidden unless asked for
with `--verbosity=1`."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

# Lines the native libraries print straight to the process's stderr, bypassing every log level.
NATIVE_NOISE = (
    "oneDNN custom operations",
    "cpu_feature_guard",
    "absl::InitializeLog",
    "rebuild TensorFlow with",
    "fully_quantize:",
    "Created TensorFlow Lite XNNPACK delegate",
    "Estimated count of arithmetic ops",
)


def verbose() -> bool:
    """True when absl's verbosity is at least 1 (DEBUG): the user asked to see everything."""
    from absl import logging

    return logging.get_verbosity() >= logging.DEBUG


def progress(message: str, *args) -> None:
    """One line for the person at the terminal (progress of a long step, a note on what was found or done), on
    stderr so that stdout keeps the results; `args` fill `message`'s %-placeholders."""
    print(message % args if args else message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def native_stderr_filtered(noise: tuple = NATIVE_NOISE, always: bool = False):
    """Capture what native code writes to file descriptor 2 inside the block and pass on every line but the `noise`
    ones; nothing is filtered when verbose() (unless `always`)."""
    if not always and verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not any(n in line for n in noise)))
            sys.stderr.flush()
