"""torchrun process groups for training: which rank this is, which device it uses, and summing metrics."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn, Optional

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: Optional[str]) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1: NCCL for GPUs, gloo for CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_arg:
        device = torch.device(device_arg)
    elif torch.cuda.is_available():
        device = torch.device("cuda", info.local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def end_worker_process() -> NoReturn:
    """End a torchrun worker whose run has finished, without the interpreter's teardown.

    Finished gloo workers were seen to abort in that teardown (``terminate called without an active exception``
    with no Python frame left, i.e. in C++ destructors at exit), about one run in eight on a loaded 2-core machine,
    which turns a finished run into a failed one. By now every checkpoint and log is written and closed and the
    process group is destroyed, so leaving here loses nothing.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def all_reduce_sum(values: Sequence[float], info: Dist, device: torch.device) -> list[float]:
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, info: Dist, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (a stop request must reach all ranks at the same step)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
