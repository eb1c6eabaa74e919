"""What ``--resume`` does with flags that differ from the checkpoint's run: apply them (and say so) or refuse.

Never silently dropped: every changed training flag is either in the printed list of applied changes or stops
the run with a message naming the flag, the checkpoint's value and what to do.
"""

from __future__ import annotations

import argparse
from typing import Any

from lsvit.config import ModelConfig

# The lr schedule is a function of the step: it is recomputed from the step reached with the new values.
SCHEDULE = ("lr", "min_lr", "epochs", "warmup_epochs")
# Change the data position inside an epoch: allowed at an epoch boundary (schedule recomputed), not mid-epoch.
EPOCH_BOUNDARY_ONLY = ("batch_size", "accum_steps", "shuffle_buffer")
# Fixed for the whole run.
FIXED = {
    "seed": "the data order and random streams continue from the checkpoint",
    "layer_decay": "the optimizer's parameter groups (and their Adam state) are fixed by the checkpoint",
}
# Where the run happens, not how it trains: never reported.
RUN_ONLY = {
    "output_dir", "resume", "num_workers", "device", "threads", "no_progress", "save_every_steps", "deterministic",
    "debug", "tensorboard", "command_line", "pretrained", "inflate", "recipe", "fsdp",
}  # fmt: skip


PRIMITIVES = (int, float, str, bool, type(None))


def train_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's training flags (primitives and lists of them, e.g. ``--rrc_scale 0.08 1``); model fields left
    out: the checkpoint's config holds those."""
    found: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in ModelConfig.model_fields or key == "command_line":
            continue
        if isinstance(value, PRIMITIVES):
            found[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(item, PRIMITIVES) for item in value):
            found[key] = list(value)
    return found


def changed_flags(saved: dict[str, Any], args: argparse.Namespace) -> dict[str, tuple[Any, Any]]:
    """``{flag: (checkpoint value, new value)}`` for training flags that differ (run-only flags left out)."""
    now = train_args(args)
    changes = {}
    for key in sorted(saved):  # flags a checkpoint does not know yet keep their defaults: nothing to compare
        if key in RUN_ONLY or key in ModelConfig.model_fields:
            continue
        before, after = saved[key], now.get(key)
        if before != after:
            changes[key] = (before, after)
    return changes


def check_changes(changes: dict[str, tuple[Any, Any]], mid_epoch: bool, path) -> None:
    """Raise ``ValueError`` for a change that cannot be honoured."""
    for key, (before, after) in changes.items():
        if key in FIXED:
            raise ValueError(
                f"--resume {path}: --{key} {after} differs from the checkpoint's {before}; {FIXED[key]}: drop "
                f"--{key} (or start a new run in another --output_dir)"
            )
        if key in EPOCH_BOUNDARY_ONLY and mid_epoch:
            raise ValueError(
                f"--resume {path}: the checkpoint stopped inside an epoch with --{key} {before}; --{key} {after} "
                f"would shift the data position: resume with --{key} {before} (it can change at an epoch boundary)"
            )


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {before} -> {after}" for key, (before, after) in changes.items())
