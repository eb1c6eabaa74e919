"""The patch-embedding modules: ``nn.Conv2d`` / ``nn.Conv3d`` with kernel == stride, computed by the fused op.

``FusedPatchConv2d`` / ``FusedPatchConv3d`` subclass the conv and override only ``forward``, so they are drop-ins
in every sense a model relies on: the constructor, ``state_dict`` (``weight`` in conv layout, ``bias``), the
initialization, ``isinstance(m, nn.Conv2d)``, the call ``module(x)`` and what it returns, ``(B, E, [T',] H', W')``.
That output is a channels-last view of the op's token-major buffer, so the caller's usual
``.flatten(2).transpose(1, 2)`` is a view that is already contiguous.

``module.tokens(video, pos_embed, cls_token)`` is the op's full form on the same parameters: tokens
``(B, T', S + N, E)`` with the CLS slot and positional embedding written in the same pass, either video layout,
raw uint8 pixels with ``mean`` / ``std`` folded into the projection, and extra input channels with their own
weight (LSViT's motion channels).

``from_conv(conv)`` turns an existing conv into the fused class in place (as ``torch.nn.utils.parametrize``
does): the object, its parameters (the same tensors), hooks, ``state_dict`` keys and every alias to it stay.
``lsvit_kernels.replace_patch_embeddings`` does that for every patch conv of a model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import geometry, registry
from .ops import channel_values, patch_embed


def fused_patch_conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], backend: Optional[str]) -> Tensor:
    """``F.conv2d`` / ``F.conv3d(input, weight, bias, stride=kernel)`` of a patch-embedding conv, computed by the
    fused op: ``(B, E, [T',] H', W')`` as a channels-last view of the op's ``(B, [T',] N, E)`` tokens.

    The forward of ``FusedPatchConv2d`` / ``FusedPatchConv3d``. It is TorchScript-compatible (scripted, it calls
    ``torch.ops.lsvit.patch_embed`` directly) and a leaf for ``torch.fx`` (``torch.fx.wrap`` below), so scripting,
    symbolic tracing and feature extractors see one call instead of its shape-dependent control flow. Autocast
    is the op's own dispatcher kernel (ops.py), so it applies on every path, scripted ones included.
    """
    if not _fusable(input, weight):
        # Whatever the op cannot take (wrong rank, channels, dtype, too small) is the conv's business: it
        # computes or raises exactly as before the swap.
        return _conv(input, weight, bias)
    nd = weight.dim() - 2  # dimensions the kernel slides over
    unbatched = input.dim() == nd + 1
    video = input.unsqueeze(0) if unbatched else input
    shape = [video.shape[0]]  # B, then T', H', W' (or H', W'), then E
    for i in range(nd):  # the conv drops the remainder of a size not divisible by the stride: a view, no copy
        steps = video.shape[2 + i] // weight.shape[2 + i]
        video = video.narrow(2 + i, 0, steps * weight.shape[2 + i])
        shape.append(steps)
    shape.append(weight.shape[0])
    if torch.jit.is_scripting():
        video5, weight5 = (video.unsqueeze(2), weight.unsqueeze(2)) if nd == 2 else (video, weight)
        tokens = torch.ops.lsvit.patch_embed(video5.transpose(1, 2), weight5.contiguous(), bias, None, None, backend)
    else:
        tokens = patch_embed(video, weight, bias, layout="BCTHW", backend=backend)
    out = tokens.view(shape).movedim(nd + 1, 1)  # (B, E, *grid), channels-last strides
    return out.squeeze(0) if unbatched else out


torch.fx.wrap("fused_patch_conv")


def _fusable(video: Tensor, weight: Tensor) -> bool:
    """True when the op computes what the conv would for this input (TorchScript-compatible)."""
    nd = weight.dim() - 2
    if video.dim() != nd + 1 and video.dim() != nd + 2:
        return False
    dtype = weight.dtype  # comparisons, not `in`: a scripted `in (...)` does not export to ONNX
    op_dtype = dtype == torch.float32 or dtype == torch.float16 or dtype == torch.bfloat16 or dtype == torch.float64
    if not op_dtype or video.dtype != dtype or video.device != weight.device:
        return False
    channel_dim = video.dim() - nd - 1
    if video.shape[channel_dim] != weight.shape[1]:
        return False
    for i in range(nd):
        if video.shape[channel_dim + 1 + i] < weight.shape[2 + i]:
            return False
    return True


def _conv(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The patch-embedding conv's own forward: kernel == stride, no padding, dilation 1, groups 1."""
    if weight.dim() == 4:
        return F.conv2d(input, weight, bias, stride=weight.shape[2:])
    return F.conv3d(input, weight, bias, stride=weight.shape[2:])


class _FusedPatchConv:
    """What ``FusedPatchConv2d`` and ``FusedPatchConv3d`` add to the conv they subclass (mixed in before it)."""

    # Types for TorchScript (real objects, not strings); ``bias`` repeats the conv's own annotation, which this
    # class's ``__annotations__`` would otherwise hide.
    __annotations__ = {"bias": Optional[Tensor], "backend": Optional[str]}
    __jit_unused_properties__ = ["embed_dim", "patch_size", "tubelet_size"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: Optional[int | Sequence[int]] = None,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        backend: Optional[str] = None,
    ) -> None:
        """The conv's constructor; ``stride`` defaults to ``kernel_size``, the only stride a patch embedding has.
        ``backend``: a registered backend name for every call, or None for the automatic choice."""
        stride = kernel_size if stride is None else stride
        super().__init__(  # the conv class that follows this mixin
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        problem = patch_conv_problem(self)
        if problem:
            raise ValueError(f"{type(self).__name__} must be a patch embedding: {problem}")
        _check_backend(backend)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return fused_patch_conv(input, self.weight, self.bias, self.backend)

    def tokens(
        self,
        video: Tensor,
        pos_embed: Optional[Tensor] = None,
        cls_token: Optional[Tensor] = None,
        *,
        layout: str = "BCTHW",
        mean: Optional[Sequence[float] | Tensor] = None,
        std: Optional[Sequence[float] | Tensor] = None,
        extra_channels: Optional[Tensor] = None,
        extra_weight: Optional[Tensor] = None,
    ) -> Tensor:
        """Tokens ``(B, T', S + N, E)`` (``(B, S + N, E)`` for a 4D image) of this conv's patches, with the CLS
        slot and positional embedding written in the same pass; see ``lsvit_kernels.patch_embed`` for
        ``pos_embed``, ``cls_token``, ``layout`` (the conv's own channels-first order by default) and ``mean`` /
        ``std`` (uint8 video).

        ``extra_channels`` (the video's shape with its own channel count C') enters as more input channels,
        projected by ``extra_weight`` (this weight's shape with C' input channels): the op sees
        ``[video ; extra_channels]`` and ``[weight, extra_weight]``, one pass, no second projection.
        """
        weight = self.weight
        if (extra_channels is None) != (extra_weight is None):
            raise ValueError("give both extra_channels and extra_weight (the weight that projects them), or neither")
        if extra_channels is not None:
            channel_dim = 2 if (video.dim() == 5 and layout == "BTCHW") else 1
            _check_extra(video, extra_channels, channel_dim, weight, extra_weight)
            video = torch.cat([video, extra_channels], dim=channel_dim)
            weight = torch.cat([weight, extra_weight], dim=1)
        return patch_embed(
            video,
            weight,
            self.bias,
            pos_embed,
            cls_token=cls_token,
            layout=layout,
            mean=mean,
            std=std,
            backend=self.backend,
        )

    @property
    def embed_dim(self) -> int:
        return self.out_channels

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.kernel_size[-2:])

    @property
    def tubelet_size(self) -> int:
        """Frames per token: the kernel's time extent (1 for the 2D conv, which embeds every frame)."""
        return self.kernel_size[0] if len(self.kernel_size) == 3 else 1

    def extra_repr(self) -> str:
        backend = "auto" if self.backend is None else repr(self.backend)
        return f"{super().extra_repr()}, fused=lsvit_kernels.patch_embed, backend={backend}"

    @classmethod
    def from_conv(cls, conv: nn.Module, *, backend: Optional[str] = None):
        """Turn ``conv`` itself into this class and return it: same object, parameters, hooks and state_dict.

        Use ``copy.deepcopy(conv)`` first to keep the original. ``to_conv()`` undoes it.
        """
        if type(conv) is not cls._conv_class:
            raise TypeError(f"{cls.__name__}.from_conv expects an nn.{cls._conv_class.__name__}; got {type(conv)}")
        problem = patch_conv_problem(conv)
        if problem:
            raise ValueError(f"{type(conv).__name__} is not a patch embedding: {problem}")
        _check_backend(backend)
        conv.__class__ = cls
        conv.backend = backend
        return conv

    def to_conv(self) -> nn.Module:
        """Undo ``from_conv`` in place: the module is a plain ``nn.Conv2d`` / ``nn.Conv3d`` again."""
        del self.backend
        self.__class__ = self._conv_class
        return self


class FusedPatchConv2d(_FusedPatchConv, nn.Conv2d):
    """``nn.Conv2d`` with kernel == stride (``P x P`` patches), computed by ``lsvit_kernels.patch_embed``.

    ``module(x)`` is the conv's call; ``module.tokens(video, pos_embed, cls_token)`` embeds an image
    ``(B, C, H, W)`` -> ``(B, S + N, E)`` or every frame of a video -> ``(B, T, S + N, E)``.
    """

    _conv_class = nn.Conv2d


class FusedPatchConv3d(_FusedPatchConv, nn.Conv3d):
    """``nn.Conv3d`` with kernel == stride (``t x P x P`` tubelets), computed by ``lsvit_kernels.patch_embed``.

    ``module(x)`` is the conv's call; ``module.tokens(video, pos_embed, cls_token)`` embeds a video
    -> ``(B, T / t, S + N, E)``.
    """

    _conv_class = nn.Conv3d


FUSED_FOR = {nn.Conv2d: FusedPatchConv2d, nn.Conv3d: FusedPatchConv3d}


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


def _check_backend(backend: Optional[str]) -> None:
    """An unknown backend name fails when the module is made, not at its first forward."""
    if backend is not None:
        registry.get_backend(backend)


def _check_extra(video: Tensor, extra: Tensor, channel_dim: int, weight: Tensor, extra_weight: Tensor) -> None:
    """extra_channels shaped like the video but for its channels, extra_weight like the weight but for its inputs."""
    if extra.dim() != video.dim() or any(
        a != b for i, (a, b) in enumerate(zip(extra.shape, video.shape)) if i != channel_dim
    ):
        raise ValueError(
            f"extra_channels {list(extra.shape)} must match the video {list(video.shape)} in every dimension but "
            f"the channels (dim {channel_dim})"
        )
    expected = (weight.shape[0], extra.shape[channel_dim], *weight.shape[2:])
    if tuple(extra_weight.shape) != expected:
        raise ValueError(
            f"extra_weight must be {list(expected)} (E, the {extra.shape[channel_dim]} extra channels, the kernel); "
            f"got {list(extra_weight.shape)}"
        )


# ---- deprecated names ----------------------------------------------------------------------------------------


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    ph, pw = size
    return (int(ph), int(pw))


def _warn_deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"lsvit_kernels.{old} is deprecated; use lsvit_kernels.{new}, the conv drop-in: module(x) is the conv's "
        f"call and module.tokens(video, pos_embed, cls_token, layout=..., mean=..., std=...) gives what "
        f"{old}'s forward gave. {new}.from_conv(conv) converts the conv itself instead of wrapping it",
        DeprecationWarning,
        stacklevel=3,
    )


class _DeprecatedPatchEmbed:
    """``forward`` is ``tokens`` with the options fixed at construction (the older module API)."""

    def _set_options(self, layout: str, mean, std) -> None:
        if layout not in geometry.LAYOUTS:
            raise ValueError(f"layout={layout!r} is not supported; use one of {geometry.LAYOUTS}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        # Plain tuples, not buffers: they stay exact under module.to(dtype) and out of the state_dict.
        self.layout = layout
        self.mean = None if mean is None else channel_values("mean", mean, self.in_channels)
        self.std = None if std is None else channel_values("std", std, self.in_channels)

    def forward(self, video: Tensor, pos_embed: Optional[Tensor] = None, cls_token: Optional[Tensor] = None) -> Tensor:
        return self.tokens(video, pos_embed, cls_token, layout=self.layout, mean=self.mean, std=self.std)

    @classmethod
    def _wrap(cls, conv: nn.Module, dims: int, kwargs: dict):
        """A new module sharing ``conv``'s parameters, video layout BCTHW unless given (the older from_conv)."""
        expected = nn.Conv2d if dims == 2 else nn.Conv3d
        if not isinstance(conv, expected):
            raise TypeError(f"from_conv expects nn.Conv{dims}d; got {type(conv).__name__}")
        problem = patch_conv_problem(conv)
        if problem:
            raise ValueError(f"{type(conv).__name__} is not a patch embedding: {problem}")
        allowed = {"layout", "mean", "std", "backend"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"from_conv got unexpected options {sorted(unknown)}; allowed: {sorted(allowed)}")
        shape = conv.weight.shape
        sizes = (shape[2:],) if dims == 2 else (shape[3:], shape[2])
        options = {k: kwargs.get(k) for k in ("mean", "std", "backend")}
        layout = kwargs.get("layout", "BCTHW")
        device = conv.weight.device
        module = cls(shape[1], shape[0], *sizes, bias=conv.bias is not None, layout=layout, device=device, **options)
        module.weight, module.bias = conv.weight, conv.bias
        return module


class PatchEmbed2d(_DeprecatedPatchEmbed, FusedPatchConv2d):
    """Deprecated: ``FusedPatchConv2d(C, E, P)``, whose ``tokens(video, pos_embed, cls_token)`` this forward is."""

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
        _warn_deprecated("PatchEmbed2d", "FusedPatchConv2d")
        kernel = _pair(patch_size)
        super().__init__(in_channels, embed_dim, kernel, bias=bias, device=device, dtype=dtype, backend=backend)
        self._set_options(layout, mean, std)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> PatchEmbed2d:
        return cls._wrap(conv, 2, kwargs)


class PatchEmbed3d(_DeprecatedPatchEmbed, FusedPatchConv3d):
    """Deprecated: ``FusedPatchConv3d(C, E, (t, P, P))``, whose ``tokens(video, pos_embed, cls_token)`` this
    forward is."""

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
        _warn_deprecated("PatchEmbed3d", "FusedPatchConv3d")
        if tubelet_size < 1:
            raise ValueError(f"tubelet_size={tubelet_size} must be >= 1")
        kernel = (tubelet_size, *_pair(patch_size))
        super().__init__(in_channels, embed_dim, kernel, bias=bias, device=device, dtype=dtype, backend=backend)
        self._set_options(layout, mean, std)

    @classmethod
    def from_conv(cls, conv: nn.Conv3d, **kwargs) -> PatchEmbed3d:
        return cls._wrap(conv, 3, kwargs)
