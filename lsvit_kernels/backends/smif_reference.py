"""Reference backend of ``smif_patch_embed``, and the SMIF backward every backend shares.

Forward is LSViT's input stage in plain PyTorch, pass after pass: normalize, SMIF (``X'`` and the signed motion
``S``), ``cat([X', S])`` into a (B, T, 2C, H, W) tensor, then the patch-embedding op with ``[W, W_m]``.
The fused backends exist to avoid those passes; this is their oracle.

Backward (all backends): SMIF's maps are recomputed in torch ops (no autograd graph kept from the forward, so the
forward can run in a fused kernel that never materializes ``X'`` or ``S``); the grads of the tokens with respect
to ``X'`` and the projection's parameters come from the patch-embedding backward of the op's registry on ``X'``
with ``W``, those of ``W_m`` from the one on ``S`` with ``W_m`` (its input gradient only when the video needs
one); SMIF's own backward is written out below, its channel mixes and reductions as ``bmm`` on the maps' views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

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


def kernel_parameters(call: SmifCall) -> tuple[Tensor, ...]:
    """What the fused kernels read, contiguous in fp32 (fp64 for fp64 weights): softplus(theta), fuse weight
    (C, 2C), fuse bias, gate, and the input map x = video * scale + shift per channel."""
    acc = torch.float64 if call.weight.dtype == torch.float64 else torch.float32
    c, mean, std, pixel_scale = call.weight.shape[1], call.mean, call.std, call.pixel_scale
    if mean is None:
        scale, shift = [pixel_scale] * c, [0.0] * c
    else:
        scale = [pixel_scale / s for s in std]
        shift = [-m / s for m, s in zip(mean, std, strict=True)]
    small = [
        t.detach().to(acc).contiguous() for t in (call.threshold_logit, call.fuse_weight, call.fuse_bias, call.gate)
    ]
    small[0] = F.softplus(small[0])
    device = call.weight.device
    return (*small, torch.tensor(scale, dtype=acc, device=device), torch.tensor(shift, dtype=acc, device=device))


def channel_mix(weight: Tensor, x: Tensor) -> Tensor:
    """``y[b, t, o] = sum_c weight[o, c] x[b, t, c]`` of (B, T, C, H, W) maps, as one ``bmm`` on the maps' own
    (B T, C, H W) view: 2.2x faster than ``matmul`` (which folds the batch into one tall product and copies) and
    than an einsum (which permutes the maps into copies) at 16 x 3 x 224 x 224, one CPU thread."""
    b, t, c, h, w = x.shape
    o = weight.shape[0]
    return torch.bmm(weight.expand(b * t, o, c), x.reshape(b * t, c, h * w)).view(b, t, o, h, w)


def channel_products(a: Tensor, b: Tensor) -> Tensor:
    """``P[o, c] = sum_{b, t, h, w} a[b, t, o] b[b, t, c]`` of two (B, T, ·, H, W) map stacks, (Ca, Cb)."""
    n, t, _, h, w = a.shape
    rows = a.reshape(n * t, a.shape[2], h * w)
    return torch.bmm(rows, b.reshape(n * t, b.shape[2], h * w).transpose(1, 2)).sum(0)


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
    c = x.shape[2]
    if signed:
        differences, signed_motion = motion_differences(x, radius)
    else:
        differences, signed_motion = neighbour_differences(x, radius), None
    motion = F.relu(differences - F.softplus(threshold_logit).view(shape))
    pre_gate = channel_mix(fuse_weight[:, :c], x) + channel_mix(fuse_weight[:, c:], motion)
    pre_gate += fuse_bias.view(shape)
    return x + gate.view(shape) * pre_gate, motion, pre_gate, signed_motion


class SmifCall(NamedTuple):
    """One call's operands as ``lsvit::smif_patch_embed`` receives them (all but the backend): what every backend's
    ``forward`` takes."""

    video: Tensor
    weight: Tensor
    motion_weight: Optional[Tensor]
    bias: Optional[Tensor]
    pos_embed: Optional[Tensor]
    cls_token: Optional[Tensor]
    threshold_logit: Tensor
    fuse_weight: Tensor
    fuse_bias: Tensor
    gate: Tensor
    radius: int
    mean: Optional[Sequence[float]]
    std: Optional[Sequence[float]]
    pixel_scale: float


def forward(call: SmifCall, patch_backend: Optional[str] = None) -> Tensor:
    """The tokens, pass after pass; the patch embedding on the patch op's ``patch_backend`` (None: automatic)."""
    c = call
    x = normalized(c.video, c.weight.dtype, c.mean, c.std, c.pixel_scale)
    fused, _, _, signed_motion = smif_maps(
        x, c.threshold_logit, c.fuse_weight, c.fuse_bias, c.gate, c.radius, signed=c.motion_weight is not None
    )
    if c.motion_weight is None:
        return ops._patch_embed(fused, c.weight, c.bias, c.pos_embed, c.cls_token, patch_backend)
    stacked = torch.cat([fused, signed_motion], dim=2)  # (B, T, 2C, H, W)
    full_weight = torch.cat([c.weight, c.motion_weight], dim=1)
    return ops._patch_embed(stacked, full_weight, c.bias, c.pos_embed, c.cls_token, patch_backend)


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
    fuse_bias, gate); SMIF is recomputed in at least fp32.

    The projection's backward runs as two patch-embedding backwards, ``X'`` with ``W`` and ``S`` with ``W_m``,
    instead of one on ``cat([X', S])`` with ``cat([W, W_m])``: no (B, T, 2C, H, W) tensor, and the gradient with
    respect to ``S`` (a half of the input gradient) is computed only when the video needs a gradient; in training
    the video never does, and SMIF's parameters need only the gradient with respect to ``X'``.
    """
    video, weight, motion_weight, threshold_logit, fuse_weight, fuse_bias, gate = saved
    (need_video, need_w, need_wm, need_b, need_pos, need_cls, need_theta, need_fw, need_fb, need_gate) = needs
    dtype = weight.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    c = weight.shape[1]
    shape = (1, 1, -1, 1, 1)
    reduce_dims = (0, 1, 3, 4)
    x = normalized(video, acc, *normalization)
    theta, fw, fb, gamma = (p.to(acc) for p in (threshold_logit, fuse_weight, fuse_bias, gate))
    fused, motion, pre_gate, signed_motion = smif_maps(
        x, theta, fw, fb, gamma, radius, signed=motion_weight is not None
    )

    grads: list[Optional[Tensor]] = [None] * 10
    need_smif = need_video or need_theta or need_fw or need_fb or need_gate
    flags = (pos_rows, has_bias, has_cls)
    mask = [need_smif, need_w, need_b, need_pos, need_cls]
    g_fused = None
    if any(mask):
        g_fused, g_w, g_bias, g_pos, g_cls = ops._patch_embed_backward(
            grad_tokens, fused.to(dtype), weight, *flags, mask, backend
        )
        grads[1], grads[3], grads[4], grads[5] = (
            g if m else None for g, m in zip((g_w, g_bias, g_pos, g_cls), mask[1:])
        )
    g_signed = None
    if motion_weight is not None and (need_wm or need_video):
        g_signed, g_wm = ops._patch_embed_backward(
            grad_tokens, signed_motion.to(dtype), motion_weight, *flags, [need_video, need_wm, False, False, False],
            backend,
        )[:2]  # fmt: skip
        grads[2] = g_wm if need_wm else None
    if not need_smif:
        return grads

    g_fused = g_fused.to(acc)  # X' = x + gamma * (W_f [x; M] + b_f)
    if need_gate:
        grads[9] = (g_fused * pre_gate).sum(reduce_dims).to(gate.dtype)
    g_pre = g_fused * gamma.view(shape)  # (B, T, C, H, W)
    if need_fb:
        grads[8] = g_pre.sum(reduce_dims).to(fuse_bias.dtype)
    if need_fw:
        grad_fw = torch.cat([channel_products(g_pre, x), channel_products(g_pre, motion)], dim=1)
        grads[7] = grad_fw.to(fuse_weight.dtype)
    active = torch.sign(motion)  # relu' as 0/1 (torch's: 0 at 0), since M >= 0; float, so products are bmm
    if need_theta:  # dL/dD_c = sum_o W_f[o, C + c] g_pre_o where M_c > 0, reduced without forming it
        reached = (fw[:, c:] * channel_products(g_pre, active)).sum(0)
        grads[6] = (-reached * torch.sigmoid(theta)).to(threshold_logit.dtype)
    if need_video:
        g_differences = channel_mix(fw[:, c:].t(), g_pre) * active
        g_x = g_fused + channel_mix(fw[:, :c].t(), g_pre)
        g_x += _differences_backward(g_differences, None if g_signed is None else g_signed.to(acc), x, radius)
        mean, std, pixel_scale = normalization
        if mean is not None:  # x = (video * pixel_scale - mean) / std
            g_x = g_x * torch.tensor([pixel_scale / s for s in std], dtype=acc, device=g_x.device).view(shape)
        elif pixel_scale != 1.0:
            g_x = g_x * pixel_scale
        grads[0] = g_x.to(video.dtype)
    return grads
