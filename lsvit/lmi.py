"""LMI: long-term motion interaction between time steps, applied at the start of every transformer block.

Motion excitation over the token sequence of each time step. For tokens ``Z`` (B, T', L, E), L = 1 + gh gw:

    R_s = W_r LN(Z_s)                               reduce E -> E / lmi_reduction, per token
    D_s = K(R_{s+1}) - R_s  (s < T' - 1),  D_{T'-1} = 0   K: channel-wise 3x3 conv over the patch grid (TEA),
                                                    identity at init; the CLS slot passes K unchanged
    A_s = tanh(W_e D_s + b_e)                       (B, T', L, E): one excitation per token and channel
    Z'_s = Z_s + gamma * (Z_s * A_s)                gamma one per channel, initialized small

Each token is gated by its own change, not by the change pooled over the step: pooling keeps *that* the clip
changes but cancels the opposite changes at a moving object's leading and trailing edges, losing *where* and
*which way*. ``K`` compares a token with its 3x3 neighbourhood at the next step (as TEA transforms X(t+1)
before subtracting), so a channel of ``D`` can measure where the token's content moved. The CLS slot's own
difference carries the step-level change to the token the head reads. ``gamma`` starts at ``gate_init`` so each
block starts within ``gate_init`` of identity while every LMI parameter receives a gradient on the first step.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LMI(nn.Module):
    """Long-term motion gate across time steps: (B * T', L, E) tokens of ``steps`` steps -> same shape."""

    def __init__(self, embed_dim: int, reduction: int = 4, gate_init: float = 1e-3):
        super().__init__()
        reduced = max(1, embed_dim // reduction)
        self.norm = nn.LayerNorm(embed_dim)
        self.reduce = nn.Linear(embed_dim, reduced, bias=False)  # a bias would cancel in R_{s+1} - R_s
        # TEA's channel-wise 3x3 transform of the next step before the difference: token l of step s is compared
        # with the 3x3 neighbourhood of l at step s + 1, so the difference sees where a feature moved
        self.shift = nn.Conv2d(reduced, reduced, kernel_size=3, padding=1, groups=reduced, bias=False)
        self.expand = nn.Linear(reduced, embed_dim)
        self.gate = nn.Parameter(torch.full((embed_dim,), gate_init))
        for linear in (self.reduce, self.expand):
            nn.init.trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(self.expand.bias)  # zero motion -> zero excitation: a static clip passes unchanged
        with torch.no_grad():  # the shift starts as the identity (the plain difference R_{s+1} - R_s)
            self.shift.weight.zero_()
            self.shift.weight[:, :, 1, 1] = 1.0

    def forward(self, tokens: Tensor, steps: int, grid: Optional[tuple[int, int]] = None) -> Tensor:
        """``grid``: the ``(gh, gw)`` patch grid of the ``L - 1`` patch tokens (default: square)."""
        bt, length, dim = tokens.shape
        if grid is None:
            side = math.isqrt(length - 1)
            grid = (side, side)
        if grid[0] * grid[1] != length - 1:
            raise ValueError(f"LMI: {length - 1} patch tokens per step do not form the grid {tuple(grid)}")
        b = bt // steps
        z = tokens.view(b, steps, length, dim)  # (B, T', L, E)
        reduced = self.reduce(self.norm(z))  # (B, T', L, E / r)
        following = reduced[:, 1:]  # (B, T' - 1, L, E / r)
        er = following.shape[-1]
        patches = following[:, :, 1:].reshape(-1, grid[0], grid[1], er).permute(0, 3, 1, 2)
        patches = self.shift(patches).permute(0, 2, 3, 1).reshape(b, steps - 1, length - 1, er)
        following = torch.cat([following[:, :, :1], patches], dim=2)  # the CLS slot has no neighbourhood
        difference = F.pad(following - reduced[:, :-1], (0, 0, 0, 0, 0, 1))  # (B, T', L, E / r), last = 0
        excitation = self.expand(difference).tanh()  # (B, T', L, E): each token by its own change
        gated = z + self.gate * (z * excitation)
        return gated.view(bt, length, dim)
