"""Reference backend of ``smif_patch_embed``, and the SMIF backward every backend shares.

Forward is LSViT's input stage in plain PyTorch, pass after pass: normalize, SMIF (``X'`` and the signed motion
``S``), ``cat([X', S])`` into a (B, T, 2C, H, W) tensor, then the patch-embedding op with ``[W, W_m]``.
The fused backends exist to avoid those passes; this is their oracle.

Backward (all backends): the grads of the tokens with respect to ``[X'; S]`` and the projection's parameters come
from the patch-embedding backward of the op's registry on the recomputed ``[X'; S]``; SMIF's own backward is
written out below in vectorized torch ops (no autograd graph kept from the forward, so the forward can run in a
fused kernel that never materializes ``X'`` or ``S``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops


def neighbour_differences(video: Tensor, radius: int, signed: bool = False) -> Tensor:
    """D (or S with ``signed``): mean absolute (signed later-minus-earlier) difference of each frame to its
    neighbours within ``radius`` frames, (B, T, C, H, W)."""
    frames = video.shape[1]
    accumulated = torch.zeros_like(video)
    for k in range(1, min(radius, frames - 1) + 1):
        diff = video[:, k:] - video[:, :-k]  # (B, T - k, C, H, W): X_{t+k} - X_t, later minus earlier for both
        if not signed:
            diff = diff.abs()
        # in-place slice adds instead of padding two full-size copies per offset: 1.8-2.6x faster on CPU
        accumulated[:, k:] += diff  # frame t + k sees neighbour t
        accumulated[:, :-k] += diff  # frame t sees neighbour t + k
    return accumulated / neighbour_counts(frames, radius, video).view(1, frames, 1, 1, 1)


def motion_differences(video: Tensor, radius: int) -> tuple[Tensor, Tensor]:
    """(D, S) of ``neighbour_differences`` in one loop over the offsets: each difference is formed once."""
    frames = video.shape[1]
    magnitude, signed = torch.zeros_like(video), torch.zeros_like(video)
    for k in range(1, min(radius, frames - 1) + 1):
        diff = video[:, k:] - video[:, :-k]  # (B, T - k, C, H, W): X_{t+k} - X_t
        signed[:, k:] += diff
        signed[:, :-k] += diff
        diff = diff.abs_()
        magnitude[:, k:] += diff
        magnitude[:, :-k] += diff
    count = neighbour_counts(frames, radius, video).view(1, frames, 1, 1, 1)
    return magnitude.div_(count), signed.div_(count)


def neighbour_counts(frames: int, radius: int, like: Tensor) -> Tensor:
    """|J_t|: neighbours of each frame inside the clip (at least 1, so a one-frame clip divides by 1), (T,)."""
    t = torch.arange(frames, device=like.device)
    count = (torch.clamp(t + radius, max=frames - 1) - torch.clamp(t - radius, min=0)).clamp(min=1)
    return count.to(like.dtype)


def normalized(
    video: Tensor, dtype: torch.dtype, mean: Optional[Sequence[float]], std: Optional[Sequence[float]], pixel_scale
) -> Tensor:
    """The frames SMIF sees: ``(video * pixel_scale - mean) / std`` per channel (as ``lsvit.data.normalize_clip``
    for uint8), computed in at least fp32 and cast to ``dtype``; the video itself when there is nothing to do."""
    if mean is None and pixel_scale == 1.0:
        return video if video.dtype == dtype else video.to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = video.to(acc) * pixel_scale if pixel_scale != 1.0 else video.to(acc)
    if mean is not None:
        shape = (1, 1, -1, 1, 1)
        x = (x - torch.tensor(mean, dtype=acc, device=x.device).view(shape)) / torch.tensor(
            std, dtype=acc, device=x.device
        ).view(shape)
    return x.to(dtype)


def kernel_parameters(
    weight: Tensor,
    threshold_logit: Tensor,
    fuse_weight: Tensor,
    fuse_bias: Tensor,
    gate: Tensor,
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
    pixel_scale: float,
) -> tuple[Tensor, ...]:
    """What the fused kernels read, contiguous in fp32 (fp64 for fp64 weights): softplus(theta), fuse weight
    (C, 2C), fuse bias, gate, and the input map x = video * scale + shift per channel."""
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    c = weight.shape[1]
    if mean is None:
        scale, shift = [pixel_scale] * c, [0.0] * c
    else:
        scale = [pixel_scale / s for s in std]
        shift = [-m / s for m, s in zip(mean, std, strict=True)]
    small = [t.detach().to(acc).contiguous() for t in (threshold_logit, fuse_weight, fuse_bias, gate)]
    small[0] = F.softplus(small[0])
    device = weight.device
    return (*small, torch.tensor(scale, dtype=acc, device=device), torch.tensor(shift, dtype=acc, device=device))


def smif_maps(
    x: Tensor,
    threshold_logit: Tensor,
    fuse_weight: Tensor,
    fuse_bias: Tensor,
    gate: Tensor,
    radius: int,
    signed: bool,
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """(X', M, W_f [x; M] + b_f, S or None) of normalized frames x (B, T, C, H, W); fuse_weight (C, 2C).
    lsvit/smif.py's math."""
    shape = (1, 1, -1, 1, 1)
    if signed:
        differences, signed_motion = motion_differences(x, radius)
    else:
        differences, signed_motion = neighbour_differences(x, radius), None
    motion = F.relu(differences - F.softplus(threshold_logit).view(shape))
    stacked = torch.cat([x, motion], dim=2)  # (B, T, 2C, H, W)
    pre_gate = torch.einsum("oc,btchw->btohw", fuse_weight, stacked) + fuse_bias.view(shape)
    return x + gate.view(shape) * pre_gate, motion, pre_gate, signed_motion


def forward(
    video: Tensor,
    weight: Tensor,
    motion_weight: Optional[Tensor],
    bias: Optional[Tensor],
    pos_embed: Optional[Tensor],
    cls_token: Optional[Tensor],
    threshold_logit: Tensor,
    fuse_weight: Tensor,
    fuse_bias: Tensor,
    gate: Tensor,
    radius: int,
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
    pixel_scale: float,
    patch_backend: Optional[str] = None,
) -> Tensor:
    """The tokens, pass after pass; the patch embedding on the patch op's ``patch_backend`` (None: automatic)."""
    x = normalized(video, weight.dtype, mean, std, pixel_scale)
    fused, _, _, signed_motion = smif_maps(
        x, threshold_logit, fuse_weight, fuse_bias, gate, radius, signed=motion_weight is not None
    )
    if motion_weight is None:
        return ops._patch_embed(fused, weight, bias, pos_embed, cls_token, patch_backend)
    stacked = torch.cat([fused, signed_motion], dim=2)  # (B, T, 2C, H, W)
    full_weight = torch.cat([weight, motion_weight], dim=1)
    return ops._patch_embed(stacked, full_weight, bias, pos_embed, cls_token, patch_backend)


def _differences_backward(grad_magnitude: Tensor, grad_signed: Optional[Tensor], x: Tensor, radius: int) -> Tensor:
    """Vector-Jacobian product of (D, S) = ``motion_differences(x, radius)`` with (grad_magnitude, grad_signed or
    None), (B, T, C, H, W): one loop over the offsets for both."""
    frames = x.shape[1]
    count = neighbour_counts(frames, radius, x).view(1, frames, 1, 1, 1)
    per_magnitude = grad_magnitude / count
    per_signed = None if grad_signed is None else grad_signed / count
    grad_x = torch.zeros_like(x)
    for k in range(1, min(radius, frames - 1) + 1):
        # both frames of the pair (t, t + k) see diff = X_{t+k} - X_t: |diff| in D, diff in S
        d_diff = (per_magnitude[:, k:] + per_magnitude[:, :-k]) * torch.sign(x[:, k:] - x[:, :-k])  # abs' = sign
        if per_signed is not None:
            d_diff += per_signed[:, k:] + per_signed[:, :-k]
        grad_x[:, k:] += d_diff
        grad_x[:, :-k] -= d_diff
    return grad_x


def backward(
    grad_tokens: Tensor,
    saved: tuple[Tensor, ...],
    radius: int,
    normalization: tuple,
    pos_rows: int,
    has_bias: bool,
    has_cls: bool,
    needs: Sequence[bool],
    backend: Optional[str],
) -> list[Optional[Tensor]]:
    """Grads of (video, weight, motion_weight, bias, pos, cls, threshold_logit, fuse_weight, fuse_bias, gate),
    None where not needed. ``saved``: (video, weight, motion_weight or None, threshold_logit, fuse_weight,
    fuse_bias, gate); SMIF is recomputed in at least fp32."""
    video, weight, motion_weight, threshold_logit, fuse_weight, fuse_bias, gate = saved
    (need_video, need_w, need_wm, need_b, need_pos, need_cls, need_theta, need_fw, need_fb, need_gate) = needs
    dtype = weight.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    c = weight.shape[1]
    shape = (1, 1, -1, 1, 1)
    x = normalized(video, acc, *normalization)
    theta, fw, fb, gamma = (p.to(acc) for p in (threshold_logit, fuse_weight, fuse_bias, gate))
    fused, motion, pre_gate, signed_motion = smif_maps(
        x, theta, fw, fb, gamma, radius, signed=motion_weight is not None
    )

    need_smif = need_video or need_theta or need_fw or need_fb or need_gate
    if motion_weight is None:
        stacked, full_weight = fused.to(dtype), weight
    else:
        stacked = torch.cat([fused, signed_motion], dim=2).to(dtype)  # (B, T, 2C, H, W)
        full_weight = torch.cat([weight, motion_weight], dim=1)
    mask = [need_smif, need_w or need_wm, need_b, need_pos, need_cls]
    g_stacked, g_weight, g_bias, g_pos, g_cls = ops._patch_embed_backward(
        grad_tokens, stacked, full_weight, pos_rows, has_bias, has_cls, mask, backend
    )
    grads: list[Optional[Tensor]] = [None] * 10
    if need_w or need_wm:
        if motion_weight is None:
            grads[1] = g_weight
        else:  # two tensors of their own (the op's outputs may not alias each other)
            grads[1], grads[2] = g_weight[:, :c].clone(), g_weight[:, c:].clone()
    grads[3], grads[4], grads[5] = (g if m else None for g, m in zip((g_bias, g_pos, g_cls), mask[2:]))
    if not need_smif:
        return grads

    g_stacked = g_stacked.to(acc)
    g_fused = g_stacked[:, :, :c]  # X' = x + gamma * (W_f [x; M] + b_f)
    reduce_dims = (0, 1, 3, 4)
    if need_gate:
        grads[9] = (g_fused * pre_gate).sum(reduce_dims).to(gate.dtype)
    g_pre = g_fused * gamma.view(shape)  # (B, T, C, H, W)
    if need_fb:
        grads[8] = g_pre.sum(reduce_dims).to(fuse_bias.dtype)
    if need_fw:
        grad_fw_x = torch.einsum("btohw,btchw->oc", g_pre, x)
        grad_fw_m = torch.einsum("btohw,btchw->oc", g_pre, motion)
        grads[7] = torch.cat([grad_fw_x, grad_fw_m], dim=1).to(fuse_weight.dtype)
    g_motion = torch.einsum("oc,btohw->btchw", fw[:, c:], g_pre)
    g_differences = g_motion * (motion > 0)  # relu' (torch's: 0 at 0)
    if need_theta:
        grads[6] = (-g_differences.sum(reduce_dims) * torch.sigmoid(theta)).to(threshold_logit.dtype)
    if need_video:
        g_x = g_fused + torch.einsum("oc,btohw->btchw", fw[:, :c], g_pre)
        g_signed = g_stacked[:, :, c:] if motion_weight is not None else None
        g_x += _differences_backward(g_differences, g_signed, x, radius)
        mean, std, pixel_scale = normalization
        if mean is not None:  # x = (video * pixel_scale - mean) / std
            g_x = g_x * torch.tensor([pixel_scale / s for s in std], dtype=acc, device=g_x.device).view(shape)
        elif pixel_scale != 1.0:
            g_x = g_x * pixel_scale
        grads[0] = g_x.to(video.dtype)
    return grads
