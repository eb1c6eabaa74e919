"""Score a trained checkpoint on videos: ``python -m lsvit.infer --checkpoint best.pt --data_root DIR``.

The checkpoint's own ModelConfig decides the architecture (2D or 3D patch embedding, tubelet, patch size ...);
``APPCONFIG__*`` environment variables are ignored, except that an explicit patch-embedding type, tubelet or
patch size (flag or environment) that contradicts the checkpoint stops the run with a message saying what the
checkpoint was trained with. Checkpoints are read with ``torch.load(weights_only=True)``.

``--num_clips N --num_crops 3`` scores every video on N temporal clips x 3 spatial crops and averages the softmax
(lsvit/views.py). ``--num_frames`` / ``--image_size`` other than the checkpoint's resample its positional tables.

Writes to ``--output_dir``: ``predictions.csv`` and ``predictions.json`` (per video: its id, top-k classes with
probabilities), ``metrics.json`` (top-1/top-5 and per-class accuracy when labels are known, the views per video,
skipped videos and those scored from a decodable prefix), and ``confusion_matrix.png``. Videos that cannot be read
or are too short are reported and left out of the scores; a run that scores none of its videos fails (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lsvit import checkpoint as ckpt
from lsvit import data_guards, formats
from lsvit.data import ClipTransform, SkipLog, collate_clips
from lsvit.errors import UserError, run_guarded
from lsvit.infer_report import per_class_accuracy, plot_confusion, print_summary, write_predictions
from lsvit.options import add_dashed, add_model_arguments, command_parser, env_settings
from lsvit.views import MultiViewDataset, video_id, view_probabilities

log = logging.getLogger("lsvit.infer")

# What fixes the weights' shapes: these may be stated (to check) but never changed at inference.
ARCHITECTURE_CHECKED = ("use_3d_patch_embed", "tubelet_size", "patch_size")


def build_parser() -> argparse.ArgumentParser:
    return command_parser("lsvit infer", __doc__, add_infer_arguments)


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
    add_dashed(
        parser,
        "num_frames",
        type=int,
        default=None,
        help="frames per clip (default: the checkpoint's); another count resamples the temporal embedding",
    )
    add_dashed(
        parser,
        "image_size",
        type=int,
        default=None,
        help="crop size in pixels (default: the checkpoint's); another size (a multiple of the patch size) "
        "resamples the positional grid",
    )
    add_dashed(parser, "batch_size", type=int, default=8, help="clips (views) per forward pass")
    add_dashed(
        parser,
        "num_clips",
        type=int,
        default=1,
        help="temporal clips per video, spread uniformly; softmax averaged over clips x crops (e.g. 4 or 5)",
    )
    add_dashed(
        parser,
        "num_crops",
        type=int,
        choices=(1, 3),
        default=1,
        help="spatial crops per clip: 1 = centre crop, 3 = three crops along the longer side (shorter side resized "
        "to the crop size)",
    )
    add_dashed(parser, "num_workers", type=int, default=2, help="DataLoader worker processes")
    add_dashed(parser, "topk", type=int, default=5, help="classes listed per video in the predictions files")
    add_dashed(parser, "output_dir", default=None, help="where outputs go (default: <checkpoint folder>/infer)")
    add_dashed(parser, "device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_dashed(parser, "amp", choices=("auto", "bf16", "off"), default="auto", help="bf16 autocast (auto: on GPU)")
    add_dashed(parser, "no_progress", action="store_true", help="no tqdm progress bar")
    add_dashed(
        parser,
        "weights",
        choices=("model", "ema"),
        default="model",
        help="which weights of the checkpoint: the trained ones, or their EMA (runs with --model_ema)",
    )
    formats.add_data_arguments(parser.add_argument_group("data"), training=False)
    checks = parser.add_argument_group(
        "architecture checks (optional; the checkpoint decides, these only have to agree with it)"
    )
    add_model_arguments(checks, ARCHITECTURE_CHECKED)
    add_model_arguments(parser, ["kernel_backend"])


# ------------------------------------------------------------------------------------------------ model


def _parse_env(name: str, text: str) -> Any:
    """The value pydantic-settings would give field ``name`` for the variable's ``text`` (ValueError if none)."""
    from pydantic import TypeAdapter

    from lsvit.config import ModelConfig

    return TypeAdapter(ModelConfig.model_fields[name].annotation).validate_python(text)


