"""Score a trained checkpoint on videos: ``python -m lsvit.infer --checkpoint best.pt --data_root DIR``.

The checkpoint's own ModelConfig decides the architecture (2D or 3D patch embedding, tubelet, patch size ...);
``APPCONFIG__*`` environment variables are ignored, except that an explicit patch-embedding type, tubelet or
patch size (flag or environment) that contradicts the checkpoint stops the run with a message saying what the
checkpoint was trained with. Checkpoints are read with ``torch.load(weights_only=True)``.

Writes to ``--output_dir``: ``predictions.csv`` and ``predictions.json`` (top-k classes with probabilities per
video), ``metrics.json`` (top-1/top-5 and per-class accuracy when labels are known, skipped videos), and
``confusion_matrix.png``. Videos that cannot be read or are too short are reported and left out of the scores.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lsvit import checkpoint as ckpt
from lsvit import data_guards, formats
from lsvit.data import ClipTransform, SkipLog, VideoClipDataset, collate_clips, to_model_input
from lsvit.errors import run_reporting_errors
from lsvit.options import HelpFormatter, add_dashed, add_model_arguments, env_settings

log = logging.getLogger("lsvit.infer")

# What fixes the weights' shapes: these may be stated (to check) but never changed at inference.
ARCHITECTURE_CHECKED = ("use_3d_patch_embed", "tubelet_size", "patch_size")
TRUE_WORDS = ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsvit infer",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_infer_arguments(parser)
    return parser


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    add_dashed(parser, "checkpoint", required=True, help="a last.pt / best.pt written by lsvit train")
    add_dashed(
        parser,
        "data_root",
        required=True,
        help="videos to score: a folder of class sub-folders (labels from folder names), an annotation list "
        "file ('relative/path label' lines), a folder of unlabeled videos, one video file, or a dataset in any "
        "--data_format (with --split)",
    )
    add_dashed(
        parser,
        "split",
        default=None,
        help="score <data_root>/<split>.txt or <data_root>/<split>/ (e.g. val, test) instead of data_root itself",
    )
    add_dashed(parser, "num_frames", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    add_dashed(parser, "batch_size", type=int, default=8, help="clips per forward pass")
    add_dashed(parser, "num_workers", type=int, default=2, help="DataLoader worker processes")
    add_dashed(parser, "topk", type=int, default=5, help="classes listed per video in the predictions files")
    add_dashed(parser, "output_dir", default=None, help="where outputs go (default: <checkpoint folder>/infer)")
    add_dashed(parser, "device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_dashed(parser, "amp", choices=("auto", "bf16", "off"), default="auto", help="bf16 autocast (auto: on GPU)")
    add_dashed(parser, "no_progress", action="store_true", help="no tqdm progress bar")
    formats.add_data_arguments(parser.add_argument_group("data"), training=False)
    checks = parser.add_argument_group(
        "architecture checks (optional; the checkpoint decides, these only have to agree with it)"
    )
    add_model_arguments(checks, ARCHITECTURE_CHECKED)
    add_model_arguments(parser, ["kernel_backend"])


# ------------------------------------------------------------------------------------------------ model


def _parse_env(name: str, text: str) -> Any:
    if name == "use_3d_patch_embed":
        return text.strip().lower() in TRUE_WORDS
    return int(text)


def architecture_conflicts(config, args: argparse.Namespace) -> list[str]:
    """Explicit settings (flag first, else APPCONFIG__ env) that contradict the checkpoint's config."""
    stated: dict[str, tuple[Any, str]] = {}
    for name, text in env_settings(ARCHITECTURE_CHECKED).items():
        try:
            stated[name] = (_parse_env(name, text), f"env APPCONFIG__{name.upper()}={text}")
        except ValueError:
            stated[name] = (text, f"env APPCONFIG__{name.upper()}={text}")
    for name in ARCHITECTURE_CHECKED:
        value = getattr(args, name, None)
        if value is not None:
            stated[name] = (value, f"--{name} {value}")
    return [source for name, (value, source) in stated.items() if value != getattr(config, name)]


def describe_patching(config) -> str:
    if config.use_3d_patch_embed:
        return f"3D patch embedding, tubelet_size={config.tubelet_size}, patch_size={config.patch_size}"
    return f"2D patch embedding (use_3d_patch_embed=False), patch_size={config.patch_size}"


