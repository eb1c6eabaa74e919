"""Swap the patch-embedding convs of any model (timm ViT, VideoMAE, ViViT, TimeSformer, Qwen-VL towers, your own)
for the fused op, in one call, with identical outputs and untouched checkpoints.

``replace_patch_embeddings(model)`` finds every ``nn.Conv2d`` / ``nn.Conv3d`` that is a patch embedding
(kernel == stride, no padding, dilation 1, groups 1: ``modules.patch_conv_problem``) and turns it into a
``FusedPatchConv2d`` / ``FusedPatchConv3d``: a subclass of the same conv class whose ``forward`` calls
``lsvit_kernels.patch_embed``. The swap changes the module's class in place (as ``torch.nn.utils.parametrize``
does), so the module object, its parameters (the same tensors), hooks, buffers, ``state_dict`` keys,
``isinstance(m, nn.Conv2d)`` checks and any alias to the module elsewhere in the model all stay as they were.

The fused module returns what the conv returns, ``(B, E, T', H', W')`` / ``(B, E, H', W')``, as a view of the
op's token-major ``(B, T', N, E)`` buffer (channels-last strides), so the caller's usual
``.flatten(2).transpose(1, 2)`` is a view that is already contiguous: no copy, no extra pass.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from . import registry
from .modules import patch_conv_problem
from .ops import patch_embed

NameFilter = Union[str, Iterable[str], Callable[[str, nn.Module], bool], None]


def fused_patch_conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], backend: Optional[str]) -> Tensor:
    """``F.conv2d`` / ``F.conv3d(input, weight, bias, stride=kernel)`` of a patch-embedding conv, computed by the
    fused op: ``(B, E, [T',] H', W')`` as a channels-last view of the op's ``(B, [T',] N, E)`` tokens.

    The forward of ``FusedPatchConv2d`` / ``FusedPatchConv3d``. It is TorchScript-compatible (scripted, it calls
    ``torch.ops.lsvit.patch_embed`` directly) and a leaf for ``torch.fx`` (``torch.fx.wrap`` below), so scripting,
    symbolic tracing and feature extractors see one call instead of its shape-dependent control flow.
    """
    if not torch.jit.is_scripting():
        input, weight, bias = _autocast_like_conv(input, weight, bias)
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
        # Autocast's casts happened above (as the conv's would); the op must not see them a second time.
        with torch.autocast(video.device.type, enabled=False) if _autocast_on(video) else contextlib.nullcontext():
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
    """The fused forward shared by ``FusedPatchConv2d`` and ``FusedPatchConv3d`` (mixed in before the conv)."""

    # Types for TorchScript (real objects, not strings); ``bias`` repeats the conv's own annotation, which this
    # class's ``__annotations__`` would otherwise hide.
    __annotations__ = {"bias": Optional[Tensor], "backend": Optional[str]}

    def forward(self, input: Tensor) -> Tensor:
        return fused_patch_conv(input, self.weight, self.bias, self.backend)

    def extra_repr(self) -> str:
        backend = "auto" if self.backend is None else repr(self.backend)
        return f"{super().extra_repr()}, fused=lsvit_kernels.patch_embed, backend={backend}"

    def __init__(self, *args, backend: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        problem = patch_conv_problem(self)
        if problem:
            raise ValueError(f"{type(self).__name__} must be a patch embedding: {problem}")
        _check_backend(backend)
        self.backend = backend

    @classmethod
    def from_conv(cls, conv: nn.Module, *, backend: Optional[str] = None):
        """Turn ``conv`` itself into this class and return it: same object, parameters, hooks and state_dict."""
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
    """``nn.Conv2d`` with kernel == stride, computed by ``lsvit_kernels.patch_embed``; output is a channels-last
    view of the token buffer, so ``out.flatten(2).transpose(1, 2)`` is free and contiguous."""

    _conv_class = nn.Conv2d


class FusedPatchConv3d(_FusedPatchConv, nn.Conv3d):
    """``nn.Conv3d`` with kernel == stride (tubelets), computed by ``lsvit_kernels.patch_embed``; output is a
    channels-last view of the token buffer, so ``out.flatten(2).transpose(1, 2)`` is free and contiguous."""

    _conv_class = nn.Conv3d


_FUSED_FOR = {nn.Conv2d: FusedPatchConv2d, nn.Conv3d: FusedPatchConv3d}


def _check_backend(backend: Optional[str]) -> None:
    """An unknown backend name fails when the module is made, not at its first forward."""
    if backend is not None:
        registry.get_backend(backend)


def _autocast_on(t: Tensor) -> bool:
    device_type = t.device.type
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _autocast_like_conv(
    input: Tensor, weight: Tensor, bias: Optional[Tensor]
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Cast as autocast casts a conv's arguments: every float tensor but float64 goes to the autocast dtype.

    Convolutions are on autocast's lower-precision list on every device, so under ``torch.autocast`` the conv
    ran in the autocast dtype and returned it; the fused op then does the same. The casts are differentiable, so
    gradients reach the float32 parameters as they would through the conv.
    """
    if not _autocast_on(input):
        return input, weight, bias
    dtype = torch.get_autocast_dtype(input.device.type)

    def cast(t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None or not t.is_floating_point() or t.dtype == torch.float64:
            return t
        return t.to(dtype)

    return cast(input), cast(weight), cast(bias)


@dataclass
class ReplacementReport:
    """What ``replace_patch_embeddings`` did: ``(qualified name, description)`` per conv replaced, and
    ``(qualified name, reason)`` per conv left alone. ``model`` is the model that holds the fused modules."""

    replaced: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    model: Optional[nn.Module] = field(default=None, repr=False, compare=False)

    @property
    def replaced_names(self) -> list[str]:
        return [name for name, _ in self.replaced]

    @property
    def skipped_names(self) -> list[str]:
        return [name for name, _ in self.skipped]

    def __str__(self) -> str:
        lines = [f"lsvit_kernels: {len(self.replaced)} patch-embedding conv(s) replaced by the fused op"]
        lines += [f"  {_display(name)}: {what}" for name, what in self.replaced]
        if self.skipped:
            lines.append(f"{len(self.skipped)} conv(s) left alone")
            lines += [f"  {_display(name)}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def _display(name: str) -> str:
    return name or "<root module>"


def _matcher(spec: NameFilter, option: str) -> Optional[Callable[[str, nn.Module], bool]]:
    """None (no filter), or a predicate from glob patterns on the qualified name, or the caller's predicate."""
    if spec is None:
        return None
    if callable(spec):
        return spec
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{option}= takes glob patterns (str or list of str) or a callable(name, module) -> bool")
    return lambda name, _module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _skip_reason(
    name: str,
    module: nn.Module,
    include: Optional[Callable[[str, nn.Module], bool]],
    exclude: Optional[Callable[[str, nn.Module], bool]],
    include_pointwise: bool,
) -> Optional[str]:
    """None when ``module`` is to be replaced, else why not (in the report)."""
    if isinstance(module, _FusedPatchConv):
        return f"already a {type(module).__name__}"
    if type(module) not in _FUSED_FOR:
        base = next((c.__name__ for c in _FUSED_FOR if isinstance(module, c)), None)
        if base is not None:
            return (
                f"{type(module).__qualname__} subclasses nn.{base} and may change its forward; only exact "
                f"nn.Conv2d / nn.Conv3d are replaced"
            )
        return patch_conv_problem(module)  # Conv1d, ConvTranspose...: "is not nn.Conv2d or nn.Conv3d"
    problem = patch_conv_problem(module)
    if problem:
        return problem
    if all(k == 1 for k in module.kernel_size) and not include_pointwise:
        return (
            f"kernel_size {tuple(module.kernel_size)} is a pointwise projection, not a patch embedding "
            f"(include_pointwise=True replaces it too)"
        )
    if include is not None and not include(name, module):
        return "not matched by include="
    if exclude is not None and exclude(name, module):
        return "matched by exclude="
    return None


def replace_patch_embeddings(
    model: nn.Module,
    *,
    backend: Optional[str] = None,
    include: NameFilter = None,
    exclude: NameFilter = None,
    include_pointwise: bool = False,
    inplace: bool = True,
) -> ReplacementReport:
    """Make every conv patch embedding in ``model`` run on the fused op; return a report of what changed.

    Args:
        model: any ``nn.Module`` (the model itself may be the conv).
        backend: backend name for the fused modules (None: automatic choice per call, see ``registry``).
        include: only convs whose qualified name matches one of these glob patterns (``fnmatch``, e.g.
            ``"patch_embed.*"``), or for which ``include(name, module)`` is True, are replaced.
        exclude: convs matching these patterns (or the predicate) are left alone.
        include_pointwise: also replace 1x1(x1) convs, which meet the patch conditions but are channel mixers.
        inplace: True swaps the modules of ``model`` itself (parameters stay the very same tensors); False
            deep-copies the model first and leaves ``model`` untouched.

    Returns:
        ``ReplacementReport`` with ``replaced`` / ``skipped`` ``(qualified name, description)`` lists and
        ``model`` (``model`` itself when ``inplace``, else the copy). ``print(report)`` shows both lists.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_patch_embeddings expects an nn.Module; got {type(model).__name__}")
    _check_backend(backend)
    include_fn, exclude_fn = _matcher(include, "include"), _matcher(exclude, "exclude")
    target = model if inplace else copy.deepcopy(model)
    report = ReplacementReport(model=target)
    # named_modules visits a module shared under two names once, so it is swapped (and reported) once.
    for name, module in list(target.named_modules()):
        if not isinstance(module, _ConvNd):
            continue
        reason = _skip_reason(name, module, include_fn, exclude_fn, include_pointwise)
        if reason is not None:
            report.skipped.append((name, reason))
            continue
        before = repr(module)
        fused = _FUSED_FOR[type(module)].from_conv(module, backend=backend)
        report.replaced.append((name, f"{before} -> {type(fused).__name__}"))
    return report


def restore_patch_embeddings(model: nn.Module) -> list[str]:
    """Undo ``replace_patch_embeddings`` in place; returns the qualified names restored to plain convs."""
    restored = []
    for name, module in list(model.named_modules()):
        if isinstance(module, _FusedPatchConv):
            module.to_conv()
            restored.append(name)
    return restored
