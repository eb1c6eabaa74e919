"""Positional embedding for a patch grid other than the one it was trained on: bicubic resampling, cached.

The embedding is ``(1, 1 + N, E)``: one CLS row, then ``N = gh * gw`` rows in row-major ``(gy, gx)`` order (the
op's token order). Resampling keeps the CLS row and interpolates the grid rows as an image (timm/DeiT convention:
bicubic, ``align_corners=False``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def resample_grid(
    pos_embed: Tensor, new_grid: tuple[int, int], old_grid: Optional[tuple[int, int]] = None, cls_rows: int = 1
) -> Tensor:
    """``(1, cls_rows + gh*gw, E)`` -> ``(1, cls_rows + new_gh*new_gw, E)``; differentiable.

    ``old_grid`` defaults to a square grid (the only layout a plain checkpoint can imply).
    """
    if pos_embed.dim() == 2:
        pos_embed = pos_embed.unsqueeze(0)
    rows, dim = pos_embed.shape[1] - cls_rows, pos_embed.shape[2]
    if old_grid is None:
        side = math.isqrt(rows)
        if side * side != rows:
            raise ValueError(
                f"pos_embed has {rows} grid rows (after {cls_rows} CLS row), not a square grid; give old_grid"
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != rows:
        raise ValueError(f"pos_embed has {rows} grid rows but old_grid={old_grid} has {old_grid[0] * old_grid[1]}")
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    cls_part, grid_part = pos_embed[:, :cls_rows], pos_embed[:, cls_rows:]
    image = grid_part.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, E, gh, gw)
    image = F.interpolate(image.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid_part = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([cls_part, grid_part], dim=1)  # the embedding table, not the tokens: one small copy


class ResampledPosCache:
    """``pos_embed`` viewed at any grid: ``cache(pos_embed, grid) -> (1 + gh*gw, E)``.

    A plain object (not a module: nothing of it belongs in the state_dict). A resampled table is cached per
    (grid, device, dtype) and reused while the parameter is unchanged: the key includes ``pos_embed._version``
    (bumped by every in-place update: optimizer steps, ``load_state_dict``) and its storage pointer (a replaced
    parameter). The cache is used only when no gradient is needed and outside ``torch.compile`` tracing: in
    training the resampling stays in the autograd graph each call, and a compiled graph computes it itself.
    """

    def __init__(self, trained_grid: tuple[int, int]):
        self.trained_grid = tuple(trained_grid)
        self._entries: dict[tuple, tuple[tuple[int, int], Tensor]] = {}

    def __call__(self, pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
        if tuple(grid) == self.trained_grid:
            return pos_embed[0]
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and pos_embed.requires_grad):
            return resample_grid(pos_embed, grid, self.trained_grid)[0]
        key = (tuple(grid), pos_embed.device, pos_embed.dtype)
        stamp = (pos_embed._version, pos_embed.data_ptr())
        hit = self._entries.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        with torch.no_grad():
            resampled = resample_grid(pos_embed, grid, self.trained_grid)[0]
        self._entries[key] = (stamp, resampled)
        return resampled

    def __len__(self) -> int:
        return len(self._entries)
