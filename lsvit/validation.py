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
    for batch in tqdm(loader, desc="validate", disable=not trainer.progress, leave=False, dynamic_ncols=True):
        trainer.skips.add(batch["skipped"], batch["partial"])
        skipped += len(batch["skipped"])
        if any_rank(trainer.stop.signum is not None, trainer.info, trainer.device):
            trainer.save()  # the epoch's training is done: the resumed run validates it again
            raise Interrupted(trainer.stop.signum or 15)
        if batch["video"] is None:
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
