"""No silent empty or wrong runs: checks that stop training or inference when the data cannot give a real result.

- :func:`preflight` before training: every listed path is checked with ``stat`` (missing, FIFO, device: never
  opened) and a sample of the videos is probed (container header, frame count against ``num_frames``). No
  usable video, or more missing/non-regular paths than ``max_skip_fraction``, stops the run before it starts.
- :func:`check_epoch` (:func:`check_epoch_row` for a training log row) at the end of every epoch, before any
  checkpoint is written: no usable clip, or more than ``max_skip_fraction`` of the epoch's videos skipped, stops
  the run with the reasons.
- :func:`any_clips` decides whether an optimizer step has any data behind it (across ranks): a step whose
  micro-batches all failed must change no weight (AdamW's weight decay would still move them).
- :func:`check_labels` and :func:`require_scored` for inference.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist

from lsvit.decode import DECODERS, VideoError, file_kind, probe
from lsvit.errors import DataError

DEFAULT_MAX_SKIP_FRACTION = 0.05
PROBE_SAMPLE = 32  # videos whose headers the pre-flight check opens


def add_run_guard_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--max_skip_fraction`` (training)."""
    parser.add_argument(
        "--max_skip_fraction",
        "--max-skip-fraction",
        dest="max_skip_fraction",
        type=float,
        default=DEFAULT_MAX_SKIP_FRACTION,
        help="stop (non-zero exit, no checkpoint) when more than this fraction of an epoch's training or "
        "validation videos is skipped as unreadable, too short, missing...; 0 = none may be skipped, 1 = never stop "
        "for skips (a run with no usable video always stops)",
    )


def reason_summary(reasons: Mapping[str, str], limit: int = 3) -> str:
    """``"12 too short, 3 unreadable; e.g. a.mp4: too short: 3 frames, ..."``: counts by kind, then examples."""
    if not reasons:
        return "no reasons recorded"
    kinds = Counter(reason.split(":")[0] for reason in reasons.values())
    counts = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    examples = "; ".join(f"{path}: {reason}" for path, reason in list(reasons.items())[:limit])
    return f"{counts}; e.g. {examples}"


def preflight(
    records: Sequence, num_frames: int, max_skip_fraction: float, decoder: str = "auto", name: str = "training"
) -> None:
    """Raise :class:`DataError` before any work when the listed videos cannot make a run (see module doc)."""
    if not 0 <= max_skip_fraction <= 1:
        raise DataError(f"--max_skip_fraction {max_skip_fraction} must be between 0 and 1")
    if decoder not in DECODERS:
        raise DataError(f"--decoder {decoder} is not one of {DECODERS}")
    if name == "training" and not any(record.label >= 0 for record in records):
        raise DataError(
            f"the {len(records)} training videos have no labels: training needs class folders or a labeled list "
            f"(a single video or a folder of loose videos can only be scored with lsvit infer)"
        )
    problems: dict[str, str] = {}
    present = []
    for record in records:
        kind = file_kind(record.path)
        if kind is None:
            present.append(record)
        else:
            problems[str(record.path)] = "missing" if kind == "missing" else f"not a regular file: {kind}"
    total = len(records)
    if not present:
        raise DataError(
            f"no usable {name} video: all {total} listed paths are missing or not regular files "
            f"({reason_summary(problems)}); check --data_root, --video_root and --data_format"
        )
    if len(problems) > max_skip_fraction * total:
        raise DataError(
            f"{len(problems)} of {total} {name} videos ({len(problems) / total:.1%}) are missing or not regular "
            f"files, more than --max_skip_fraction {max_skip_fraction} ({reason_summary(problems)}); fix the paths "
            f"(--video_root) or raise --max_skip_fraction"
        )
    sample = random.Random(0).sample(present, min(PROBE_SAMPLE, len(present)))
    failures: dict[str, str] = {}
    for record in sample:
        try:
            frames = probe(record.path, decoder, record.frames).frames
            if frames < num_frames:
                failures[str(record.path)] = f"too short: {frames} frames, need num_frames={num_frames}"
        except VideoError as error:
            failures[str(record.path)] = str(error)
    if len(failures) == len(sample):
        raise DataError(
            f"no usable {name} video among the {len(sample)} probed of {total} ({reason_summary(failures)}); "
            f"check --data_format, --video_root and --num_frames (lsvit data check reports every video)"
        )


def check_epoch(
    split: str,
    used: int,
    skipped: int,
    max_skip_fraction: float,
    reasons: Mapping[str, str],
    epoch: Optional[int] = None,
) -> None:
    """Raise :class:`DataError` when an epoch's ``split`` pass used no clip or skipped too many."""
    total = used + skipped
    where = f" in epoch {epoch}" if epoch is not None else ""
    if total and not used:
        raise DataError(
            f"no usable {split} video{where}: all {skipped} were skipped ({reason_summary(reasons)}); "
            f"nothing was saved. lsvit data check lists every problem"
        )
    if total and skipped > max_skip_fraction * total:
        raise DataError(
            f"{skipped} of {total} {split} videos{where} ({skipped / total:.1%}) were skipped, more than "
            f"--max_skip_fraction {max_skip_fraction} ({reason_summary(reasons)}); fix or drop them (lsvit data check "
            f"--write_clean_list) or raise --max_skip_fraction"
        )


def check_epoch_row(row: Mapping[str, Any], max_skip_fraction: float, reasons: Mapping[str, str]) -> None:
    """:func:`check_epoch` for a training log row: its training pass, and its validation pass when there is one."""
    epoch = row["epoch"]
    check_epoch("training", row["train_clips"], row["train_skipped"], max_skip_fraction, reasons, epoch)
    if row.get("val_clips") is not None:
        check_epoch("validation", row["val_clips"], row["val_skipped"], max_skip_fraction, reasons, epoch)


def any_clips(count: int, distributed: bool, device: torch.device) -> bool:
    """Whether any rank trained on at least one clip since the last optimizer step."""
    if not distributed:
        return count > 0
    total = torch.tensor([float(count)], device=device)
    dist.all_reduce(total)
    return bool(total.item() > 0)


def check_labels(records: Sequence, classes: Sequence[str], source: str) -> None:
    """Every known label must index ``classes`` (the checkpoint's); -1 means unlabeled."""
    bad = [(record.path, record.label) for record in records if not -1 <= record.label < len(classes)]
    if bad:
        path, label = bad[0]
        raise DataError(
            f"{len(bad)} videos in {source} have labels outside the checkpoint's {len(classes)} classes "
            f"(0..{len(classes) - 1}), e.g. {path} with label {label}; use the class list the model was trained with"
        )


def require_scored(scored: int, videos: int, reasons: Mapping[str, str]) -> None:
    """Inference that scored nothing is a failure, not an empty success."""
    if videos and not scored:
        raise DataError(f"scored 0 of {videos} videos: every one was skipped ({reason_summary(reasons)})")
    if not videos:
        raise DataError("no videos to score")
