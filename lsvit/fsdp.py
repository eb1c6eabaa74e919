"""``--fsdp``: the model sharded over the torchrun processes with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each rank keeps 1/N of every parameter, gradient and AdamW moment; a block's whole weights exist only while it
runs (all-gathered before its forward and backward, gradients reduce-scattered after). Each transformer block
is one sharding unit, the stem, final norm and head form the root unit. The training step is DDP's: the same
clips per rank, the same averaged gradient, so an FSDP run reaches DDP's weights up to float rounding.
Checkpoints are sharded too (lsvit/sharded_checkpoint.py).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lsvit.distributed import Dist


def check_fsdp_arguments(args: argparse.Namespace, info: Dist) -> None:
    """Combinations --fsdp does not support, refused before any work with the flag to change."""
    if not args.fsdp:
        return
    if not info.enabled:
        raise ValueError(
            "--fsdp shards the model over torchrun processes, but this is a single process: launch with "
            "torchrun --nproc_per_node N (N >= 2), or drop --fsdp"
        )
    unsupported = {  # not wired to sharded parameters here
        "--model_ema": args.model_ema,  # the EMA copy would be a second, unsharded model
        "--amp fp16": args.amp == "fp16",  # GradScaler on sharded gradients
        "--grad_checkpointing": args.grad_checkpointing,  # recomputation inside the sharded blocks
    }
    refused = [flag for flag, on in unsupported.items() if on]
    if refused:
        raise ValueError(f"--fsdp does not support {', '.join(refused)}: drop it (--amp bf16 or off work with --fsdp)")


def shard_model(model: nn.Module, info: Dist, device: torch.device) -> nn.Module:
    """``fully_shard`` each block, then the root; returns the same module (FSDP2 shards in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (info.world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