def architecture_conflicts(config, args: argparse.Namespace) -> list[str]:
    """Explicit settings (flag first, else APPCONFIG__ env) that contradict the checkpoint's config."""
    stated: dict[str, tuple[Any, str]] = {}
    for name, text in env_settings(ARCHITECTURE_CHECKED).items():
        try:
            stated[name] = (_parse_env(name, text), f"env APPCONFIG__{name.upper()}={text}")
        except ValueError:  # not a value of the field's type: contradicts whatever the checkpoint holds
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
        raise UserError(
            f"{args.checkpoint} was trained with {describe_patching(config)}; you asked for "
            f"{', '.join(conflicts)}. The checkpoint decides the architecture: drop those settings (unset the "
            f"environment variables), or use a checkpoint trained that way."
        )
    if args.kernel_backend is not None:
        config = ModelConfig(**{**config.model_dump(), "kernel_backend": args.kernel_backend})
    trained_frames = checkpoint["data"]["num_frames"]
    num_frames = args.num_frames or trained_frames
    image_size = args.image_size or checkpoint["data"]["image_size"]
    check_inference_shape(config, trained_frames, num_frames, image_size, args.checkpoint)
    model = LSViTForAction(config, num_frames=trained_frames)  # the trained tables; resampled per clip shape
    model.load_state_dict(checkpoint["model_ema" if args.weights == "ema" else "model"])
    resampled = []
    if num_frames != trained_frames:
        resampled.append(f"{trained_frames} -> {num_frames} frames")
    if image_size != config.image_size:
        grid = image_size // config.patch_size
        resampled.append(f"{config.grid_size}x{config.grid_size} -> {grid}x{grid} patch grid")
    if resampled:
        log.info("positional tables resampled: %s", ", ".join(resampled))
    return model.to(device).eval(), config, num_frames, image_size


def check_inference_shape(config, trained_frames: int, num_frames: int, image_size: int, name) -> None:
    """Clip shapes the model can resample its tables for; otherwise stop and name the values that work."""
    stride = config.temporal_stride
    if num_frames < 1 or num_frames % stride:
        below, above = max(stride, num_frames // stride * stride), (num_frames // stride + 1) * stride
        raise UserError(
            f"--num_frames {num_frames}: {name} uses {stride}-frame tubelets, so clips need a multiple of "
            f"{stride} frames (e.g. {below} or {above}; trained with {trained_frames})"
        )
    p = config.patch_size
    if image_size < p or image_size % p:
        raise UserError(
            f"--image_size {image_size} is not a multiple of the patch size {p}; use "
            f"{max(p, image_size // p * p)} or {(image_size // p + 1) * p} (trained with {config.image_size})"
        )


# ------------------------------------------------------------------------------------------------ scoring


def infer(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = ckpt.load_checkpoint(args.checkpoint, map_location="cpu")
    if args.weights == "ema" and "model_ema" not in checkpoint:
        raise UserError(f"--weights ema: {args.checkpoint} has no EMA weights (trained without --model_ema)")
    model, config, num_frames, image_size = load_model(checkpoint, args, device)
    classes = list(checkpoint["classes"])
    data_info = checkpoint["data"]
    log.info(
        "checkpoint %s: %s, %d frames, %d classes", args.checkpoint, describe_patching(config), num_frames, len(classes)
    )

    split = formats.inference_split(args, classes)  # labels matched to the checkpoint's classes by name
    records, source = split.records, split.source
    data_guards.check_labels(records, classes, str(source))
    resize = round(data_info["resize_size"] * image_size / data_info["image_size"])  # same crop ratio as training
    transform = ClipTransform(
        image_size, resize, train=False, mean=tuple(data_info["mean"]), std=tuple(data_info["std"])
    )
    dataset = MultiViewDataset(records, classes, num_frames, transform, args.num_clips, args.num_crops, args.decoder)
    videos_per_batch = max(1, args.batch_size // dataset.views)
    loader = DataLoader(
        dataset, batch_size=videos_per_batch, num_workers=args.num_workers, collate_fn=collate_clips, shuffle=False,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    if dataset.views > 1:
        log.info("multi-view testing: %d clips x %d crops = %d views per video", args.num_clips, args.num_crops,
                 dataset.views)  # fmt: skip
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
            probs = view_probabilities(model, batch["video"], args.batch_size, device, transform.mean, transform.std)
            probs = probs.cpu()
            best = probs.topk(max(topk, min(5, len(classes))), dim=1)
            labels = batch["label"].tolist()
            for path, label, values, indices in zip(batch["path"], labels, best.values, best.indices, strict=True):
                pred = int(indices[0])
                row = {
                    "video_id": video_id(path, args.data_root if Path(args.data_root).is_dir() else None),
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
        "image_size": image_size,
        "views": {"clips": args.num_clips, "crops": args.num_crops, "per_video": dataset.views},
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


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Parse ``argv`` and run; returns the results (for tests and notebooks)."""
    return infer(build_parser().parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point: errors print one line (``--debug``: the traceback)."""
    run_guarded(infer, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
