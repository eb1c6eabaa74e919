"""Run a backend-choosing step from several threads at once, for the tests of which backend a call runs on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Optional

CHOICES = ("reference", None, "cpu", "reference")


def run_per_thread(
    step: Callable[[Optional[str]], None], choices: Sequence[Optional[str]] = CHOICES, first: str = "cpu"
) -> dict[str, str]:
    """``step(backend)`` three times in a thread named "first" (with ``first``: it compiles), then three times in
    one thread per choice, all at once. Returns {thread name: backend chosen, None read as "cpu"}; re-raises
    nothing but asserts that no thread failed."""
    chosen, errors = {}, []

    def worker(backend):
        try:
            for _ in range(3):
                step(backend)
            chosen[threading.current_thread().name] = backend or "cpu"
        except Exception as err:  # reported by the calling thread
            errors.append(err)

    opener = threading.Thread(target=worker, args=(first,), name="first")
    opener.start()
    opener.join()
    threads = [threading.Thread(target=worker, args=(b,), name=f"worker{i}") for i, b in enumerate(choices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(chosen) == len(threads) + 1
    return chosen
