"""What a training run records: ``log.csv``, ``curves.png`` and, with ``--tensorboard``, TensorBoard events.

Training and validation loss are computed with the same label smoothing (``val_loss``), so the two curves are
comparable; ``val_nll`` is the plain cross-entropy. With mixup / cutmix the training loss is on mixed clips and
soft targets: the plot labels say which terms each curve includes.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("lsvit.train")

CSV_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_nll",
    "val_top1",
    "val_top5",
    "val_ema_top1",
    "val_views",
    "train_skipped",
    "val_skipped",
    "epoch_seconds",
)

# history key -> TensorBoard tag
TENSORBOARD_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_nll": "loss/val_nll",
    "train_top1": "top1/train",
    "val_top1": "top1/val",
    "val_top5": "top5/val",
    "val_ema_top1": "top1/val_ema",
    "lr": "lr",
    "epoch_seconds": "time/epoch_seconds",
}


def loss_label(args) -> str:
    """What the training objective includes, for the plot legend and the log."""
    terms = []
    if args.label_smoothing:
        terms.append(f"label smoothing {args.label_smoothing:g}")
    if getattr(args, "mixup", 0) or getattr(args, "cutmix", 0):
        terms.append(f"mixup {args.mixup:g} / cutmix {args.cutmix:g}")
    return ", ".join(terms) if terms else "plain cross-entropy"


def write_csv(history: list[dict[str, Any]], path: Path) -> None:
    temp = path.with_suffix(".csv.tmp")
    with temp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    os.replace(temp, path)


def plot_history(history: list[dict[str, Any]], path: Path, loss_terms: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    suffix = f" ({loss_terms})" if loss_terms else ""
    loss_axis.plot(epochs, [row["train_loss"] for row in history], "o-", label=f"train{suffix}")
    acc_axis.plot(epochs, [row["train_top1"] for row in history], "o-", label="train top-1")
    val_rows = [row for row in history if row.get("val_loss") is not None]
    if val_rows:
        val_epochs = [r["epoch"] for r in val_rows]
        smoothing = loss_terms.split(",")[0] if "smoothing" in loss_terms else ""
        loss_axis.plot(val_epochs, [r["val_loss"] for r in val_rows], "s-", label=f"val ({smoothing or 'plain'})")
        acc_axis.plot(val_epochs, [r["val_top1"] for r in val_rows], "s-", label="val top-1")
        acc_axis.plot(val_epochs, [r["val_top5"] for r in val_rows], "^--", label="val top-5")
        if any(r.get("val_ema_top1") is not None for r in val_rows):
            acc_axis.plot(val_epochs, [r.get("val_ema_top1") for r in val_rows], "d:", label="val top-1 (EMA)")
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


class TensorBoardLog:
    """Per-epoch scalars as TensorBoard event files in the run folder (next to log.csv)."""

    def __init__(self, output_dir: Path, loss_terms: str, resume_epoch: Optional[int] = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after the checkpoint it is resumed from
        self.writer = SummaryWriter(log_dir=str(output_dir), purge_step=resume_epoch)
        self.writer.add_text("loss terms", f"train and val loss: {loss_terms}; loss/val_nll: plain cross-entropy")

    def epoch(self, row: dict[str, Any]) -> None:
        for key, tag in TENSORBOARD_TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def vars_for_record(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}


def start_run_log(trainer) -> Optional[TensorBoardLog]:
    """config.json, the run's first log line; the TensorBoard writer when ``--tensorboard``."""
    config, args = trainer.config, trainer.args
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    (trainer.output_dir / "config.json").write_text(
        json.dumps({"model": config.model_dump(), "train": vars_for_record(args)}, indent=2)
    )
    log.info(
        "model: %s patch embedding%s, %d frames, %.2fM parameters; %d processes on %s; amp %s; loss: %s",
        "3D" if config.use_3d_patch_embed else "2D",
        f" (tubelet {config.tubelet_size})" if config.use_3d_patch_embed else "",
        config.num_frames,
        sum(p.numel() for p in trainer.model.parameters()) / 1e6,
        trainer.info.world,
        trainer.device,
        trainer.amp or "off",
        loss_label(args),
    )
    if not getattr(args, "tensorboard", False):
        return None
    return TensorBoardLog(trainer.output_dir, loss_label(args), trainer.state.epoch if trainer.resume_from else None)


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    val = "no validation split"
    if row["val_loss"] is not None:
        val = f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f}"
        if row.get("val_views", 1) > 1:
            val += f" ({row['val_views']} views)"
        if row.get("val_ema_top1") is not None:
            val += f" (EMA top-1 {row['val_ema_top1']:.3f})"
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.3f} | {val} | "
        f"skipped videos: {row['train_skipped']} train, {row['val_skipped']} val | {row['epoch_seconds']:.1f}s"
    )
