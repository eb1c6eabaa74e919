"""Multi-view testing: each video scored on ``num_clips`` temporal clips x ``num_crops`` spatial crops, softmax
averaged (the protocol of TSN, SlowFast, VideoMAE and mmaction2's test pipelines).

Temporal clips: the video is cut into ``num_frames`` equal segments (TSN sampling, as in training); clip ``k`` of
``N`` takes from every segment the frame at ``(k + 1/2) / N`` of its length, so the clips tile each segment
uniformly. ``N = 1`` is the single-view evaluation (segment centres).
Spatial crops: 1 = resize the shorter side to ``resize_size`` and take the centre ``image_size`` crop (the
single-view evaluation); 3 = resize the shorter side to ``image_size`` and take three ``image_size`` squares
along the longer side (start, centre, end; mmaction2's ThreeCrop), so together they cover the whole frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lsvit.data import ClipTransform, VideoError, VideoRecord, decode_frames, frames_to_rgb, resize_shorter_side

CROP_CHOICES = (1, 3)


def clip_indices(num_available: int, num_frames: int, clip: int, num_clips: int) -> list[int]:
    """Frame indices of temporal clip ``clip`` of ``num_clips`` (segment sampling; see the module docstring)."""
    if num_available < num_frames:
        raise VideoError(f"too short: {num_available} decodable frames, need num_frames={num_frames}")
    segment = num_available / num_frames
    positions = np.arange(num_frames) * segment + segment * (clip + 0.5) / num_clips
    return [min(int(p), num_available - 1) for p in positions]


def three_crops(clip: Tensor, size: int) -> list[Tensor]:
    """``(T, C, H, W)`` with shorter side ``size`` -> three ``size x size`` crops along the longer side."""
    height, width = clip.shape[-2:]
    if width >= height:
        starts = [0, (width - size) // 2, width - size]
        return [clip[..., :size, left : left + size] for left in starts]
    starts = [0, (height - size) // 2, height - size]
    return [clip[..., top : top + size, :size] for top in starts]


class MultiViewDataset(Dataset):
    """``dataset[i]["video"]``: ``(num_clips * num_crops, T, C, S, S)`` float32 (clip-major), or None with ``error``."""

    def __init__(
        self,
        records: Sequence[VideoRecord],
        classes: Sequence[str],
        num_frames: int,
        transform: ClipTransform,
        num_clips: int = 1,
        num_crops: int = 1,
    ) -> None:
        if num_clips < 1:
            raise ValueError(f"num_clips={num_clips} must be >= 1")
        if num_crops not in CROP_CHOICES:
            raise ValueError(f"num_crops={num_crops} must be one of {CROP_CHOICES}")
        self.records, self.classes = list(records), list(classes)
        self.num_frames, self.transform = num_frames, transform
        self.num_clips, self.num_crops = num_clips, num_crops

    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:  # evaluation: no randomness
        pass

    def load_views(self, index: int) -> Tensor:
        frames = decode_frames(self.records[index].path)
        views = []
        for clip in range(self.num_clips):
            chosen = clip_indices(len(frames), self.num_frames, clip, self.num_clips)
            pixels = frames_to_rgb([frames[i] for i in chosen])  # (T, H, W, 3) uint8
            if self.num_crops == 1:
                views.append(self.transform(pixels, None))  # resize + centre crop + normalize
                continue
            video = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
            video = resize_shorter_side(video, self.transform.image_size)
            mean = torch.tensor(self.transform.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.transform.std).view(1, -1, 1, 1)
            views += [((crop - mean) / std).contiguous() for crop in three_crops(video, self.transform.image_size)]
        return torch.stack(views)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        item = {"video": None, "label": record.label, "index": index, "path": str(record.path), "error": None}
        try:
            item["video"] = self.load_views(index)
        except VideoError as error:
            item["error"] = str(error)
        except Exception as error:  # noqa: BLE001  (a bad file must not stop the run; the reason is reported)
            item["error"] = f"unreadable: {type(error).__name__}: {error}"
        return item


def view_probabilities(model: torch.nn.Module, videos: Tensor, chunk: int, device: torch.device) -> Tensor:
    """``(B, V, T, C, S, S)`` -> ``(B, classes)`` softmax averaged over the V views; ``chunk`` clips per forward."""
    b, v = videos.shape[:2]
    flat = videos.flatten(0, 1)
    probs = [model(flat[i : i + chunk].to(device)).float().softmax(dim=1) for i in range(0, len(flat), chunk)]
    return torch.cat(probs).view(b, v, -1).mean(dim=1)


def video_id(path: str, root: Optional[str]) -> str:
    """A stable per-video id: the path relative to the data root (or the file name), without the extension."""
    from pathlib import Path

    file = Path(path)
    try:
        relative = file.relative_to(root) if root else Path(file.name)
    except ValueError:
        relative = Path(file.name)
    return str(relative.with_suffix(""))
