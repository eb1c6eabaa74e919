"""LMI: long-term motion interaction between time steps, applied at the end of every transformer block.

Motion excitation over the token sequence of each time step. For tokens ``Z`` (B, T', L, E):

    R_s = W_r LN(Z_s)                               reduce E -> E / lmi_reduction, per token
    D_s = R_{s+1} - R_s  (s < T' - 1),  D_{T'-1} = 0   difference between neighbouring time steps
    A_s = tanh(W_e mean_L(D_s) + b_e)               (B, T', E): one excitation per step and channel
    Z'_s = Z_s + gamma * (Z_s * A_s)                gamma one per channel, initialized small

Pooling the difference over the step's tokens (as motion excitation does over pixels) makes the gate describe
*how the clip changes* between steps rather than where, robust to small misalignments, and the gate reaches
every token of the step, CLS included: the CLS token that the head pools carries the long-term motion.
``gamma`` starts at ``gate_init`` so each block starts within ``gate_init`` of identity while every LMI parameter
receives a gradient on the first step.
"""

from __future__ import annotations

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
        self.expand = nn.Linear(reduced, embed_dim)
        self.gate = nn.Parameter(torch.full((embed_dim,), gate_init))
        for linear in (self.reduce, self.expand):
            nn.init.trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(self.expand.bias)  # zero motion -> zero excitation: a static clip passes unchanged

    def forward(self, tokens: Tensor, steps: int) -> Tensor:
        bt, length, dim = tokens.shape
        z = tokens.view(bt // steps, steps, length, dim)  # (B, T', L, E)
        reduced = self.reduce(self.norm(z))  # (B, T', L, E / r)
        difference = F.pad(reduced[:, 1:] - reduced[:, :-1], (0, 0, 0, 0, 0, 1))  # (B, T', L, E / r), last = 0
        excitation = self.expand(difference).tanh()  # (B, T', L, E): each token by its own change
        gated = z + self.gate * (z * excitation)
        return gated.view(bt, length, dim)
