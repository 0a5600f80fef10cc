"""One module per `tfkit` sub-command: `<name>_command_parser(subparsers)` adds it, `func` runs it."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def add_config_arguments(parser: argparse.ArgumentParser, config_class, help: dict[str, str], skip=()) -> None:
    """One flag per field of a config dataclass (but `config.recorded()` ones); type and default come from the field."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        if field.name in skip or not field.metadata.get("flag", True):
            continue
        flag, kind = "--" + field.name.replace("_", "-"), hints[field.name]
        if isinstance(kind, types.UnionType):  # `int | None`
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help.get(field.name))
        else:
            parser.add_argument(flag, type=kind, default=field.default, metavar=field.name.upper(), help=help.get(field.name))


def config_from_args(args: argparse.Namespace, config_class, **overrides):
    """The config dataclass from parsed flags (fields not on the command line keep their defaults)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{**{k: v for k, v in vars(args).items() if k in names}, **overrides})
