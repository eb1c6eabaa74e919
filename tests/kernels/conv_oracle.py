"""The float64 oracle every backend is held to: nn.functional conv + flatten + add + cat, as models do it today."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Absolute tolerance per output dtype, relative to the output's scale (inputs are unit-variance randn).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def conv_tokens(
    video: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    pos_embed: Optional[Tensor] = None,
    cls_token: Optional[Tensor] = None,
    layout: str = "BTCHW",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """(B, T', S + N, E) computed by F.conv3d in ``dtype`` (float64: the oracle; a 16-bit dtype: what plain
    PyTorch achieves in that dtype); the op's documented semantics, independently of the package."""

    def cast(t):
        return None if t is None else t.to(dtype)

    v = cast(video)
    if v.dim() == 4:
        v = v.unsqueeze(2)  # (B, C, 1, H, W)
    elif layout == "BTCHW":
        v = v.permute(0, 2, 1, 3, 4)
    w = cast(weight)
    if w.dim() == 4:
        w = w.unsqueeze(2)
    y = F.conv3d(v, w, None if bias is None else cast(bias), stride=w.shape[2:])  # (B, E, T', gh, gw)
    tokens = y.flatten(3).permute(0, 2, 3, 1)  # (B, T', N, E)
    b, steps, n, e = tokens.shape
    if cls_token is not None:
        cls = cast(cls_token).reshape(1, 1, 1, e).expand(b, steps, 1, e)
        tokens = torch.cat([cls, tokens], dim=2)
    if pos_embed is not None:
        pos = cast(pos_embed).reshape(-1, tokens.shape[2], e)  # (1 or T', S + N, E)
        tokens = tokens + pos
    return tokens


def max_error(out: Tensor, expected: Tensor) -> float:
    return (out.double() - expected.double()).abs().max().item() if out.numel() else 0.0


def assert_close_to_oracle(out: Tensor, expected: Tensor, plain: Optional[Tensor] = None) -> None:
    """``out`` close to the float64 ``expected``.

    float32/float64: within a per-dtype tolerance scaled by the output's magnitude. 16-bit: the error is at
    most twice the error of plain PyTorch in the same dtype (``plain``), plus a small epsilon.
    """
    assert out.shape == expected.shape, f"shape {tuple(out.shape)} != expected {tuple(expected.shape)}"
    assert torch.isfinite(out).all(), "output has non-finite values (an element was not written?)"
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1.0)
    err = max_error(out, expected)
    if plain is not None and out.dtype in (torch.float16, torch.bfloat16):
        tol = 2 * max_error(plain, expected) + 1e-3 * scale
        assert err <= tol, f"{out.dtype} error {err:.3g} > 2x plain PyTorch's ({tol:.3g} with epsilon)"
    else:
        tol = TOLERANCE[out.dtype] * scale
        assert err <= tol, f"max abs error {err:.3g} > tolerance {tol:.3g} for {out.dtype}"
