"""Multi-view testing: each video scored on ``num_clips`` temporal clips x ``num_crops`` spatial crops, softmax
averaged (the protocol of TSN, SlowFast, VideoMAE and mmaction2's test pipelines).

Temporal clips: the video is cut into ``num_frames`` equal segments (TSN sampling, as in training); clip ``k`` of
``N`` takes from every segment the frame at ``(k + 1/2) / N`` of its length, so the clips tile each segment
uniformly. ``N = 1`` is the single-view evaluation (segment centres).
Spatial crops: 1 = resize the shorter side to ``resize_size`` and take the centre ``image_size`` crop (the
single-view evaluation); 3 = resize the shorter side to ``image_size`` and take three ``image_size`` squares
along the longer side (start, centre, end; mmaction2's ThreeCrop), so together they cover the whole frame.

The frames of all clips are decoded in one pass (lsvit.decode: only those frames, resized while decoding) and the
views stay uint8; :func:`view_probabilities` hands them to the model as uint8 with mean and std, as training does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lsvit.data import ClipTransform, VideoRecord, guarded_item, resize_uint8
from lsvit.decode import VideoError, read_clip, resolve_decoder

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
    """``dataset[i]["video"]``: ``(num_clips * num_crops, T, C, S, S)`` uint8 (clip-major), or None with ``error``;
    ``partial`` as in :class:`lsvit.data.VideoClipDataset`. ``decoder``: ``auto``, ``torchcodec`` or ``pyav``."""

    def __init__(
        self,
        records: Sequence[VideoRecord],
        classes: Sequence[str],
        num_frames: int,
        transform: ClipTransform,
        num_clips: int = 1,
        num_crops: int = 1,
        decoder: str = "auto",
    ) -> None:
        if num_clips < 1:
            raise ValueError(f"num_clips={num_clips} must be >= 1")
        if num_crops not in CROP_CHOICES:
            raise ValueError(f"num_crops={num_crops} must be one of {CROP_CHOICES}")
        self.records, self.classes = list(records), list(classes)
        self.num_frames, self.transform = num_frames, transform
        self.num_clips, self.num_crops = num_clips, num_crops
        self.decoder = resolve_decoder(decoder)  # once, so an explicit choice that cannot load fails here

    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:  # evaluation: no randomness
        pass

    def load_views(self, index: int) -> tuple[Tensor, Optional[str]]:
        """The views, uint8, and the partial-decode note (None for a fully decodable video)."""
        record = self.records[index]

        def choose(available: int) -> list[int]:  # every clip's frames, clip-major, decoded together
            n = self.num_clips
            return [i for k in range(n) for i in clip_indices(available, self.num_frames, k, n)]

        # One crop: the single-view evaluation (shorter side resize_size, centre crop); three: shorter side = crop.
        shorter = self.transform.resize_size if self.num_crops == 1 else self.transform.image_size
        clip = read_clip(record.path, choose, self.decoder, shorter, record.frames)
        frames = clip.frames.reshape(self.num_clips, self.num_frames, *clip.frames.shape[1:])  # (N, T, H, W, 3)
        views = []
        for pixels in frames:
            if self.num_crops == 1:
                views.append(self.transform.crop_clip(pixels, None))  # centre crop, uint8 (T, C, S, S)
                continue
            video = pixels.permute(0, 3, 1, 2)  # (T, C, H, W)
            video = resize_uint8(video, self.transform.image_size)  # a no-op when the decoder resized
            views += [crop.contiguous() for crop in three_crops(video, self.transform.image_size)]
        return torch.stack(views), clip.partial

    def __getitem__(self, index: int) -> dict[str, Any]:
        return guarded_item(self.records[index], index, lambda: self.load_views(index))


def view_probabilities(
    model: torch.nn.Module,
    videos: Tensor,
    chunk: int,
    device: torch.device,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """uint8 ``(B, V, T, C, S, S)`` -> ``(B, classes)`` softmax averaged over the V views; ``chunk`` clips per
    forward, each normalized with ``mean`` / ``std`` by the model's input op (the uint8 clip goes to ``device``)."""
    b, v = videos.shape[:2]
    flat = videos.flatten(0, 1)
    probs = [
        model(flat[i : i + chunk].to(device, non_blocking=True), mean=mean, std=std).float().softmax(dim=1)
        for i in range(0, len(flat), chunk)
    ]
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
