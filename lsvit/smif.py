"""SMIF: short-term motion information fusion, applied to the input clip before patching.

For frame ``t`` of a clip ``X`` (B, T, C, H, W) and a centred window of ``w = 2r + 1`` frames:

    D_t = (1 / |J_t|) sum_{j in J_t} |X_j - X_t|,   J_t = {t + k : 1 <= |k| <= r, 0 <= t + k < T}
    M_t = relu(D_t - tau),                         tau = softplus(theta) >= 0, one per channel, learned
    X'_t = X_t + gamma * Conv1x1([X_t ; M_t])      gamma one per channel, initialized small
    S_t = (1 / |J_t|) sum_{j in J_t} sign(j - t) (X_j - X_t)     signed: later minus earlier

``X'`` (the paper's fusion: motion magnitude into the frame) is what ``SMIF`` returns; ``S`` (``signed_motion``)
is the direction, which the model gives the patch embedding as ``C`` extra input channels (docs/model.md: added
into the frame, a signed difference would only look like the frame at a slightly different time).

The window is clipped at the clip's ends (``|J_t|`` counts the neighbours that exist; a one-frame clip has no
motion, ``M = 0``). The threshold is learned rather than fixed: the noise floor of frame differences depends on
the camera, the codec and the input normalization, so a fixed value would need tuning per dataset, while a
per-channel threshold costs C parameters and receives a gradient wherever motion exceeds it.
The gate ``gamma`` starts at ``gate_init`` (LayerScale-style): the model starts within ``gate_init`` of the
plain frame, yet the fusion conv already receives a gradient on the first step (a gate of exactly 0 would
leave it without one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the equations' one implementation, shared with the op's reference backend
from lsvit_kernels.backends.smif_reference import neighbour_differences

__all__ = ["SMIF", "neighbour_differences"]


class SMIF(nn.Module):
    """Short-term motion fused into each frame: (B, T, C, H, W) -> (B, T, C, H, W)."""

    def __init__(self, in_channels: int, window: int = 5, threshold_init: float = 0.05, gate_init: float = 1e-3):
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"smif_window={window} must be odd and >= 1")
        self.radius = window // 2
        # softplus^-1(threshold_init): the threshold starts at threshold_init and stays >= 0
        self.threshold_logit = nn.Parameter(torch.full((in_channels,), math.log(math.expm1(threshold_init))))
        self.fuse = nn.Conv2d(2 * in_channels, in_channels, kernel_size=1)
        self.gate = nn.Parameter(torch.full((in_channels,), gate_init))

    @property
    def threshold(self) -> Tensor:
        return F.softplus(self.threshold_logit)

    def motion(self, video: Tensor) -> Tensor:
        """M: thresholded short-term motion map, (B, T, C, H, W)."""
        differences = neighbour_differences(video, self.radius)
        return F.relu(differences - self.threshold.to(video.dtype).view(1, 1, -1, 1, 1))

    def signed_motion(self, video: Tensor) -> Tensor:
        """S: mean signed (later minus earlier) difference to the neighbours in the window, (B, T, C, H, W)."""
        return neighbour_differences(video, self.radius, signed=True)

    def forward(self, video: Tensor) -> Tensor:
        motion = self.motion(video)
        stacked = torch.cat([video, motion], dim=2)  # (B, T, 2C, H, W)
        # self.fuse applied as a channel matmul: on CPU, oneDNN's 1x1 convolution over so few channels trained
        # 12x slower (122 vs 10 ms forward + backward for a 16 x 8 x 3 x 64 x 64 clip), a fifth of a training step
        weight, bias = self.fuse.weight.flatten(1), self.fuse.bias.view(1, 1, -1, 1, 1)  # (C, 2C), (1, 1, C, 1, 1)
        fused = torch.einsum("oc,btchw->btohw", weight, stacked) + bias
        return video + self.gate.view(1, 1, -1, 1, 1) * fused
