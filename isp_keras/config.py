"""Command configuration: each command's settings are one dataclass, and its flags are generated from it.

A field declared with `option(default, help, choices=...)` becomes a flag of the same name, type, default, help and
choices; the dataclass is the only place a default exists. `from_flags` builds the dataclass back from parsed
flags (and `validate()` checks it when the class defines one). Plain values only: no TensorFlow here, so a
command can parse its flags before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from absl import flags

from isp_keras.errors import UserError


def option(default=None, help: str = "", choices=None, *, required: bool = False, positional: bool = False):
    """A config field that is also a flag. Lists take a default list (copied per instance); `positional` fields are
    filled from the command line's non-flag arguments instead of a flag."""
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "required": required,
        "positional": positional,
    }
    if required:  # absl refuses a required flag whose value is still None
        default = None
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(hint) -> tuple[type, type | None]:
    """(type, item type) of a field annotation: `int | None` -> (int, None), `list[float]` -> (list, float)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return list, args[0] if args else str
    return hint, None


def fields(cls) -> list[tuple[dataclasses.Field, type, type | None]]:
    hints = typing.get_type_hints(cls)
    return [(f, *_base_type(hints[f.name])) for f in dataclasses.fields(cls) if "help" in f.metadata]


def default_of(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def define_flags(cls, flag_values: flags.FlagValues | None = None) -> None:
    """Define one flag per `option` field of the dataclass `cls` in `flag_values` (default: absl's global FLAGS)."""
    fv = flag_values if flag_values is not None else flags.FLAGS
    for field, kind, _ in fields(cls):
        if field.metadata["positional"]:
            continue
        name, default, help_text = field.name, default_of(field), field.metadata["help"]
        choices = field.metadata["choices"]
        if kind is list:
            flags.DEFINE_list(
                name, [str(v) for v in default] if default is not None else None, help_text, flag_values=fv
            )
        elif choices:
            flags.DEFINE_enum(name, default, list(choices), help_text, flag_values=fv)
        elif kind is bool:
            flags.DEFINE_boolean(name, default, help_text, flag_values=fv)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text, flag_values=fv)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text, flag_values=fv)
        elif kind is str:
            flags.DEFINE_string(name, default, help_text, flag_values=fv)
        else:
            raise TypeError(f"{cls.__name__}.{name}: no flag type for {kind}")
        if field.metadata["required"]:
            flags.mark_flag_as_required(name, flag_values=fv)


def _convert(value: str, item: type, name: str):
    try:
        return item(value)
    except ValueError:
        raise UserError(f"--{name}: {value!r} is not a {item.__name__}") from None


def from_flags(cls, flag_values: flags.FlagValues | None = None, argv: list | None = None, **overrides):
    """The dataclass `cls` from parsed flags (plus the positional arguments `argv[1:]`), validated."""
    fv = flag_values if flag_values is not None else flags.FLAGS
    values = {}
    for field, kind, item in fields(cls):
        if field.metadata["positional"]:
            values[field.name] = list(argv[1:]) if argv else []
            continue
        value = fv[field.name].value
        if kind is list and value is not None:
            value = [_convert(v, item, field.name) for v in value]
        values[field.name] = value
    values.update(overrides)
    cfg = cls(**values)
    return cfg.validate() if hasattr(cfg, "validate") else cfg


def to_json(cfg) -> dict:
    return dataclasses.asdict(cfg)
