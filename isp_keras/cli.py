"""The one shape of every command: flags generated from its config dataclass -> the config -> one library call.

    if __name__ == "__main__":
        cli.main(ExportConfig, run)

`main` silences TensorFlow's C++ start-up logs unless the user asked for them (`--verbosity=1` or higher, or
TF_CPP_MIN_LOG_LEVEL set), defines the flags, parses them (one line and exit 2 on a bad flag or flagfile),
starts the tf.distribute strategy first when the config has one (multi-worker and TPU set-up must precede any
other TensorFlow work), then calls `run(cfg)`. User errors are one line with exit status 2 (errors.run_main).
Command modules import the TensorFlow-heavy library inside `run`, so the log level is set before it loads.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging

from isp_keras import config, console
from isp_keras.errors import UserError, parse_flags, run_main


def wants_verbose(argv) -> bool:
    """True when the command line asks for absl verbosity >= 1 (`--verbosity=1`, `-v 1`, `--v=2`, ...)."""
    for i, arg in enumerate(argv[1:], start=1):
        m = re.fullmatch(r"--?(?:verbosity|v)(?:=(-?\d+))?", arg)
        if m:
            value = m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else "0")
            try:
                return int(value) >= 1
            except ValueError:
                return False
    return False


def quiet_tensorflow(argv) -> None:
    """Hide TensorFlow's C++ INFO/WARNING start-up lines (oneDNN, CPU features) unless asked for.

    TF_CPP_MIN_LOG_LEVEL hides most of them, but TensorFlow 2.21 logs some before absl's logging is initialised,
    where no level applies (on some machines, not all): so TensorFlow is loaded here with the process's stderr
    captured, and every captured line but those is passed on."""
    if wants_verbose(argv):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with console.native_stderr_filtered(always=True):
        import tensorflow  # noqa: F401


def make_main(config_cls, run, flag_values: flags.FlagValues | None = None):
    """The absl main: config from the parsed flags, the strategy first if the config has one, then `run(cfg)`."""

    def main(argv):
        if absl_logging.get_verbosity() < absl_logging.DEBUG:
            # Python-side INFO lines (TensorFlow's SavedModel writer, the converter, our own notes) only with
            # --verbosity=1; warnings and errors always.
            absl_logging.set_verbosity(absl_logging.WARNING)
        positional = any(f.metadata["positional"] for f, _, _ in config.fields(config_cls))
        if len(argv) > 1 and not positional:
            raise UserError(f"unexpected argument {argv[1]!r} (flags are written --name=value)")
        cfg = config.from_flags(config_cls, flag_values, argv)
        strategy = getattr(cfg, "strategy", None)
        if strategy and not getattr(cfg, "dry_run", False):
            from isp_keras.training import distribute

            distribute.init(strategy, cfg.tpu, cfg.cpu_replicas)
        run(cfg)

    return main


def main(config_cls, run) -> None:
    quiet_tensorflow(sys.argv)
    config.define_flags(config_cls)
    app.run(run_main(make_main(config_cls, run)), flags_parser=parse_flags)


def command_line() -> str:
    """The command as the user typed it, `python -m isp_keras.<name> --flags...`, for results files."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    name = spec.name if spec is not None else "isp_keras"
    return " ".join([f"python -m {name}"] + sys.argv[1:])
