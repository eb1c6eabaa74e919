"""torchrun process groups for training: which rank and node this is, which device it uses, whether torchrun
restarted the group, and summing metrics."""

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
    node: int = 0  # torchrun's GROUP_RANK: this node's index in the rendezvous
    local_world: int = 1  # processes on this node

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.world // max(1, self.local_world))

    def describe(self) -> str:
        return (
            f"rank {self.rank}/{self.world} on node {self.node}/{self.nodes} (local rank {self.local_rank}, "
            f"pid {os.getpid()})"
        )


def from_environment() -> Dist:
    """This process's place in the torchrun job (one process: rank 0 of 1)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Dist(
        rank=int(env.get("RANK", "0")),
        world=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        node=int(env.get("GROUP_RANK", "0")),
        local_world=int(env.get("LOCAL_WORLD_SIZE", str(world))),
    )


def restart_count() -> int:
    """How many times torchrun (``--max_restarts``) has restarted this worker group; 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def launch_id() -> Optional[str]:
    """The torchrun job's id (``--rdzv_id``; a fresh one per ``--standalone`` launch), the same across restarts."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def log_prefix() -> str:
    """``[rank R node N] `` for log lines of a multi-process run, empty for one process."""
    info = from_environment()
    return f"[rank {info.rank} node {info.node}] " if info.enabled else ""


def setup_distributed(device_arg: Optional[str]) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1: NCCL for GPUs, gloo for CPU."""
    info = from_environment()
    if device_arg:
        device = torch.device(device_arg)
    elif torch.cuda.is_available():
        device = torch.device("cuda", info.local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def init_process_group(backend: str) -> None:
    """``dist.init_process_group`` from torchrun's environment, its keys kept apart per restart.

    torchrun's agent serves one TCP store for all restarts of a worker group, and the process group's keys (each
    rank's listening address) carry no restart number: a restarted rank could read the address of the worker it
    replaces and fail with ``connectFullMesh ... Connection refused`` (seen in about one restart in four). A
    prefix with the restart count gives every attempt its own keys.
    """
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restarts is None:  # not under torchrun: the plain env:// rendezvous
        dist.init_process_group(backend)
        return
    store, rank, world = next(dist.rendezvous("env://"))
    dist.init_process_group(
        backend, store=dist.PrefixStore(f"lsvit/attempt_{restarts}", store), rank=rank, world_size=world
    )


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
