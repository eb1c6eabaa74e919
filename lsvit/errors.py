"""Errors a user can fix, and the one-line report the command-line tools give for them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class DataError(ValueError):
    """The data cannot give a meaningful run (nothing usable, too much skipped, labels that do not fit...)."""


# What a command-line run reports as one line instead of a traceback: problems with the input, not bugs.
USER_ERRORS = (DataError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def run_reporting_errors(handler: Callable[..., Any], *args: Any) -> Any:
    """Call ``handler(*args)``; a user error exits with status 2 and one ``error: ...`` line on stderr."""
    try:
        return handler(*args)
    except USER_ERRORS as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
