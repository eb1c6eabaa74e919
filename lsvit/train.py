"""Train LSViTForAction on a video dataset: ``python -m lsvit.train --data_root DIR [--num_frames 16 ...]``.

One process or many (``torchrun --nproc_per_node N -m lsvit.train ...``: gloo on CPU, NCCL on GPU, one
DistributedSampler shard per rank, rank 0 logs and checkpoints). AdamW with linear warmup then cosine decay,
gradient clipping, label smoothing, bf16 autocast on GPU, gradient accumulation, per-epoch validation, a CSV log
and a PNG plot, and ``last.pt`` / ``best.pt`` checkpoints written atomically every epoch (and every
``--save_every_steps`` optimizer steps). ``--resume`` restores everything, data position and RNG states
included, so a resumed run ends with the weights an uninterrupted run would have (bit-identical on CPU).
See docs/training.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from lsvit import checkpoint as ckpt
from lsvit import data_guards, formats
from lsvit.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipTransform,
    SkipLog,
    VideoClipDataset,
    collate_clips,
    default_resize_size,
    read_metadata,
    split_source,
    to_model_input,
)
from lsvit.errors import run_reporting_errors
from lsvit.options import HelpFormatter, add_dashed, add_model_arguments, build_config, model_overrides

log = logging.getLogger("lsvit.train")

CSV_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "train_skipped",
    "val_skipped",
    "epoch_seconds",
)


# -------------------------------------------------------------------------------------------------- flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsvit train",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_train_arguments(parser)
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    add_dashed(
        data,
        "data_root",
        required=True,
        help="dataset folder: <root>/train.txt + <root>/val.txt annotation lists, or <root>/train/<class>/ and "
        "<root>/val/<class>/ folders, or class folders directly under <root> (then no validation split), or any "
        "--data_format below (UCF101/HMDB51 splits, Kinetics CSV, SSv2 JSON, mmaction2 lists)",
    )
    add_dashed(data, "train_list", default=None, help="training annotation list or class-folder root (overrides)")
    add_dashed(data, "val_list", default=None, help="validation annotation list or class-folder root (overrides)")
    add_dashed(data, "resize_size", type=int, default=None, help="shorter side before cropping (default 256/224 x)")
    add_dashed(
        data,
        "horizontal_flip",
        choices=("auto", "on", "off"),
        default="auto",
        help="random horizontal flip for training; auto = off when <root>/dataset.json says direction_sensitive "
        "(left/right classes), else on",
    )
    add_dashed(data, "num_workers", type=int, default=2, help="DataLoader worker processes per rank")
    formats.add_data_arguments(data, training=True)

    model = parser.add_argument_group("model (ModelConfig; flags override APPCONFIG__* env, which overrides code)")
    add_model_arguments(model)

    optim = parser.add_argument_group("optimization")
    add_dashed(optim, "epochs", type=int, default=30, help="training epochs")
    add_dashed(optim, "batch_size", type=int, default=8, help="clips per optimizer micro-step PER PROCESS")
    add_dashed(optim, "accum_steps", type=int, default=1, help="micro-batches accumulated per optimizer step")
    add_dashed(optim, "lr", type=float, default=5e-4, help="peak AdamW learning rate")
    add_dashed(optim, "min_lr", type=float, default=1e-6, help="learning rate at the end of the cosine decay")
    add_dashed(optim, "weight_decay", type=float, default=0.05, help="AdamW weight decay (not on norms/biases/embeds)")
    add_dashed(optim, "warmup_epochs", type=float, default=1.0, help="linear warmup length in epochs")
    add_dashed(optim, "clip_grad", type=float, default=1.0, help="max gradient norm (0 = no clipping)")
    add_dashed(optim, "label_smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
    add_dashed(
        optim,
        "amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision autocast: auto = bf16 on GPU, off on CPU",
    )

    run = parser.add_argument_group("run")
    add_dashed(run, "output_dir", default="runs/lsvit", help="checkpoints, CSV log and plot go here")
    add_dashed(run, "seed", type=int, default=0, help="seed for init, data order, augmentation and dropout")
    add_dashed(
        run,
        "resume",
        default=None,
        help="checkpoint to continue from, or 'auto' for <output_dir>/last.pt if it exists",
    )
    add_dashed(run, "save_every_steps", type=int, default=0, help="also save last.pt every N optimizer steps (0=off)")
    add_dashed(run, "device", default=None, help="cpu, cuda, cuda:1 ... (default: this rank's GPU, else cpu)")
    add_dashed(
        run,
        "deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms + no cuDNN benchmark (CPU runs are deterministic anyway)",
    )
    add_dashed(
        run,
        "threads",
        type=int,
        default=0,
        help="torch CPU threads per process (0 = torch's default; 1 is fastest for small models on a busy CPU)",
    )
    add_dashed(run, "no_progress", action="store_true", help="no tqdm progress bars")


# ------------------------------------------------------------------------------------------- distributed


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


def all_reduce_sum(values: Sequence[float], info: Dist, device: torch.device) -> list[float]:
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# -------------------------------------------------------------------------------------------------- data


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start part-way into an epoch (after a mid-epoch checkpoint).

    The order depends only on (seed, epoch), not on the world size: every rank takes every ``world``-th index of
    the same permutation, so one process with batch ``world * b`` sees, batch by batch, the union of what
    ``world`` ranks with batch ``b`` see.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def skip(self, samples: int) -> None:
        """Skip this many of this rank's samples in the next epoch only."""
        self.start = samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start :]
        self.start = 0
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples - self.start


