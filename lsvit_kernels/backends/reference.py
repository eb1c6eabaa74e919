"""Reference backend: pure PyTorch, no convolution. The oracle for every other backend and the fallback anywhere.

Forward is one im2col view/permute of the video and one batched GEMM that accumulates onto (bias + pos_embed)
(``baddbmm``), so the positional add costs no separate pass. It materializes the patch matrix, which the fused
backends exist to avoid.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import geometry
from ..registry import Backend, register_backend


def patches(video: Tensor, grid: geometry.PatchGrid) -> Tensor:
    """(B, T, C, H, W) video, any strides -> (B, T', N, K) patch matrix, K in (c, dt, dh, dw) order."""
    g = grid
    x = video.reshape(g.batch, g.steps, g.tubelet, g.channels, g.grid_h, g.patch_h, g.grid_w, g.patch_w)
    x = x.permute(0, 1, 4, 6, 3, 2, 5, 7)  # (B, T', gh, gw, C, t, ph, pw)
    return x.reshape(g.batch, g.steps, g.num_spatial, g.patch_dim)


def unpatch(patch_grads: Tensor, grid: geometry.PatchGrid) -> Tensor:
    """Inverse of ``patches``: (B, T', N, K) -> contiguous (B, T, C, H, W). Patches do not overlap."""
    g = grid
    x = patch_grads.reshape(g.batch, g.steps, g.grid_h, g.grid_w, g.channels, g.tubelet, g.patch_h, g.patch_w)
    x = x.permute(0, 1, 5, 4, 2, 6, 3, 7)  # (B, T', t, C, gh, ph, gw, pw)
    return x.reshape(g.batch, g.frames, g.channels, g.height, g.width)


def _grid(video: Tensor, weight: Tensor, has_cls: bool) -> geometry.PatchGrid:
    return geometry.grid_of(video.shape, weight.shape, has_cls)  # validated by the op's public function


def forward(
    video: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    pos_embed: Optional[Tensor],
    cls_token: Optional[Tensor],
) -> Tensor:
    g = _grid(video, weight, cls_token is not None)
    s = g.cls_slots
    x = patches(video.to(weight.dtype), g)  # (B, T', N, K)
    w_t = weight.reshape(g.embed_dim, g.patch_dim).t()  # (K, E)
    out = torch.empty(g.output_shape, dtype=weight.dtype, device=weight.device)

    # addend: what the epilogue adds to each patch token, bias + pos, shaped (groups, rows, E)
    per_token = pos_embed is not None and g.pos_is_per_token(pos_embed.shape[0])
    rows = g.num_patches if per_token else g.num_spatial
    addend = torch.zeros(1, rows, g.embed_dim, dtype=weight.dtype, device=weight.device)
    if bias is not None:
        addend = addend + bias
    if pos_embed is not None:
        pos = pos_embed.view(-1, g.tokens_per_step, g.embed_dim)[:, s:]  # (1 or T', N, E)
        addend = addend + pos.reshape(1, rows, g.embed_dim)
    groups = g.batch * g.num_patches // rows
    if rows >= 32:  # one batched GEMM accumulating onto the shared (rows, E) addend
        x = x.reshape(groups, rows, g.patch_dim)
        tokens = torch.baddbmm(addend, x, w_t.expand(groups, -1, -1))  # (groups, rows, E)
    else:  # tiny groups (e.g. pre-patchified 1x1 grids) would be one GEMM per row: do a single addmm
        addend = addend.expand(groups, rows, g.embed_dim).reshape(-1, g.embed_dim)
        tokens = torch.addmm(addend, x.reshape(-1, g.patch_dim), w_t)  # (M, E)
    out[:, :, s:] = tokens.view(g.batch, g.steps, g.num_spatial, g.embed_dim)

    if s:
        cls_rows = cls_token.view(1, 1, g.embed_dim).expand(1, g.steps, -1)
        if pos_embed is not None:
            cls_rows = cls_rows + pos_embed.view(-1, g.tokens_per_step, g.embed_dim)[:, 0].unsqueeze(0)
        out[:, :, 0] = cls_rows
    return out


def backward(
    grad_tokens: Tensor,
    video: Tensor,
    weight: Tensor,
    pos_rows: int,
    has_bias: bool,
    has_cls: bool,
    output_mask: list[bool],
) -> tuple[Optional[Tensor], ...]:
    g = _grid(video, weight, has_cls)
    s = g.cls_slots
    need_video, need_weight, need_bias, need_pos, need_cls = output_mask
    grad_patches = grad_tokens[:, :, s:].reshape(g.batch * g.num_patches, g.embed_dim)  # (M, E)
    w2d = weight.reshape(g.embed_dim, g.patch_dim)
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32  # reductions in >= fp32
    grad_video = grad_weight = grad_bias = grad_pos = grad_cls = None
    if need_video:
        grad_video = unpatch(grad_patches.mm(w2d), g).to(video.dtype)
    if need_weight:
        x = patches(video.to(weight.dtype), g).reshape(-1, g.patch_dim)
        grad_weight = grad_patches.t().mm(x).view(weight.shape)
    if need_bias and has_bias:
        grad_bias = grad_patches.sum(0, dtype=acc).to(weight.dtype)
    if need_pos and pos_rows:
        if g.pos_is_per_token(pos_rows):
            grad_pos = grad_tokens.sum(0, dtype=acc).reshape(pos_rows, g.embed_dim)
        else:
            grad_pos = grad_tokens.sum((0, 1), dtype=acc)
        grad_pos = grad_pos.to(weight.dtype)
    if need_cls and has_cls:
        grad_cls = grad_tokens[:, :, 0].sum((0, 1), dtype=acc).to(weight.dtype)
    return grad_video, grad_weight, grad_bias, grad_pos, grad_cls


BACKEND = register_backend(
    Backend(
        name="reference",
        devices=("cpu", "cuda", "mps", "xpu", "meta"),
        forward=forward,
        backward=backward,
        unavailable_reason=lambda device_type: None,
        description="pure PyTorch: im2col view + one baddbmm onto bias + pos",
        dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64),
    )
)
