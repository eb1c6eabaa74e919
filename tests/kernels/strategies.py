"""Random problems for kernel tests: shapes that are not multiples of block sizes, layouts, strides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from hypothesis import strategies as st
from torch import Tensor


@dataclass
class Problem:
    video: Tensor  # in `layout`, possibly non-contiguous
    weight: Tensor  # (E, C, t, ph, pw), or (E, C, ph, pw) when conv2d_weight
    bias: Optional[Tensor]
    pos_embed: Optional[Tensor]
    cls_token: Optional[Tensor]
    layout: str

    def args(self):
        return (self.video, self.weight, self.bias, self.pos_embed)

    def kwargs(self):
        return {"cls_token": self.cls_token, "layout": self.layout}


def make_video(shape_btchw, layout: str, dtype, contiguous: bool) -> Tensor:
    """A random video in ``layout``; non-contiguous ones are channel slices of a wider tensor."""
    b, t, c, h, w = shape_btchw
    wide = c + (0 if contiguous else 2)
    full = (
        torch.randn(b, t, wide, h, w).to(dtype)
        if dtype != torch.uint8
        else torch.randint(0, 256, (b, t, wide, h, w), dtype=torch.uint8)
    )
    video = full if contiguous else full[:, :, 1 : 1 + c]
    return video if layout == "BTCHW" else video.transpose(1, 2)  # BCTHW as a strided view


def make_problem(
    b=2,
    steps=2,
    t=2,
    c=3,
    gh=2,
    gw=3,
    ph=4,
    pw=4,
    e=12,
    *,
    layout="BTCHW",
    dtype=torch.float32,
    bias=True,
    pos="slot",
    cls=True,
    contiguous=True,
    conv2d_weight=False,
    video_dtype=None,
) -> Problem:
    video = make_video((b, steps * t, c, gh * ph, gw * pw), layout, video_dtype or dtype, contiguous)
    weight = torch.randn(e, c, t, ph, pw).to(dtype) / (c * t * ph * pw) ** 0.5
    if conv2d_weight:
        assert t == 1
        weight = weight[:, :, 0]
    slots = int(cls) + gh * gw
    rows = {"slot": slots, "token": steps * slots, None: 0}[pos]
    return Problem(
        video=video,
        weight=weight,
        bias=torch.randn(e).to(dtype) if bias else None,
        pos_embed=torch.randn(rows, e).to(dtype) if pos else None,
        cls_token=torch.randn(e).to(dtype) if cls else None,
        layout=layout,
    )


problems = st.builds(
    make_problem,
    b=st.integers(1, 3),
    steps=st.integers(1, 3),
    t=st.integers(1, 3),
    c=st.integers(1, 4),
    gh=st.integers(1, 3),
    gw=st.integers(1, 4),
    ph=st.integers(1, 5),
    pw=st.integers(1, 5),
    e=st.integers(1, 21),
    layout=st.sampled_from(["BTCHW", "BCTHW"]),
    dtype=st.just(torch.float64),
    bias=st.booleans(),
    pos=st.sampled_from(["slot", "token", None]),
    cls=st.booleans(),
    contiguous=st.booleans(),
)
