"""Optimizer parameter groups (timm's weight-decay and layer-decay grouping), the warmup + cosine schedule, AMP."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D tensors (biases, norms) and ``model.no_weight_decay()``.

    ``layer_decay < 1`` scales each group's lr by ``layer_decay ** (depth + 1 - layer)`` (BEiT / timm): the head
    trains at the full lr, block i (0-based) at ``layer_decay ** (depth - i)`` (timm puts the final norm with the
    last block), the patch embedding, SMIF and positional tables at the smallest. timm's
    ``param_groups_weight_decay`` / ``param_groups_layer_decay`` build the groups; layers come from the model's
    ``group_matcher``. Every group carries ``lr_scale`` (1.0 without layer decay).
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if layer_decay < 1.0:
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    for group in groups:
        group.setdefault("lr_scale", 1.0)
    return groups


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier per optimizer step: linear warmup to 1, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def schedule_lengths(args, steps_per_epoch: int, step: int, epoch: int, steps_into_epoch: int) -> tuple[int, int]:
    """(total, warmup) optimizer steps: the steps taken plus those the remaining epochs will take.

    For an unchanged run this is ``steps_per_epoch * epochs``; after a resume with another ``--epochs`` or
    ``--batch_size`` it is recomputed from the step reached.
    """
    remaining = max(0, (args.epochs - epoch) * steps_per_epoch - steps_into_epoch)
    total = max(1, step + remaining)
    warmup = min(total, max(1, round(args.warmup_epochs * steps_per_epoch)))
    return total, warmup


def build_scheduler(optimizer, args, total: int, warmup: int, step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR at ``step`` with base lr ``args.lr * lr_scale`` per group (sets each group's lr for ``step``)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = args.lr * group.get("lr_scale", 1.0)
    factor = warmup_cosine(total, warmup, args.min_lr / args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=step - 1)
    return scheduler


def amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[setting]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels[:, None]).any(dim=1).sum())
