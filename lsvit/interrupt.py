"""SIGINT / SIGTERM during training: finish the current step, save ``last.pt``, exit non-zero with the resume command.

A second signal while the first is being handled gets the default behaviour (Ctrl-C twice stops at once).
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Raised by the training loop after the checkpoint of an interrupted run is written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    def report(self, trainer, command_line: Optional[list[str]]) -> str:
        last = trainer.output_dir / "last.pt"
        return (
            f"interrupted by {self}: saved {last} at epoch {trainer.state.epoch + 1}, step {trainer.state.step}. "
            f"Resume with:\n  {resume_command(command_line, last)}"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopRequest:
    """Records the first SIGINT / SIGTERM instead of stopping; the loop polls ``signum`` between steps."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"{name} received: finishing the current step, then saving last.pt", file=sys.stderr, flush=True)
        for handled in HANDLED:  # a second signal stops at once
            signal.signal(handled, signal.SIG_DFL if handled != signal.SIGINT else signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def ignore_in_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group; workers leave it to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def resume_command(command_line: Optional[list[str]], checkpoint: Path) -> str:
    """The command that was run, with ``--resume <checkpoint>`` in place of any earlier ``--resume``."""
    words = list(command_line or ["lsvit", "train", *sys.argv[1:]])
    kept: list[str] = []
    skip_next = False
    for word in words:
        if skip_next:
            skip_next = False
            continue
        if word == "--resume":
            skip_next = True
            continue
        if word.startswith("--resume="):
            continue
        kept.append(word)
    return shlex.join([*kept, "--resume", str(checkpoint)])
