"""Train LSViTForAction on a video dataset: ``python -m lsvit.train --data_root DIR [--num_frames 16 ...]``.

One process or many (``torchrun --nproc_per_node N -m lsvit.train ...``, on one node or several: gloo on CPU, NCCL
on GPU, one DistributedSampler shard per rank, rank 0 logs and checkpoints; ``--fsdp`` shards the model instead of
replicating it; a group restarted by ``torchrun --max_restarts`` continues from its latest checkpoint). AdamW with
linear warmup then cosine decay, gradient clipping, label smoothing, bf16 autocast on GPU, gradient accumulation,
per-epoch validation, a CSV log and a PNG plot, and ``last.pt`` / ``best.pt`` checkpoints written atomically with a
checksum every epoch (and every ``--save_every_steps`` optimizer steps). ``--resume`` restores everything, data
position and RNG states included, so a resumed run ends with the weights an uninterrupted run would have (bit-
identical on CPU). SIGINT / SIGTERM finish the current step, save ``last.pt`` and print the command that resumes.
See docs/training.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from lsvit import data_guards
from lsvit.config import ModelConfig
from lsvit.data import SkipLog, collate_clips, to_model_input
from lsvit.distributed import all_reduce_sum, any_rank, end_worker_process, log_prefix, restart_count, setup_distributed
from lsvit.errors import run_guarded
from lsvit.finetune import build_ema, build_mixup, enable_grad_checkpointing, load_backbone, soft_cross_entropy
from lsvit.fsdp import check_fsdp_arguments, shard_model
from lsvit.interrupt import Interrupted, StopRequest, ignore_in_worker
from lsvit.optim import amp_dtype, build_scheduler, param_groups, schedule_lengths, topk_correct
from lsvit.options import command_parser
from lsvit.recipes import apply_recipe, describe_recipe
from lsvit.run_log import TensorBoardLog, epoch_line, loss_label, plot_history, start_run_log, write_csv
from lsvit.train_options import add_train_arguments, check_train_arguments
from lsvit.train_setup import build_data, open_resume, resolve_config, seed_everything
from lsvit.train_state import EpochMeter, RunState, restore, save_checkpoint, schedule_note
from lsvit.validation import evaluate

log = logging.getLogger("lsvit.train")


# -------------------------------------------------------------------------------------------------- flags


def build_parser() -> argparse.ArgumentParser:
    return command_parser("lsvit train", __doc__, add_train_arguments)


# ------------------------------------------------------------------------------------------------ trainer


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        self.info, self.device = setup_distributed(args.device)
        if self.info.enabled:
            restarts = restart_count()
            again = f", torchrun restart {restarts}" if restarts else ""
            logging.getLogger("lsvit.distributed").info("%s, device %s%s", self.info.describe(), self.device, again)
        self.progress = self.info.main and not args.no_progress
        self.output_dir = Path(args.output_dir)
        if args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        check_train_arguments(args)
        check_fsdp_arguments(args, self.info)
        self.fsdp = bool(args.fsdp)
        self.resume_from, resumed = open_resume(args, self.output_dir, self.info)
        if args.recipe and self.info.main:
            describe_recipe(args, self.info.world)

        seed_everything(args.seed)  # identical initial weights on every rank
        self.config = resolve_config(args, resumed, self.resume_from)
        self.data = build_data(args, self.config, self.info, resumed)
        self.config = ModelConfig(**{**self.config.model_dump(), "num_classes": len(self.data.classes)})
        from lsvit.model import LSViTForAction  # the model module pulls in the kernels; import when needed

        self.model = LSViTForAction(self.config).to(self.device)
        if args.pretrained and resumed is None:
            load_backbone(self.model, args, self.info.main)
        if args.grad_checkpointing:
            enable_grad_checkpointing(self.model)
        self.ddp_model: nn.Module = self.model
        if self.fsdp:
            self.model = self.ddp_model = shard_model(self.model, self.info, self.device)
        elif self.info.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.mixup = build_mixup(args, len(self.data.classes))
        self.optimizer = torch.optim.AdamW(param_groups(self.model, args.weight_decay, args.layer_decay), lr=args.lr)
        self.ema = build_ema(self.model, args)
        self.amp = amp_dtype(args.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.state = RunState()
        self.skips = SkipLog(log)
        self.stop = StopRequest()
        torch.manual_seed(args.seed + self.info.rank)  # dropout / drop-path masks differ per rank
        changes = restore(self, resumed) if resumed else {}
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / args.accum_steps)
        steps_into_epoch = math.ceil(self.state.batches_done / args.accum_steps)
        total, warmup = schedule_lengths(args, self.steps_per_epoch, self.state.step, self.state.epoch,
                                         steps_into_epoch)  # fmt: skip
        self.scheduler = build_scheduler(self.optimizer, args, total, warmup, self.state.step)
        schedule_note(self, changes, total, warmup)

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch on this rank (the sampler pads so every rank has the same count)."""
        return math.ceil(self.data.sampler.num_samples / self.args.batch_size)

    def _loader(self, dataset, sampler, epoch: int) -> DataLoader:
        # An explicit generator: creating the iterator then draws its worker base seed from here, not from the
        # global torch RNG, so the number of loaders built never changes the training randomness.
        return DataLoader(
            dataset,
            batch_size=self.args.batch_size,
            sampler=None if isinstance(dataset, IterableDataset) else sampler,  # shard streams order themselves
            num_workers=self.args.num_workers,
            collate_fn=collate_clips,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.args.seed * 1000 + epoch),
            worker_init_fn=ignore_in_worker if self.args.num_workers else None,
        )

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def save(self, best: bool = False) -> Optional[Path]:
        return save_checkpoint(self, best)

    def _check_stop(self) -> None:
        """After a finished step: on SIGINT / SIGTERM (any rank) save last.pt here and stop."""
        if any_rank(self.stop.signum is not None, self.info, self.device):
            self.save()
            raise Interrupted(self.stop.signum or 15)

    # ---- loops ---------------------------------------------------------------------------------------------
    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _optimizer_step(self, usable: bool = True) -> None:
        """One step of the schedule; ``usable`` False (no clip behind it on any rank) changes no weight, EMA
        included (AdamW would still decay them)."""
        if usable:
            if self.args.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        if usable and self.ema is not None:
            self.ema.update(self.model, step=self.state.step)

    def _gradient_sync(self, last_in_group: bool):
        """Gradients are averaged over ranks only on the last micro-batch of an accumulation group."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(last_in_group)
            return contextlib.nullcontext()
        if last_in_group or not self.info.enabled:
            return contextlib.nullcontext()
        return self.ddp_model.no_sync()

    def _placeholder_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A zero clip for a micro-batch whose videos all failed: keeps DDP ranks in step (its loss is x0)."""
        c = self.config
        video = torch.zeros(1, c.num_frames, c.in_channels, c.image_size, c.image_size, dtype=torch.uint8)
        return video, torch.zeros(1, dtype=torch.int64)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        args, sampler = self.args, self.data.sampler
        self.ddp_model.train()
        self.data.train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        start_batch = self.state.batches_done
        meter = EpochMeter(**self.state.partial) if start_batch else EpochMeter()
        sampler.skip(start_batch * args.batch_size)
        loader = self._loader(self.data.train_set, sampler, epoch)
        total_batches = self.batches_per_epoch
        bar = tqdm(loader, total=total_batches, initial=start_batch, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not self.progress, dynamic_ncols=True)  # fmt: skip
        group_clips = 0  # clips behind the current optimizer step on this rank
        for batch_index, batch in enumerate(bar, start=start_batch):
            self.skips.add(batch["skipped"], batch["partial"])
            meter.skipped += len(batch["skipped"])
            empty = batch["video"] is None
            video, labels = self._placeholder_batch() if empty else (batch["video"], batch["label"])
            mean, std = self.data.record["mean"], self.data.record["std"]
            if self.mixup is None:  # uint8 to the model, normalized inside its input op
                video, normalization = video.to(self.device, non_blocking=True), {"mean": mean, "std": std}
            else:  # mixup blends normalized clips
                video, normalization = to_model_input(video, self.device, mean, std), {}
            labels = labels.to(self.device, non_blocking=True)
            # Micro-batches [g * accum, min((g + 1) * accum, total)) make optimizer step g of the epoch.
            group_end = min((batch_index // args.accum_steps + 1) * args.accum_steps, total_batches)
            group_size = group_end - batch_index // args.accum_steps * args.accum_steps
            last_in_group = batch_index + 1 == group_end
            sync = self._gradient_sync(last_in_group)
            targets = None
            if self.mixup is not None and not empty:
                video, targets = self.mixup(video, labels)
            with sync:
                with self.autocast():
                    logits = self.ddp_model(video, **normalization)
                    if targets is not None:
                        loss = soft_cross_entropy(logits.float(), targets)
                    else:
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
            # An unfinished accumulation group is dropped: the checkpoint holds the last finished step.
            self._check_stop()
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

    def validate(self) -> dict[str, Any]:
        if self.data.val_set is None:
            return {"val_loss": None, "val_top1": None, "val_top5": None, "val_skipped": 0}
        row = evaluate(self, self.model)
        if self.ema is not None:
            row["val_ema_top1"] = evaluate(self, self.ema.module)["val_top1"]
        return row

    def _lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)

    def _end_epoch(self, row: dict[str, Any], board: Optional[TensorBoardLog]) -> None:
        self.state.history.append(row)
        metric = row["val_top1"] if row["val_top1"] is not None else row["train_top1"]
        if row.get("val_ema_top1") is not None:
            metric = max(metric, row["val_ema_top1"])
        improved = metric > self.state.best_metric
        if improved:
            self.state.best_metric = metric
        self.save(best=improved)
        if not self.info.main:
            return
        write_csv(self.state.history, self.output_dir / "log.csv")
        plot_history(self.state.history, self.output_dir / "curves.png", loss_label(self.args))
        if board is not None:
            board.epoch(row)
        log.info(epoch_line(row, self.args.epochs))

    def run(self) -> dict[str, Any]:
        board = start_run_log(self) if self.info.main else None
        try:
            with self.stop:
                for epoch in range(self.state.epoch, self.args.epochs):
                    started = time.perf_counter()
                    row: dict[str, Any] = {"epoch": epoch + 1}
                    row.update(self.train_epoch(epoch))
                    row.update(self.validate())
                    data_guards.check_epoch_row(row, self.args.max_skip_fraction, self.skips.reasons)  # pre-save
                    row.update({"step": self.state.step, "lr": self._lr()})
                    row["epoch_seconds"] = time.perf_counter() - started
                    self.state.epoch, self.state.batches_done, self.state.partial = epoch + 1, 0, {}
                    self._end_epoch(row, board)
        finally:
            if board is not None:
                board.close()
        if self.info.main:
            self.skips.summary()
        return {
            "history": self.state.history,
            "best_metric": self.state.best_metric,
            "output_dir": str(self.output_dir),
            "skipped": dict(self.skips.reasons),
            "partial": dict(self.skips.partial),  # videos sampled from their decodable prefix
        }


def configure_logging(rank: int) -> None:
    """Rank 0 logs at INFO, the others warnings only; every rank says where it runs (``lsvit.distributed``).
    Lines of a multi-process run start with the rank and node."""
    level = logging.INFO if rank == 0 else logging.WARNING
    form = f"%(asctime)s {log_prefix()}%(name)s: %(message)s"
    logging.basicConfig(level=level, format=form, stream=sys.stdout, force=True)
    logging.getLogger("lsvit.distributed").setLevel(logging.INFO)


def train(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging(int(os.environ.get("RANK", "0")))
    trainer = Trainer(args)
    try:
        results = trainer.run()
    except Interrupted as stop:
        if trainer.info.main:
            print(stop.report(trainer, getattr(args, "command_line", None)), file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    finally:
        if trainer.info.enabled and dist.is_initialized():
            dist.destroy_process_group()
    if trainer.info.enabled:
        end_worker_process()
    return results


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    apply_recipe(parser, argv)
    args = parser.parse_args(argv)
    args.command_line = ["lsvit", "train", *argv]
    return args


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Parse ``argv`` and run; returns the results (for tests and notebooks)."""
    return train(parse(argv))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point: errors print one line (``--debug``: the traceback)."""
    run_guarded(train, parse(argv))


if __name__ == "__main__":
    main()