class EvalShard(torch.utils.data.Sampler):
    """Every ``world``-th index from ``rank``: no padding, so summed metrics count each video once."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def resolve_splits(args: argparse.Namespace) -> tuple[Path, Optional[Path]]:
    root = Path(args.data_root)
    if not root.exists():
        raise FileNotFoundError(f"--data_root {root} does not exist (make one with: lsvit data synth --out {root})")
    train_source = Path(args.train_list) if args.train_list else split_source(root, "train") or root
    val_source = Path(args.val_list) if args.val_list else split_source(root, "val")
    return train_source, val_source


def flip_enabled(setting: str, metadata: dict[str, Any]) -> bool:
    if setting == "auto":
        return not metadata.get("direction_sensitive", False)
    return setting == "on"


# ------------------------------------------------------------------------------------------- optimization


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, positional embeddings and tokens (1-D or embedding tables)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or "pos_embed" in name or "token" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier per optimizer step: linear warmup to 1, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[setting]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels[:, None]).any(dim=1).sum())


# ----------------------------------------------------------------------------------------------- records


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


def write_csv(history: list[dict[str, Any]], path: Path) -> None:
    temp = path.with_suffix(".csv.tmp")
    with temp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    os.replace(temp, path)


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    acc_axis.plot(epochs, [row["train_top1"] for row in history], "o-", label="train top-1")
    if any(row.get("val_loss") is not None for row in history):
        val_rows = [row for row in history if row.get("val_loss") is not None]
        loss_axis.plot([r["epoch"] for r in val_rows], [r["val_loss"] for r in val_rows], "s-", label="val")
        acc_axis.plot([r["epoch"] for r in val_rows], [r["val_top1"] for r in val_rows], "s-", label="val top-1")
        acc_axis.plot([r["epoch"] for r in val_rows], [r["val_top5"] for r in val_rows], "^--", label="val top-5")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    temp = path.with_suffix(".tmp.png")
    figure.savefig(temp, dpi=100)
    plt.close(figure)
    os.replace(temp, path)


# ------------------------------------------------------------------------------------------------ trainer


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        self.info, self.device = setup_distributed(args.device)
        self.progress = self.info.main and not args.no_progress
        self.output_dir = Path(args.output_dir)
        if args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if args.accum_steps < 1 or args.batch_size < 1 or args.epochs < 0:
            raise ValueError("--accum_steps and --batch_size must be >= 1 and --epochs >= 0")
        self.resume_from = self._resume_path()
        resumed = ckpt.load_checkpoint(self.resume_from) if self.resume_from else None

        seed_everything(args.seed)  # identical initial weights on every rank
        self.config = self._config(resumed)
        self._build_data(resumed)
        self.config = self.config.model_copy(update={"num_classes": len(self.classes)})
        from lsvit.model import LSViTForAction  # the model module pulls in the kernels; import when needed

        self.model = LSViTForAction(self.config).to(self.device)
        self.ddp_model: nn.Module = self.model
        if self.info.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, args.weight_decay), lr=args.lr)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / args.accum_steps)
        total = max(1, self.steps_per_epoch * args.epochs)
        warmup = min(total, max(1, round(args.warmup_epochs * self.steps_per_epoch)))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total, warmup, args.min_lr / args.lr)
        )
        self.amp = amp_dtype(args.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.state = RunState()
        self.skips = SkipLog(log)
        torch.manual_seed(args.seed + self.info.rank)  # dropout / drop-path masks differ per rank
        if resumed:
            self._restore(resumed)

    # ---- setup ------------------------------------------------------------------------------------------
    def _resume_path(self) -> Optional[Path]:
        if not self.args.resume:
            return None
        if self.args.resume == "auto":
            path = self.output_dir / "last.pt"
            return path if path.is_file() else None
        return Path(self.args.resume)

    def _config(self, resumed: Optional[dict[str, Any]]):
        from lsvit.config import ModelConfig

        overrides = model_overrides(self.args)
        if resumed is None:
            return build_config(overrides)
        config = ModelConfig.from_checkpoint_dict(resumed["model_config"])
        conflicts = {k: v for k, v in overrides.items() if getattr(config, k) != v and k != "num_classes"}
        if conflicts:
            raise ValueError(
                f"--resume {self.resume_from}: the checkpoint was trained with "
                f"{ {k: getattr(config, k) for k in conflicts} }, which conflicts with {conflicts}; drop those flags "
                f"(a resumed run keeps the checkpoint's architecture) or start a new run"
            )
        return config

    def _build_data(self, resumed: Optional[dict[str, Any]]) -> None:
        args, config = self.args, self.config
        if config.num_frames is None:
            raise ValueError("num_frames is not set: pass --num_frames (e.g. --num_frames 16)")
        train_split, val_split = formats.training_splits(args)
        self.metadata = read_metadata(Path(args.data_root))
        self.horizontal_flip = flip_enabled(args.horizontal_flip, self.metadata)
        resize = args.resize_size or default_resize_size(config.image_size)
        train_transform = ClipTransform(config.image_size, resize, train=True, horizontal_flip=self.horizontal_flip)
        eval_transform = ClipTransform(config.image_size, resize, train=False)
        self.train_set = VideoClipDataset(
            train_split.records, train_split.classes, config.num_frames, train_transform, args.seed, args.decoder
        )
        self.classes = self.train_set.classes
        if resumed is not None and list(resumed["classes"]) != list(self.classes):
            raise ValueError(
                f"--resume: the checkpoint's classes {resumed['classes']} differ from the dataset's {self.classes}"
            )
        self.val_set = None
        if val_split is not None:
            self.val_set = VideoClipDataset(
                val_split.records, self.classes, config.num_frames, eval_transform, decoder=args.decoder
            )
        for dataset, name in ((self.train_set, "training"), (self.val_set, "validation")):
            if dataset is not None:
                data_guards.preflight(dataset.records, config.num_frames, args.max_skip_fraction, args.decoder, name)
        self.data_record = {
            "num_frames": config.num_frames,
            "image_size": config.image_size,
            "resize_size": resize,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "horizontal_flip": self.horizontal_flip,
        }
        self.sampler = ResumableSampler(self.train_set, self.info.world, self.info.rank, args.seed)
        if self.info.main:
            log.info(
                "data: %d training videos from %s, %s validation videos; %d classes; horizontal flip %s",
                len(self.train_set),
                train_split.source,
                len(self.val_set) if self.val_set is not None else "no",
                len(self.classes),
                "on" if self.horizontal_flip else "off",
            )

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch on this rank (the sampler pads so every rank has the same count)."""
        return math.ceil(self.sampler.num_samples / self.args.batch_size)

    def _loader(self, dataset, sampler, epoch: int) -> DataLoader:
        # An explicit generator: creating the iterator then draws its worker base seed from here, not from the
        # global torch RNG, so the number of loaders built never changes the training randomness.
        return DataLoader(
            dataset,
            batch_size=self.args.batch_size,
            sampler=sampler,
            num_workers=self.args.num_workers,
            collate_fn=collate_clips,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.args.seed * 1000 + epoch),
        )

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def _payload(self, rng_states: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        """The checkpoint dict (see lsvit/checkpoint.py); ``rng_states`` holds one entry per rank."""
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "model": self.model.state_dict(),
            "model_config": self.config.model_dump(),
            "classes": list(self.classes),
            "data": self.data_record,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "sampler": {"seed": self.args.seed, "epoch": self.state.epoch, "batches_done": self.state.batches_done},
            "rng": rng_states,
            "best_metric": self.state.best_metric,
            "history": self.state.history,
            "partial": self.state.partial,
            "train_args": self._train_args(),
            "world_size": self.info.world,
        }

    def _train_args(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self.args).items() if isinstance(v, (int, float, str, bool))}

    def save(self, best: bool = False) -> None:
        rng_states = [ckpt.capture_rng_state()]
        if self.info.enabled:  # every rank's generators, so each rank resumes its own dropout stream
            gathered: list[Any] = [None] * self.info.world if self.info.main else None
            dist.gather_object(rng_states[0], gathered, dst=0)
            rng_states = gathered
        if self.info.main:
            payload = self._payload(rng_states)
            path = ckpt.save_atomic(payload, self.output_dir / "last.pt")
            if best:
                ckpt.save_atomic(payload, self.output_dir / "best.pt")
            # One line per checkpoint: tests and people watching a run can see where it is.
            print(
                f"checkpoint {path} epoch={self.state.epoch} step={self.state.step} "
                f"batches_done={self.state.batches_done}{' (best)' if best else ''}",
                flush=True,
            )
        if self.info.enabled:
            dist.barrier()

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint.get("world_size", 1) != self.info.world:
            log.warning(
                "resuming a %d-process checkpoint with %d processes: data order per rank changes",
                checkpoint.get("world_size", 1),
                self.info.world,
            )
        self.state = RunState(
            epoch=checkpoint["epoch"],
            step=checkpoint["step"],
            batches_done=checkpoint["sampler"]["batches_done"],
            best_metric=checkpoint["best_metric"],
            history=list(checkpoint["history"]),
            partial=dict(checkpoint["partial"]),
        )
        rng_states = checkpoint["rng"]
        if len(rng_states) == self.info.world:
            ckpt.restore_rng_state(rng_states[self.info.rank])
        else:  # another world size: every rank takes rank 0's state, then a distinct dropout stream
            ckpt.restore_rng_state(rng_states[0])
            torch.manual_seed(self.args.seed + self.info.rank + 7919 * (self.state.step + 1))
        if self.info.main:
            log.info(
                "resumed from %s: epoch %d, step %d, %d batches into the epoch",
                self.resume_from,
                self.state.epoch,
                self.state.step,
                self.state.batches_done,
            )

    # ---- loops ---------------------------------------------------------------------------------------------
    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _optimizer_step(self, usable: bool = True) -> None:
        if usable:  # micro-batches that all failed change no weight (AdamW would still decay them)
            if self.args.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1

    def _placeholder_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A zero clip for a micro-batch whose videos all failed: keeps DDP ranks in step (its loss is x0)."""
        c = self.config
        return torch.zeros(1, c.num_frames, c.in_channels, c.image_size, c.image_size, dtype=torch.uint8), torch.zeros(
            1, dtype=torch.int64
        )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        args = self.args
        self.ddp_model.train()
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        start_batch = self.state.batches_done
        meter = EpochMeter(**self.state.partial) if start_batch else EpochMeter()
        self.sampler.skip(start_batch * args.batch_size)
        loader = self._loader(self.train_set, self.sampler, epoch)
        total_batches = self.batches_per_epoch
        bar = tqdm(
            loader,
            total=total_batches,
            initial=start_batch,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        group_clips = 0
        for batch_index, batch in enumerate(bar, start=start_batch):
            self.skips.add(batch["skipped"], batch["partial"])
            meter.skipped += len(batch["skipped"])
            empty = batch["video"] is None
            video, labels = self._placeholder_batch() if empty else (batch["video"], batch["label"])
            video = to_model_input(video, self.device)
            labels = labels.to(self.device, non_blocking=True)
            # Micro-batches [g * accum, min((g + 1) * accum, total)) make optimizer step g of the epoch.
            group_end = min((batch_index // args.accum_steps + 1) * args.accum_steps, total_batches)
            group_size = group_end - batch_index // args.accum_steps * args.accum_steps
            last_in_group = batch_index + 1 == group_end
            sync = contextlib.nullcontext() if (last_in_group or not self.info.enabled) else self.ddp_model.no_sync()
            with sync:
                with self.autocast():
                    logits = self.ddp_model(video)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=args.label_smoothing)
                scale = 0.0 if empty else 1.0 / group_size
                self.scaler.scale(loss * scale).backward()
            if not empty:
                meter.loss_sum += float(loss.detach()) * len(labels)
                meter.correct += topk_correct(logits.detach(), labels, 1)
                meter.count += len(labels)
                group_clips += len(labels)
            if last_in_group:
                self._optimizer_step(data_guards.any_clips(group_clips, self.info.enabled, self.device))
                group_clips = 0
                self.state.batches_done = batch_index + 1
                self.state.partial = vars(EpochMeter(**vars(meter)))
                if args.save_every_steps and self.state.step % args.save_every_steps == 0:
                    if self.state.batches_done < total_batches:
                        self.save()
            if self.progress:
                bar.set_postfix(loss=f"{meter.loss_sum / max(1, meter.count):.3f}", lr=f"{self._lr():.2e}")
        bar.close()
        loss_sum, correct, count, skipped = all_reduce_sum(meter.as_list(), self.info, self.device)
        return {
            "train_loss": loss_sum / max(1, count),
            "train_top1": correct / max(1, count),
            "train_skipped": int(skipped),
            "train_clips": int(count),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        if self.val_set is None:
            return {"val_loss": None, "val_top1": None, "val_top5": None, "val_skipped": 0}
        self.ddp_model.eval()
        sampler = EvalShard(len(self.val_set), self.info.rank, self.info.world)
        loader = self._loader(self.val_set, sampler, 0)
        loss_sum = top1 = top5 = count = skipped = 0.0
        for batch in tqdm(loader, desc="validate", disable=not self.progress, leave=False, dynamic_ncols=True):
            self.skips.add(batch["skipped"], batch["partial"])
            skipped += len(batch["skipped"])
            if batch["video"] is None:
                continue
            video, labels = to_model_input(batch["video"], self.device), batch["label"].to(self.device)
            with self.autocast():
                logits = self.model(video).float()  # no DDP wrapper: ranks see different batch counts here
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            top1 += topk_correct(logits, labels, 1)
            top5 += topk_correct(logits, labels, 5)
            count += len(labels)
        loss_sum, top1, top5, count, skipped = all_reduce_sum(
            [loss_sum, top1, top5, count, skipped], self.info, self.device
        )
        return {
            "val_loss": loss_sum / max(1, count),
            "val_top1": top1 / max(1, count),
            "val_top5": top5 / max(1, count),
            "val_skipped": int(skipped),
            "val_clips": int(count),
        }

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def run(self) -> dict[str, Any]:
        args = self.args
        if self.info.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(
                json.dumps({"model": self.config.model_dump(), "train": self._train_args()}, indent=2)
            )
            log.info(
                "model: %s patch embedding%s, %d frames, %.2fM parameters; %d processes on %s; amp %s",
                "3D" if self.config.use_3d_patch_embed else "2D",
                f" (tubelet {self.config.tubelet_size})" if self.config.use_3d_patch_embed else "",
                self.config.num_frames,
                sum(p.numel() for p in self.model.parameters()) / 1e6,
                self.info.world,
                self.device,
                self.amp or "off",
            )
        for epoch in range(self.state.epoch, args.epochs):
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1}
            row.update(self.train_epoch(epoch))
            row.update(self.evaluate())
            data_guards.check_epoch("training", row["train_clips"], row["train_skipped"], args.max_skip_fraction,
                                    self.skips.reasons, epoch + 1)  # fmt: skip
            if self.val_set is not None:
                data_guards.check_epoch("validation", row["val_clips"], row["val_skipped"], args.max_skip_fraction,
                                        self.skips.reasons, epoch + 1)  # fmt: skip
            row.update({"step": self.state.step, "lr": self._lr(), "epoch_seconds": time.perf_counter() - started})
            self.state.epoch, self.state.batches_done, self.state.partial = epoch + 1, 0, {}
            self.state.history.append(row)
            metric = row["val_top1"] if row["val_top1"] is not None else row["train_top1"]
            improved = metric > self.state.best_metric
            if improved:
                self.state.best_metric = metric
            self.save(best=improved)
            if self.info.main:
                write_csv(self.state.history, self.output_dir / "log.csv")
                plot_history(self.state.history, self.output_dir / "curves.png")
                val = (
                    f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f}"
                    if row["val_loss"] is not None
                    else "no validation split"
                )
                log.info(
                    "epoch %d/%d: train loss %.4f top-1 %.3f | %s | skipped videos: %d train, %d val | %.1fs",
                    epoch + 1,
                    args.epochs,
                    row["train_loss"],
                    row["train_top1"],
                    val,
                    row["train_skipped"],
                    row["val_skipped"],
                    row["epoch_seconds"],
                )
        if self.info.main and self.skips.reasons:
            log.warning("%d distinct videos were skipped during this run:", len(self.skips.reasons))
            for path, reason in sorted(self.skips.reasons.items()):
                log.warning("  %s: %s", path, reason)
        if self.info.main and self.skips.partial:
            log.warning("%d videos were used from their decodable prefix", len(self.skips.partial))
        return {
            "history": self.state.history,
            "best_metric": self.state.best_metric,
            "output_dir": str(self.output_dir),
            "skipped": dict(self.skips.reasons),
            "partial": dict(self.skips.partial),  # videos sampled from their decodable prefix
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout, force=True)


def train(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging(int(os.environ.get("RANK", "0")))
    trainer = Trainer(args)
    try:
        return trainer.run()
    finally:
        if trainer.info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Parse ``argv`` and run; returns the results (for tests and notebooks)."""
    return train(build_parser().parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point: exit status 0, or 2 with one ``error:`` line for a data or usage error."""
    run_reporting_errors(run, argv)


if __name__ == "__main__":
    main()
