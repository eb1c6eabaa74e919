"""Positional embeddings at a size other than the trained one: resampled, cached.

Spatial: ``(1, 1 + N, E)``, one CLS row, then ``N = gh * gw`` rows in row-major ``(gy, gx)`` order (the op's token
order). Resampling keeps the CLS row and interpolates the grid rows as an image (timm/DeiT convention: bicubic,
``align_corners=False``).

Temporal: ``(T0', E)``, one row per time step. Resampling to ``T'`` steps interpolates linearly with
``align_corners=False``: step ``s`` of ``T'`` sits at the clip position ``(s + 0.5) / T'``, the centre of its TSN
segment, so a clip sampled with more or fewer frames reads the table at the same relative times.
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


def resample_steps(table: Tensor, steps: int) -> Tensor:
    """``(T0', E)`` -> ``(steps, E)`` by linear interpolation over time (``align_corners=False``); differentiable."""
    if table.shape[0] == steps:
        return table
    line = table.t().unsqueeze(0).float()  # (1, E, T0')
    line = F.interpolate(line, size=steps, mode="linear", align_corners=False)
    return line[0].t().to(table.dtype)


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

    def _trained(self, size: tuple[int, int]) -> bool:
        return tuple(size) == self.trained_grid

    def _resample(self, table: Tensor, size: tuple[int, int]) -> Tensor:
        return resample_grid(table, size, self.trained_grid)[0]

    def __call__(self, pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
        if self._trained(grid):
            return pos_embed[0] if pos_embed.dim() == 3 else pos_embed
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and pos_embed.requires_grad):
            return self._resample(pos_embed, grid)
        key = (grid, pos_embed.device, pos_embed.dtype)
        stamp = (pos_embed._version, pos_embed.data_ptr())
        hit = self._entries.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        with torch.no_grad():
            resampled = self._resample(pos_embed, grid)
        self._entries[key] = (stamp, resampled)
        return resampled

    def __len__(self) -> int:
        return len(self._entries)


class ResampledTimeCache(ResampledPosCache):
    """The temporal table ``(T0', E)`` viewed at any step count: ``cache(table, steps) -> (steps, E)``.

    Same caching rules as ``ResampledPosCache`` (no cache while gradients flow or under ``torch.compile``).
    """

    def __init__(self, trained_steps: int):
        super().__init__((trained_steps,))

    def _trained(self, size) -> bool:
        return int(size) == self.trained_grid[0]

    def _resample(self, table: Tensor, size) -> Tensor:
        return resample_steps(table, int(size))
