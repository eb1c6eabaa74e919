"""Errors a user can fix, and how the command-line tools report a failure: one ``error:`` line on stderr and exit
status 2; ``--debug`` keeps the traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

EXIT_ERROR = 2


class UserError(ValueError):
    """A problem with the input (data, flags, files) that the user can fix; the message names it and the fix."""


class DataError(UserError):
    """The data cannot give a meaningful run (nothing usable, too much skipped, labels that do not fit...)."""


# Problems with the input, not bugs: reported by their message alone (other exceptions also name their type).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError)


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something fails")


def one_line(error: BaseException) -> str:
    """The message a user needs: pydantic's multi-line report condensed; the type for unexpected errors."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        parts = []
        for entry in error.errors():
            where = ".".join(str(part) for part in entry["loc"])
            message = entry["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        return "; ".join(parts)
    text = " ".join(str(error).split()) if str(error) else ""
    if isinstance(error, USER_ERRORS):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_guarded(handler: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """Call ``handler(args)``; an exception becomes ``error: <one line>`` and exit status 2 unless ``--debug``."""
    try:
        return handler(args)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as error:
        if getattr(args, "debug", False):
            raise
        print(f"error: {one_line(error)} (--debug shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_ERROR) from None
