"""Drop-in ``nn.Module`` patch embeddings whose ``state_dict`` equals ``nn.Conv2d`` / ``nn.Conv3d``'s.

Parameters are exactly ``weight`` (conv layout) and ``bias``; normalization constants for raw uint8 input are
plain attributes, so conv checkpoints load either way and nothing is permuted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from . import geometry
from .ops import channel_values, patch_embed


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    ph, pw = size
    return (int(ph), int(pw))


class _PatchEmbed(nn.Module):
    """Shared machinery: parameters in conv layout, the conv's init, and the fused call."""

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        bias: bool,
        layout: str,
        mean: Optional[Sequence[float]],
        std: Optional[Sequence[float]],
        backend: Optional[str],
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if layout not in geometry.LAYOUTS:
            raise ValueError(f"layout={layout!r} is not supported; use one of {geometry.LAYOUTS}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        self.bias = nn.Parameter(torch.empty(weight_shape[0], **factory)) if bias else None
        self.layout = layout
        self.backend = backend
        # Plain tuples, not buffers: they stay exact under module.to(dtype) and out of the state_dict.
        channels = weight_shape[1]
        self.mean = None if mean is None else channel_values("mean", mean, channels)
        self.std = None if std is None else channel_values("std", std, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialization ``nn.Conv2d`` / ``nn.Conv3d`` use, so a fresh module matches a fresh conv."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def embed_dim(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    def forward(self, video: Tensor, pos_embed: Optional[Tensor] = None, cls_token: Optional[Tensor] = None) -> Tensor:
        """Tokens ``(B, T', S + N, E)`` (``(B, S + N, E)`` for a 4D image); see ``lsvit_kernels.patch_embed``."""
        return patch_embed(
            video,
            self.weight,
            self.bias,
            pos_embed,
            cls_token=cls_token,
            layout=self.layout,
            mean=self.mean,
            std=self.std,
            backend=self.backend,
        )


class PatchEmbed2d(_PatchEmbed):
    """Per-frame ``P x P`` patches; parameters of ``nn.Conv2d(C, E, P, stride=P)``.

    Takes images ``(B, C, H, W)`` -> ``(B, S + N, E)`` or videos (``layout``) -> ``(B, T, S + N, E)``.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        patch_size: int | Sequence[int] = 16,
        bias: bool = True,
        layout: str = "BTCHW",
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ) -> None:
        ph, pw = _pair(patch_size)
        super().__init__((embed_dim, in_channels, ph, pw), bias, layout, mean, std, backend, device, dtype)

    @property
    def patch_size(self) -> tuple[int, int]:
        return (self.weight.shape[2], self.weight.shape[3])

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> PatchEmbed2d:
        """Share ``conv``'s parameters (same tensors). The conv must have kernel_size == stride."""
        _check_patch_conv(conv, 2)
        e, c, ph, pw = conv.weight.shape
        module = cls(c, e, (ph, pw), conv.bias is not None, **_opts(kwargs), device=conv.weight.device)
        module.weight, module.bias = conv.weight, conv.bias
        return module


class PatchEmbed3d(_PatchEmbed):
    """``t x P x P`` tubelets; parameters of ``nn.Conv3d(C, E, (t, P, P), stride=(t, P, P))``.

    Takes videos ``(B, T, C, H, W)`` or ``(B, C, T, H, W)`` (``layout``) -> ``(B, T / t, S + N, E)``.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        patch_size: int | Sequence[int] = 16,
        tubelet_size: int = 2,
        bias: bool = True,
        layout: str = "BTCHW",
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ) -> None:
        if tubelet_size < 1:
            raise ValueError(f"tubelet_size={tubelet_size} must be >= 1")
        ph, pw = _pair(patch_size)
        shape = (embed_dim, in_channels, tubelet_size, ph, pw)
        super().__init__(shape, bias, layout, mean, std, backend, device, dtype)

    @property
    def tubelet_size(self) -> int:
        return self.weight.shape[2]

    @property
    def patch_size(self) -> tuple[int, int]:
        return (self.weight.shape[3], self.weight.shape[4])

    @classmethod
    def from_conv(cls, conv: nn.Conv3d, **kwargs) -> PatchEmbed3d:
        """Share ``conv``'s parameters (same tensors). The conv must have kernel_size == stride."""
        _check_patch_conv(conv, 3)
        e, c, t, ph, pw = conv.weight.shape
        module = cls(c, e, (ph, pw), t, conv.bias is not None, **_opts(kwargs), device=conv.weight.device)
        module.weight, module.bias = conv.weight, conv.bias
        return module


def _opts(kwargs: dict) -> dict:
    allowed = {"layout", "mean", "std", "backend"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"from_conv got unexpected options {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {"layout": kwargs.get("layout", "BCTHW"), **{k: kwargs.get(k) for k in ("mean", "std", "backend")}}


def patch_conv_problem(conv: nn.Module) -> Optional[str]:
    """None when ``conv`` is a patch embedding (kernel == stride, no padding/dilation/groups), else why not."""
    if not isinstance(conv, (nn.Conv2d, nn.Conv3d)):
        return f"{type(conv).__name__} is not nn.Conv2d or nn.Conv3d"
    if tuple(conv.kernel_size) != tuple(conv.stride):
        return f"kernel_size {tuple(conv.kernel_size)} != stride {tuple(conv.stride)} (patches would overlap or skip)"
    if conv.padding != "valid" and (isinstance(conv.padding, str) or any(p != 0 for p in conv.padding)):
        return f"padding={conv.padding} (patch embeddings have none)"
    if any(d != 1 for d in conv.dilation):
        return f"dilation={tuple(conv.dilation)}"
    if conv.groups != 1:
        return f"groups={conv.groups}"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    return None


def _check_patch_conv(conv: nn.Module, dims: int) -> None:
    expected = nn.Conv2d if dims == 2 else nn.Conv3d
    if not isinstance(conv, expected):
        raise TypeError(f"from_conv expects nn.Conv{dims}d; got {type(conv).__name__}")
    problem = patch_conv_problem(conv)
    if problem:
        raise ValueError(f"{type(conv).__name__} is not a patch embedding: {problem}")
