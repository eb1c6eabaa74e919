"""Video-consistent training augmentation: random-resized crop and RandAugment with one draw per clip.

torchvision.transforms.v2 applied to a ``tv_tensors.Video`` ``(T, C, H, W)`` draws its parameters once per call,
so every frame of a clip gets the same crop box, the same RandAugment operations and magnitudes, and the same flip:
motion between frames is kept (a per-frame draw would add motion that is not in the video). The draws come from a
torch generator seeded from the dataset's ``(seed, epoch, index)`` generator, so a clip's augmentation does not
depend on the worker or rank that loads it, and resumed runs repeat it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from lsvit.data import IMAGENET_MEAN, IMAGENET_STD, normalize_clip


@dataclass(frozen=True)
class VideoAugment:
    """uint8 frames ``(T, H, W, 3)`` -> augmented ``(T, 3, image_size, image_size)``: uint8 from :meth:`crop_clip`,
    normalized float32 from a call (the same interface as :class:`lsvit.data.ClipTransform`).

    The decoder already resizes the frames so the shorter side is ``resize_size``. ``rrc_scale`` None: a random
    ``image_size`` crop of them (the default pipeline); otherwise torchvision's RandomResizedCrop of them with this
    area range and ``rrc_ratio`` (as mmaction2's pipelines resize to 256 before RandomResizedCrop).
    ``randaugment`` ``(num_ops, magnitude)`` or None.
    """

    image_size: int
    resize_size: int
    horizontal_flip: bool
    rrc_scale: Optional[tuple[float, float]] = None
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    randaugment: Optional[tuple[int, int]] = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    train: bool = True  # the dataset draws a per-clip generator only for training transforms

    def pipeline(self):
        from torchvision.transforms import v2

        steps = []
        if self.rrc_scale is not None:
            steps.append(v2.RandomResizedCrop(self.image_size, scale=self.rrc_scale, ratio=self.rrc_ratio))
        else:
            steps += [v2.Resize(self.resize_size), v2.RandomCrop(self.image_size)]
        if self.randaugment is not None:
            steps.append(v2.RandAugment(num_ops=self.randaugment[0], magnitude=self.randaugment[1]))
        if self.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps)

    def crop_clip(self, frames: np.ndarray | torch.Tensor, rng: Optional[np.random.Generator]) -> torch.Tensor:
        """uint8 ``(T, 3, image_size, image_size)`` (what the data loader ships; normalized on the device)."""
        from torchvision import tv_tensors

        video = tv_tensors.Video(torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))  # (T, C, H, W)
        seed = int(rng.integers(2**62)) if rng is not None else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            video = self.pipeline()(video)
        return video.as_subclass(torch.Tensor).contiguous()

    def __call__(self, frames: np.ndarray | torch.Tensor, rng: Optional[np.random.Generator]) -> torch.Tensor:
        """:meth:`crop_clip`, normalized: float32 (as :func:`lsvit.data.to_model_input` gives on the device)."""
        return normalize_clip(self.crop_clip(frames, rng), self.mean, self.std)
