"""Cases and the float64 oracle shared by the compiled-library tests (test_native_cpu.py, test_native_cuda.py).

The oracle is ``F.conv3d`` in float64 (independent of every backend), its output moved to token order, plus the
positional embedding and CLS slot; gradients come from autograd through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from lsvit_kernels.geometry import PatchGrid

from .conv_oracle import conv_tokens


class Case(PatchGrid):
    """A test shape: the geometry's own grid (positional: B, T, C, H, W, E, t, ph, pw), named for test ids."""

    def __str__(self) -> str:
        return (
            f"B{self.batch}T{self.frames}C{self.channels}H{self.height}W{self.width}E{self.embed_dim}"
            f"t{self.tubelet}p{self.patch_h}x{self.patch_w}"
        )


CASES = [
    Case(2, 4, 3, 12, 20, 24, 2, 4, 5),  # H != W, ph != pw
    Case(1, 1, 3, 8, 8, 7, 1, 4, 4),  # batch 1, one frame, one step, odd E
    Case(3, 6, 2, 9, 6, 33, 3, 3, 2),  # odd everything, T' = 2
    Case(1, 2, 1, 64, 48, 16, 1, 4, 4),  # N = 192 > the CPU block: several blocks per step
]

POS_KINDS = ("none", "slot", "token")  # no pos_embed, one row per slot (broadcast over time), one row per token


@dataclass
class Inputs:
    video: torch.Tensor  # in the given layout
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    pos_embed: Optional[torch.Tensor]
    cls_token: Optional[torch.Tensor]
    layout: str


def make_inputs(
    case: Case,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    layout: str = "BTCHW",
    cls: bool = False,
    pos: str = "slot",
    bias: bool = True,
    video_dtype: Optional[torch.dtype] = None,
) -> Inputs:
    """Fresh random inputs (never zeros). The video is non-contiguous in the BCTHW layout by construction."""
    c = case
    kw = {"device": device, "dtype": dtype}
    shape = (c.batch, c.frames, c.channels, c.height, c.width)
    if layout == "BCTHW":
        shape = (c.batch, c.channels, c.frames, c.height, c.width)
    if video_dtype == torch.uint8:
        video = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    else:
        video = torch.randn(shape, **kw)
    weight = torch.randn(c.embed_dim, c.channels, c.tubelet, c.patch_h, c.patch_w, **kw) * 0.2
    rows = {"none": 0, "slot": int(cls) + c.num_spatial, "token": c.steps * (int(cls) + c.num_spatial)}[pos]
    return Inputs(
        video=video,
        weight=weight,
        bias=torch.randn(c.embed_dim, **kw) if bias else None,
        pos_embed=torch.randn(rows, c.embed_dim, **kw) if rows else None,
        cls_token=torch.randn(c.embed_dim, **kw) if cls else None,
        layout=layout,
    )


def reference_float64(inp: Inputs, pixel_scale: float = 1.0) -> torch.Tensor:
    """Tokens (B, T', S + N, E) in float64 from the conv oracle; differentiable w.r.t. float64 leaves passed in."""
    video = inp.video.double() * pixel_scale
    return conv_tokens(video, inp.weight, inp.bias, inp.pos_embed, inp.cls_token, layout=inp.layout)


def as_float64_leaves(inp: Inputs) -> Inputs:
    """A copy of the inputs as float64 leaves requiring grad (the uint8 video stays as it is)."""

    def leaf(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.detach().double().requires_grad_()

    video = inp.video if inp.video.dtype == torch.uint8 else leaf(inp.video)
    return Inputs(video, leaf(inp.weight), leaf(inp.bias), leaf(inp.pos_embed), leaf(inp.cls_token), inp.layout)


def leaves(inp: Inputs) -> list[torch.Tensor]:
    tensors = [inp.video, inp.weight, inp.bias, inp.pos_embed, inp.cls_token]
    return [t for t in tensors if t is not None and t.requires_grad]


def scaled_tolerance(reference: torch.Tensor, rel: float) -> float:
    """An absolute tolerance of ``rel`` times the reference's largest magnitude."""
    return rel * max(1.0, reference.abs().max().item())