def load_model(checkpoint: dict[str, Any], args: argparse.Namespace, device: torch.device):
    """The checkpoint's model, built from its own config (environment ignored) with its weights."""
    from lsvit.config import ModelConfig
    from lsvit.model import LSViTForAction

    config = ModelConfig.from_checkpoint_dict(checkpoint["model_config"])
    conflicts = architecture_conflicts(config, args)
    if conflicts:
        raise SystemExit(
            f"error: {args.checkpoint} was trained with {describe_patching(config)}; you asked for "
            f"{', '.join(conflicts)}. The checkpoint decides the architecture: drop those settings (unset the "
            f"environment variables), or use a checkpoint trained that way."
        )
    if args.kernel_backend is not None:
        config = config.model_copy(update={"kernel_backend": args.kernel_backend})
    trained_frames = checkpoint["data"]["num_frames"]
    num_frames = args.num_frames or trained_frames
    try:
        model = LSViTForAction(config, num_frames=num_frames)
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, ValueError) as error:
        raise SystemExit(
            f"error: cannot run {args.checkpoint} (trained with num_frames={trained_frames}, "
            f"{describe_patching(config)}) on num_frames={num_frames}: {error}"
        ) from None
    return model.to(device).eval(), config, num_frames


# ------------------------------------------------------------------------------------------------ scoring


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
    fields = ["path", "label", "label_name", "pred", "pred_name", "correct"]
    for rank in range(1, topk + 1):
        fields += [f"top{rank}_class", f"top{rank}_prob"]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            flat = {k: row[k] for k in fields[:6]}
            for rank, entry in enumerate(row["topk"], start=1):
                flat[f"top{rank}_class"] = entry["class"]
                flat[f"top{rank}_prob"] = f"{entry['prob']:.6f}"
            writer.writerow(flat)


def infer(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = ckpt.load_checkpoint(args.checkpoint, map_location="cpu")
    model, config, num_frames = load_model(checkpoint, args, device)
    classes = list(checkpoint["classes"])
    data_info = checkpoint["data"]
    log.info(
        "checkpoint %s: %s, %d frames, %d classes", args.checkpoint, describe_patching(config), num_frames, len(classes)
    )

    split = formats.inference_split(args, classes)
    records, source = split.records, split.source
    transform = ClipTransform(
        data_info["image_size"], data_info["resize_size"], train=False, mean=tuple(data_info["mean"]),
        std=tuple(data_info["std"]),
    )  # fmt: skip
    data_guards.check_labels(records, classes, str(source))
    dataset = VideoClipDataset(records, classes, num_frames, transform, decoder=args.decoder)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_clips, shuffle=False,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    use_amp = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    topk = min(args.topk, len(classes))
    skips = SkipLog(log)
    rows: list[dict[str, Any]] = []
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.int64)
    top1 = top5 = labeled = 0
    with torch.no_grad(), autocast:
        for batch in tqdm(loader, desc="infer", disable=args.no_progress, dynamic_ncols=True):
            skips.add(batch["skipped"], batch["partial"])
            if batch["video"] is None:
                continue
            video = to_model_input(batch["video"], device, data_info["mean"], data_info["std"])
            probs = model(video).float().softmax(dim=1).cpu()
            best = probs.topk(max(topk, min(5, len(classes))), dim=1)
            labels = batch["label"].tolist()
            for path, label, values, indices in zip(batch["path"], labels, best.values, best.indices, strict=True):
                pred = int(indices[0])
                row = {
                    "path": path,
                    "label": label if label >= 0 else None,
                    "label_name": classes[label] if label >= 0 else None,
                    "pred": pred,
                    "pred_name": classes[pred],
                    "correct": (pred == label) if label >= 0 else None,
                    "topk": [
                        {"class": classes[int(i)], "prob": float(v)}
                        for v, i in zip(values[:topk], indices[:topk], strict=True)
                    ],
                }
                rows.append(row)
                if label >= 0:
                    labeled += 1
                    top1 += pred == label
                    top5 += label in indices[:5].tolist()
                    confusion[label, pred] += 1

    output_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent / "infer"
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "architecture": describe_patching(config),
        "num_frames": num_frames,
        "videos": len(dataset),
        "scored": len(rows),
        "labeled": labeled,
        "top1": top1 / labeled if labeled else None,
        "top5": top5 / labeled if labeled else None,
        "per_class": per_class_accuracy(confusion, classes) if labeled else {},
        "confusion": confusion.tolist() if labeled else [],
        "skipped": [{"path": p, "reason": r} for p, r in sorted(skips.reasons.items())],
        "partial": [{"path": p, "note": n} for p, n in sorted(skips.partial.items())],
    }
    write_predictions(rows, topk, output_dir / "predictions.csv")
    (output_dir / "predictions.json").write_text(json.dumps({"classes": classes, "predictions": rows}, indent=1))
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if labeled:
        plot_confusion(confusion, classes, output_dir / "confusion_matrix.png", f"top-1 {metrics['top1']:.3f}")
    print_summary(metrics, output_dir)
    data_guards.require_scored(len(rows), len(dataset), skips.reasons)
    return metrics


def print_summary(metrics: dict[str, Any], output_dir: Path) -> None:
    print(f"scored {metrics['scored']} of {metrics['videos']} videos ({metrics['architecture']})")
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


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Parse ``argv`` and run; returns the results (for tests and notebooks)."""
    return infer(build_parser().parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point: exit status 0, or 2 with one ``error:`` line for a data or usage error."""
    run_reporting_errors(run, argv)


if __name__ == "__main__":
    main()
