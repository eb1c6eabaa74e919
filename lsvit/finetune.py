"""Fine-tuning pieces of a training run, each from a well-kept implementation where one fits.

- pretrained backbone weights: ``lsvit.pretrained.load_pretrained`` (timm / Hugging Face ViT, VideoMAE, ViViT)
- mixup / cutmix with soft targets: ``timm.data.Mixup`` (label smoothing folded into the targets)
- EMA of the weights: ``timm.utils.ModelEmaV3`` (with its decay warmup, so short runs are not dominated by the
  initial weights)
- gradient checkpointing: ``torch.utils.checkpoint`` around each transformer block (non-reentrant)
"""

from __future__ import annotations

import argparse
import functools
import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("lsvit.train")


def load_backbone(model: nn.Module, args: argparse.Namespace, main: bool) -> None:
    """``--pretrained FILE`` into ``model``; prints what was loaded, resampled, inflated and left new."""
    from lsvit.pretrained import load_pretrained

    report = load_pretrained(model, args.pretrained, inflation=args.inflate)
    if main:
        log.info("pretrained %s (%s layout): loaded %d tensors", args.pretrained, report.layout, len(report.loaded))
        log.info("  resampled: %s", "; ".join(report.resampled) or "none")
        log.info("  inflated: %s", "; ".join(report.inflated) or "none")
        log.info("  new (left at init): %s", summarize_keys(report.missing))
        if report.unexpected or report.skipped:
            log.info("  not used: %s", summarize_keys(report.unexpected + report.skipped))
        for note in report.notes:
            log.info("  note: %s", note)


def summarize_keys(keys: list[str]) -> str:
    """Parameter names grouped by module with the block index folded: ``blocks.*.lmi (x12)``."""
    if not keys:
        return "none"
    groups: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 2:
            name = f"blocks.*.{parts[2]}"
        elif parts[-1] in ("weight", "bias") and len(parts) > 1:
            name = ".".join(parts[:-1])
        else:
            name = key
        groups[name] = groups.get(name, 0) + 1
    return ", ".join(f"{name} ({count} tensors)" if count > 1 else name for name, count in groups.items())


def build_ema(model: nn.Module, args: argparse.Namespace):
    if not args.model_ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=True)


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them (memory for time)."""
    from torch.utils.checkpoint import checkpoint

    def checkpointed(forward, x: Tensor, steps: int, grid: tuple[int, int]) -> Tensor:
        if not torch.is_grad_enabled():
            return forward(x, steps, grid)
        return checkpoint(forward, x, steps, grid, use_reentrant=False)

    for block in model.blocks:
        block.forward = functools.partial(checkpointed, block.forward)  # state_dict names unchanged


class ClipMixup:
    """timm's Mixup on clips ``(B, T, C, H, W)``: one box / one lambda for every frame of a clip.

    timm mixes images ``(B, C, H, W)``; frames are folded into channels so its box covers the same pixels in every
    frame. timm needs an even batch: an odd batch mixes all but its last clip, which keeps a smoothed one-hot target.
    """

    def __init__(self, args: argparse.Namespace, num_classes: int) -> None:
        from timm.data import Mixup

        self.num_classes = num_classes
        self.smoothing = args.label_smoothing
        self.mixup = Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            prob=args.mixup_prob,
            switch_prob=args.mixup_switch_prob,
            label_smoothing=args.label_smoothing,
            num_classes=num_classes,
        )

    def __call__(self, video: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        b, t, c, h, w = video.shape
        even = b - b % 2
        soft = self._smoothed(labels)
        if even == 0:
            return video, soft
        mixed, targets = self.mixup(video[:even].reshape(even, t * c, h, w).clone(), labels[:even])
        video = torch.cat([mixed.reshape(even, t, c, h, w), video[even:]])
        return video, torch.cat([targets.to(soft.dtype), soft[even:]])

    def _smoothed(self, labels: Tensor) -> Tensor:
        off = self.smoothing / self.num_classes
        return torch.full((len(labels), self.num_classes), off, device=labels.device).scatter_(
            1, labels[:, None], 1.0 - self.smoothing + off
        )


def build_mixup(args: argparse.Namespace, num_classes: int) -> Optional[ClipMixup]:
    if not (args.mixup > 0 or args.cutmix > 0):
        return None
    return ClipMixup(args, num_classes)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against probability targets (mixup / cutmix already hold the label smoothing)."""
    return F.cross_entropy(logits, targets)
