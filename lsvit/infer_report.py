"""What ``lsvit infer`` writes and prints: per-video predictions, per-class accuracy, the confusion matrix."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch


def per_class_accuracy(confusion: torch.Tensor, classes: Sequence[str]) -> dict[str, Optional[float]]:
    totals = confusion.sum(dim=1)
    return {name: (float(confusion[i, i] / totals[i]) if totals[i] > 0 else None) for i, name in enumerate(classes)}


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(confusion.numpy(), cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    axis.set_xticklabels(classes, rotation=45, ha="right")
    axis.set_yticklabels(classes)
    peak = max(1, int(confusion.max()))
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                count = int(confusion[i, j])
                if count:
                    color = "white" if count > peak / 2 else "black"
                    axis.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_predictions(rows: list[dict[str, Any]], topk: int, path: Path) -> None:
    fields = ["video_id", "path", "label", "label_name", "pred", "pred_name", "correct"]
    for rank in range(1, topk + 1):
        fields += [f"top{rank}_class", f"top{rank}_prob"]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            flat = {k: row[k] for k in fields[:7]}
            for rank, entry in enumerate(row["topk"], start=1):
                flat[f"top{rank}_class"] = entry["class"]
                flat[f"top{rank}_prob"] = f"{entry['prob']:.6f}"
            writer.writerow(flat)


def print_summary(metrics: dict[str, Any], output_dir: Path) -> None:
    views = metrics["views"]
    print(
        f"scored {metrics['scored']} of {metrics['videos']} videos ({metrics['architecture']}; {views['clips']} clips "
        f"x {views['crops']} crops = {views['per_video']} views per video)"
    )
    if metrics["labeled"]:
        print(f"top-1 accuracy {metrics['top1']:.4f}   top-5 accuracy {metrics['top5']:.4f}")
        width = max(len(name) for name in metrics["per_class"])
        for name, accuracy in metrics["per_class"].items():
            print(f"  {name:<{width}}  {'-' if accuracy is None else f'{accuracy:.3f}'}")
    if metrics["skipped"]:
        print(f"skipped {len(metrics['skipped'])} videos:")
        for entry in metrics["skipped"]:
            print(f"  {entry['path']}: {entry['reason']}")
    print(f"outputs in {output_dir}{os.sep}")
