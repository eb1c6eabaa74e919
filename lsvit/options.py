"""Command-line flags for ModelConfig fields, shared by train, infer and compare.

Every ``ModelConfig`` field becomes ``--<field>`` (``--num_frames 16``, ``--use_3d_patch_embed`` /
``--no-use_3d_patch_embed``); a dashed alias (``--num-frames``) is accepted too. Flags default to None, so only
what the user typed overrides the config built from code and ``APPCONFIG__*`` environment variables.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Optional

from lsvit.config import ENV_PREFIX, ModelConfig

NONE_WORDS = ("none", "null", "auto", "")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written; ``(default: X)`` except where the default is None (override-only flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def command_parser(
    prog: str, description: Optional[str], add_arguments: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """One subcommand's parser: this help format, the command's arguments and ``--debug``."""
    from lsvit.errors import add_debug_argument

    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    add_arguments(parser)
    add_debug_argument(parser)
    return parser


def _optional(parse):
    def parse_or_none(text: str):
        return None if text.strip().lower() in NONE_WORDS else parse(text)

    parse_or_none.__name__ = parse.__name__
    return parse_or_none


def _field_parser(annotation: Any):
    """(argparse type, is_bool) for a field annotation such as int, float, bool, Optional[int]."""
    args = typing.get_args(annotation)
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if is_union and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        parse, is_bool = _field_parser(inner)
        return _optional(parse), is_bool
    if annotation is bool:
        return None, True
    if annotation in (int, float, str):
        return annotation, False
    return str, False


def add_model_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, fields: Optional[Iterable[str]] = None
) -> None:
    """Add ``--<field>`` for each ModelConfig field (all of them, or those named in ``fields``)."""
    names = list(ModelConfig.model_fields) if fields is None else list(fields)
    for name in names:
        info = ModelConfig.model_fields[name]
        parse, is_bool = _field_parser(info.annotation)
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        help_text = f"ModelConfig.{name} (default from code/env: {info.default!r}; env {ENV_PREFIX}{name.upper()})"
        if is_bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            metavar = name.upper()
            parser.add_argument(*flags, dest=name, type=parse, default=None, metavar=metavar, help=help_text)


def model_overrides(args: argparse.Namespace, fields: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """The ModelConfig fields the user set on the command line."""
    names = list(ModelConfig.model_fields) if fields is None else list(fields)
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def env_settings(fields: Iterable[str]) -> dict[str, str]:
    """``APPCONFIG__<FIELD>`` variables that are set, by field name (raw strings)."""
    found = {}
    for name in fields:
        value = os.environ.get(f"{ENV_PREFIX}{name.upper()}")
        if value is not None:
            found[name] = value
    return found


def build_config(overrides: dict[str, Any]) -> ModelConfig:
    """ModelConfig from code defaults < ``APPCONFIG__*`` environment < CLI overrides (pydantic-settings order)."""
    return ModelConfig(**overrides)


def add_dashed(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **kwargs) -> None:
    """``--snake_name`` plus the ``--dashed-name`` alias (the guide's scripts use underscores)."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*flags, dest=name, **kwargs)
