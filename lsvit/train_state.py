"""A training run's state: the checkpoint payload it writes and how a resumed run takes it back.

See lsvit/checkpoint.py for the keys. Restoring applies the flags of the resumed command where the checkpoint's
run differed (lsvit/resume.py decides which may change): optimizer hyper-parameters come from the new flags and
the lr schedule is rebuilt at the step reached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from lsvit import checkpoint as ckpt
from lsvit import sharded_checkpoint
from lsvit.distributed import launch_id
from lsvit.resume import SCHEDULE, changed_flags, check_changes, describe_changes, train_args

log = logging.getLogger("lsvit.train")


@dataclass
class EpochMeter:
    """Sums over this rank's batches; reduced across ranks at the end of the epoch."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    skipped: float = 0.0

    def as_list(self) -> list[float]:
        return [self.loss_sum, self.correct, self.count, self.skipped]


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batches_done: int = 0  # micro-batches of the current epoch already trained (mid-epoch checkpoints)
    best_metric: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=dict)  # EpochMeter of the interrupted epoch


def build_payload(trainer, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint dict; ``rng_states`` holds one entry per rank. Without weights and optimizer state for a
    sharded model: those go to the shard files."""
    state = trainer.state
    whole = {} if trainer.fsdp else {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
    payload = {
        "format_version": ckpt.FORMAT_VERSION,
        **whole,
        "model_config": trainer.config.model_dump(),
        "classes": list(trainer.data.classes),
        "data": trainer.data.record,
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "sampler": {"seed": trainer.args.seed, "epoch": state.epoch, "batches_done": state.batches_done},
        "rng": rng_states,
        "best_metric": state.best_metric,
        "history": state.history,
        "partial": state.partial,
        "train_args": train_args(trainer.args),
        "world_size": trainer.info.world,
        "launch_id": launch_id(),
    }
    if trainer.ema is not None:
        payload["model_ema"] = trainer.ema.module.state_dict()
    return payload


def save_checkpoint(trainer, best: bool = False) -> Optional[Path]:
    """last.pt (the previous one kept as previous.pt) and, when ``best``, best.pt; every rank's RNG state in it."""
    rng_states = [ckpt.capture_rng_state()]
    if trainer.info.enabled:  # every rank's generators, so each rank resumes its own dropout stream
        gathered: list[Any] = [None] * trainer.info.world if trainer.info.main else None
        dist.gather_object(rng_states[0], gathered, dst=0)
        rng_states = gathered
    path = None
    if trainer.fsdp:  # every rank writes its shards
        path = sharded_checkpoint.save(trainer, build_payload(trainer, rng_states), best)
    elif trainer.info.main:
        payload = ckpt.with_checksum(build_payload(trainer, rng_states))
        path = ckpt.save_atomic(payload, trainer.output_dir / "last.pt", keep_previous=True)
        if best:
            ckpt.save_atomic(payload, trainer.output_dir / "best.pt")
    if trainer.info.main:
        # One line per checkpoint: tests and people watching a run can see where it is.
        print(
            f"checkpoint {path} epoch={trainer.state.epoch} step={trainer.state.step} "
            f"batches_done={trainer.state.batches_done}{' (best)' if best else ''}",
            flush=True,
        )
    if trainer.info.enabled:
        dist.barrier()
    return path


def restore(trainer, checkpoint: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Weights, optimizer state, RNG and run position from ``checkpoint``; returns the flags that changed."""
    args, info = trainer.args, trainer.info
    mid_epoch = checkpoint["sampler"]["batches_done"] > 0
    changes = changed_flags(checkpoint.get("train_args", {}), args)
    check_changes(changes, mid_epoch, trainer.resume_from)
    if ("sharded" in checkpoint) != trainer.fsdp:
        kind = "sharded (trained with --fsdp)" if "sharded" in checkpoint else "not sharded (trained without --fsdp)"
        raise ValueError(
            f"--resume {trainer.resume_from}: the checkpoint is {kind}; resume it "
            f"{'with' if 'sharded' in checkpoint else 'without'} --fsdp (lsvit infer reads either kind)"
        )
    # The new flags' hyper-parameters (lr, weight decay, betas ...) replace the saved ones; Adam's moments stay.
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in trainer.optimizer.param_groups]
    if trainer.fsdp:
        sharded_checkpoint.load(trainer, checkpoint)
    else:
        trainer.model.load_state_dict(checkpoint["model"])
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    for group, hyper in zip(trainer.optimizer.param_groups, fresh, strict=True):
        group.update(hyper)
    trainer.scaler.load_state_dict(checkpoint["scaler"])
    if trainer.ema is not None:
        if "model_ema" in checkpoint:
            trainer.ema.module.load_state_dict(checkpoint["model_ema"])
        else:
            trainer.ema.set(trainer.model)
            log.info("the checkpoint has no EMA weights: the EMA starts from its weights")
    if checkpoint.get("world_size", 1) != info.world:
        log.warning(
            "resuming a %d-process checkpoint with %d processes: data order per rank changes",
            checkpoint.get("world_size", 1),
            info.world,
        )
    trainer.state = RunState(
        epoch=checkpoint["epoch"],
        step=checkpoint["step"],
        batches_done=checkpoint["sampler"]["batches_done"],
        best_metric=checkpoint["best_metric"],
        history=list(checkpoint["history"]),
        partial=dict(checkpoint["partial"]),
    )
    rng_states = checkpoint["rng"]
    if len(rng_states) == info.world:
        ckpt.restore_rng_state(rng_states[info.rank])
    else:  # another world size: every rank takes rank 0's state, then a distinct dropout stream
        ckpt.restore_rng_state(rng_states[0])
        torch.manual_seed(args.seed + info.rank + 7919 * (trainer.state.step + 1))
    if info.main:
        state = trainer.state
        log.info(
            "resumed from %s: epoch %d, step %d, %d batches into the epoch",
            trainer.resume_from,
            state.epoch,
            state.step,
            state.batches_done,
        )
        if changes:
            log.info("resume: applied changed flags: %s", describe_changes(changes))
    return changes


def schedule_note(trainer, changes: dict[str, tuple[Any, Any]], total: int, warmup: int) -> None:
    """Say how the lr schedule was recomputed when a flag it depends on changed."""
    if trainer.info.main and any(key in changes for key in (*SCHEDULE, "batch_size", "accum_steps")):
        log.info(
            "resume: lr schedule recomputed from step %d: %d steps in total, %d warmup, lr now %.3g (peak %.3g, "
            "min %.3g)",
            trainer.state.step,
            total,
            warmup,
            max(group["lr"] for group in trainer.optimizer.param_groups),  # the head's, with layer decay
            trainer.args.lr,
            trainer.args.min_lr,
        )
