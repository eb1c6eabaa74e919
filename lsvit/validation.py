"""Validation during training: top-1 / top-5, the loss with the training label smoothing and without it."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lsvit.distributed import all_reduce_sum, any_rank
from lsvit.interrupt import Interrupted
from lsvit.optim import topk_correct
from lsvit.samplers import EvalShard
from lsvit.views import view_probabilities


@torch.no_grad()
def evaluate(trainer, model: nn.Module) -> dict[str, Any]:
    """Validation top-1/top-5, the loss with the training label smoothing (comparable) and without (nll)."""
    model.eval()
    sampler = EvalShard(len(trainer.data.val_set), trainer.info.rank, trainer.info.world)
    loader = trainer._loader(trainer.data.val_set, sampler, 0)
    loss_sum = nll_sum = top1 = top5 = count = skipped = 0.0
    batches = _lockstep(trainer, loader) if trainer.fsdp else loader
    for batch in tqdm(batches, desc="validate", disable=not trainer.progress, leave=False, dynamic_ncols=True):
        if batch is not None:
            trainer.skips.add(batch["skipped"], batch["partial"])
            skipped += len(batch["skipped"])
        if any_rank(trainer.stop.signum is not None, trainer.info, trainer.device):
            trainer.save()  # the epoch's training is done: the resumed run validates it again
            raise Interrupted(trainer.stop.signum or 15)
        if batch is None or batch["video"] is None:
            if trainer.fsdp:  # the other ranks' forwards all-gather weights from this one too
                _placeholder_forwards(trainer, model)
            continue
        video, labels = batch["video"], batch["label"].to(trainer.device)  # uint8 clips
        mean, std = trainer.data.record["mean"], trainer.data.record["std"]
        with trainer.autocast():  # no DDP wrapper: ranks see different batch counts here
            if video.dim() == 6:  # (B, views, T, C, H, W): softmax averaged over views; its log scores the loss
                probs = view_probabilities(model, video, video.shape[0], trainer.device, mean, std)
                logits = probs.clamp_min(1e-12).log()
            else:
                # uint8 clips: the model's input op normalizes what it reads
                logits = model(video.to(trainer.device, non_blocking=True), mean=mean, std=std).float()
        smoothing = trainer.args.label_smoothing
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum", label_smoothing=smoothing))
        nll_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        top1 += topk_correct(logits, labels, 1)
        top5 += topk_correct(logits, labels, 5)
        count += len(labels)
    loss_sum, nll_sum, top1, top5, count, skipped = all_reduce_sum(
        [loss_sum, nll_sum, top1, top5, count, skipped], trainer.info, trainer.device
    )
    return {
        "val_loss": loss_sum / max(1, count),
        "val_nll": nll_sum / max(1, count),
        "val_top1": top1 / max(1, count),
        "val_top5": top5 / max(1, count),
        "val_skipped": int(skipped),
        "val_clips": int(count),
        "val_views": getattr(trainer.data.val_set, "views", 1),
    }


def _lockstep(trainer, loader):
    """The loader's batches, then ``None`` until every rank has run out: a sharded model's forward is a
    collective, so every rank runs as many as the rank with the most batches."""
    batches = iter(loader)
    while True:
        batch = next(batches, None)
        if not any_rank(batch is not None, trainer.info, trainer.device):
            return
        yield batch


def _placeholder_forwards(trainer, model: nn.Module) -> None:
    """As many forwards as a real batch takes (one per view), on a zero clip whose output is discarded."""
    video, _ = trainer._placeholder_batch()
    clip, mean, std = video.to(trainer.device), trainer.data.record["mean"], trainer.data.record["std"]
    with trainer.autocast():
        for _ in range(getattr(trainer.data.val_set, "views", 1)):
            model(clip, mean=mean, std=std)
