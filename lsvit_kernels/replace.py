"""Swap the patch-embedding convs of any model (timm ViT, VideoMAE, ViViT, TimeSformer, Qwen-VL towers, your own)
for the fused op, in one call, with identical outputs and untouched checkpoints.

``replace_patch_embeddings(model)`` finds every ``nn.Conv2d`` / ``nn.Conv3d`` that is a patch embedding
(kernel == stride, no padding, dilation 1, groups 1: ``modules.patch_conv_problem``) and turns it into a
``FusedPatchConv2d`` / ``FusedPatchConv3d`` (``modules.py``: a subclass of the same conv class whose ``forward``
calls ``lsvit_kernels.patch_embed``) with their ``from_conv``. The swap changes the module's class in place (as
``torch.nn.utils.parametrize`` does), so the module object, its parameters (the same tensors), hooks, buffers,
``state_dict`` keys, ``isinstance(m, nn.Conv2d)`` checks and any alias to the module elsewhere in the model all
stay as they were.

The fused module returns what the conv returns, ``(B, E, T', H', W')`` / ``(B, E, H', W')``, as a view of the
op's token-major ``(B, T', N, E)`` buffer (channels-last strides), so the caller's usual
``.flatten(2).transpose(1, 2)`` is a view that is already contiguous: no copy, no extra pass.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional, Union

from torch import nn
from torch.nn.modules.conv import _ConvNd

from .modules import (  # noqa: F401  (fused_patch_conv: the call fx and TorchScript see, importable from here)
    FUSED_FOR,
    FusedPatchConv2d,
    FusedPatchConv3d,
    _check_backend,
    _FusedPatchConv,
    fused_patch_conv,
    patch_conv_problem,
)

NameFilter = Union[str, Iterable[str], Callable[[str, nn.Module], bool], None]


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
    if type(module) not in FUSED_FOR:
        base = next((c.__name__ for c in FUSED_FOR if isinstance(module, c)), None)
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
        fused = FUSED_FOR[type(module)].from_conv(module, backend=backend)
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
