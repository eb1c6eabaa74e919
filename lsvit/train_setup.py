"""Building a training run: the checkpoint to resume, the model config, the datasets and their sampler."""

from __future__ import annotations

import argparse
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lsvit import checkpoint as ckpt
from lsvit import data_guards, formats
from lsvit.data import IMAGENET_MEAN, IMAGENET_STD, ClipTransform, VideoClipDataset, default_resize_size, read_metadata
from lsvit.distributed import Dist, launch_id, restart_count
from lsvit.options import build_config, model_overrides
from lsvit.samplers import ResumableSampler

log = logging.getLogger("lsvit.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def open_resume(args: argparse.Namespace, output_dir: Path, info: Dist) -> tuple[Optional[Path], Optional[dict]]:
    """The checkpoint to continue from; ``auto`` falls back to previous.pt / best.pt when last.pt is damaged.

    A worker group that torchrun restarted (``--max_restarts``) continues from the newest checkpoint this launch
    wrote in ``output_dir``, whatever ``--resume`` says; before its first save it starts as the first attempt did.
    """
    if restart_count() > 0:
        path, checkpoint, _ = ckpt.find_resumable(output_dir)
        if checkpoint is not None and checkpoint.get("launch_id") == launch_id():
            if info.main:
                log.warning("torchrun restart %d: continuing from %s (step %d)", restart_count(), path,
                            checkpoint["step"])  # fmt: skip
            return path, checkpoint
    if not args.resume:
        return None, None
    if args.resume != "auto":
        path = Path(args.resume)
        try:
            return path, ckpt.load_checkpoint(path, required=ckpt.RESUME_KEYS, consolidate=False)
        except ckpt.CheckpointError as error:
            hint = ckpt.alternatives_hint(path) if path.parent.is_dir() else ""
            raise ckpt.CheckpointError(f"--resume: {error}{'; ' + hint if hint else ''}") from None
    path, checkpoint, problems = ckpt.find_resumable(output_dir)
    if path is None and problems:
        raise ckpt.CheckpointError(
            f"--resume auto: no valid checkpoint in {output_dir} ({' | '.join(problems)}); move the damaged files "
            f"away or use another --output_dir"
        )
    if info.main:
        for problem in problems:
            log.warning("--resume auto: %s; skipped", problem)
        if problems and path is not None:
            log.warning("--resume auto: continuing from %s (step %d) instead", path, checkpoint["step"])
    return path, checkpoint


def resolve_config(args: argparse.Namespace, resumed: Optional[dict[str, Any]], resume_from: Optional[Path]):
    """The model config: from flags / environment for a new run, the checkpoint's own when resuming."""
    from lsvit.config import ModelConfig

    overrides = model_overrides(args)
    if resumed is None:
        return build_config(overrides)
    config = ModelConfig.from_checkpoint_dict(resumed["model_config"])
    conflicts = {k: v for k, v in overrides.items() if getattr(config, k) != v and k != "num_classes"}
    if conflicts:
        raise ValueError(
            f"--resume {resume_from}: the checkpoint was trained with "
            f"{ {k: getattr(config, k) for k in conflicts} }, which conflicts with {conflicts}; drop those flags "
            f"(a resumed run keeps the checkpoint's architecture) or start a new run"
        )
    return config


def flip_enabled(setting: str, metadata: dict[str, Any]) -> bool:
    if setting == "auto":
        return not metadata.get("direction_sensitive", False)
    return setting == "on"


@dataclass
class TrainData:
    train_set: VideoClipDataset
    val_set: Optional[VideoClipDataset]
    classes: list[str]
    sampler: ResumableSampler
    record: dict[str, Any]  # the checkpoint's "data" entry: how clips are made
    horizontal_flip: bool


def build_transforms(args: argparse.Namespace, config, metadata: dict[str, Any]):
    """(training transform, evaluation transform, resize size, horizontal flip on) from the flags."""
    horizontal_flip = flip_enabled(args.horizontal_flip, metadata)
    resize = args.resize_size or default_resize_size(config.image_size)
    train_transform = ClipTransform(config.image_size, resize, train=True, horizontal_flip=horizontal_flip)
    if args.rrc_scale is not None or args.randaugment is not None:
        from lsvit.augment import VideoAugment

        train_transform = VideoAugment(
            config.image_size,
            resize,
            horizontal_flip,
            rrc_scale=tuple(args.rrc_scale) if args.rrc_scale else None,
            rrc_ratio=tuple(args.rrc_ratio),
            randaugment=tuple(args.randaugment) if args.randaugment else None,
        )
    eval_transform = ClipTransform(config.image_size, resize, train=False)
    return train_transform, eval_transform, resize, horizontal_flip


def data_record(config, resize: int, horizontal_flip: bool) -> dict[str, Any]:
    """The checkpoint's "data" entry: how clips are made."""
    return {
        "num_frames": config.num_frames,
        "image_size": config.image_size,
        "resize_size": resize,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "horizontal_flip": horizontal_flip,
    }


def check_resumed_classes(resumed: Optional[dict[str, Any]], classes) -> None:
    if resumed is not None and list(resumed["classes"]) != list(classes):
        raise ValueError(f"--resume: the checkpoint's classes {resumed['classes']} differ from the dataset's {classes}")


def build_data(args: argparse.Namespace, config, info: Dist, resumed: Optional[dict[str, Any]]) -> TrainData:
    if config.num_frames is None:
        raise ValueError("num_frames is not set: pass --num_frames (e.g. --num_frames 16)")
    if getattr(args, "train_shards", None):
        from lsvit.shard_dataset import build_shard_data

        return build_shard_data(args, config, info, resumed)
    train_split, val_split = formats.training_splits(args)  # --data_format, --video_root, --split_number
    metadata = read_metadata(Path(args.data_root))
    train_transform, eval_transform, resize, horizontal_flip = build_transforms(args, config, metadata)
    train_set = VideoClipDataset(
        train_split.records, train_split.classes, config.num_frames, train_transform, args.seed, args.decoder
    )
    classes = train_set.classes
    check_resumed_classes(resumed, classes)
    val_set = None
    if val_split is not None:
        if args.val_num_clips > 1 or args.val_num_crops > 1:
            from lsvit.views import MultiViewDataset

            val_set = MultiViewDataset(val_split.records, classes, config.num_frames, eval_transform,
                                       args.val_num_clips, args.val_num_crops, args.decoder)  # fmt: skip
        else:
            val_set = VideoClipDataset(
                val_split.records, classes, config.num_frames, eval_transform, decoder=args.decoder
            )
    for dataset, name in ((train_set, "training"), (val_set, "validation")):
        if dataset is not None:  # no usable video, or too many missing: stop before any work
            data_guards.preflight(dataset.records, config.num_frames, args.max_skip_fraction, args.decoder, name)
    record = data_record(config, resize, horizontal_flip)
    sampler = ResumableSampler(train_set, info.world, info.rank, args.seed)
    if info.main:
        log.info(
            "data: %d training videos from %s, %s validation videos; %d classes; horizontal flip %s",
            len(train_set),
            train_split.source,
            len(val_set) if val_set is not None else "no",
            len(classes),
            "on" if horizontal_flip else "off",
        )
    return TrainData(train_set, val_set, list(classes), sampler, record, horizontal_flip)
