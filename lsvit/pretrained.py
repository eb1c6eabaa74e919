"""ImageNet ViT weights (local files only) into ``LSViTForAction``: timm and Hugging Face layouts, 3D inflation.

What loads: patch embedding, CLS token, positional embedding (bicubic-resampled if the patch grid differs),
every transformer block's norms / attention / MLP, and the final norm. What stays at its initialization: the
classification head (a new task), SMIF and LMI (not in an image model; their gates start near identity, so the
loaded ViT's behaviour is where training starts).

3D models get the 2D patch kernel inflated into the ``t x P x P`` tubelet kernel as in ViViT (Arnab et al. 2021):
``central`` puts the 2D kernel in the middle frame and zeros elsewhere (the model starts as the image model on
each tubelet's central frame); ``average`` repeats it ``t`` times divided by ``t`` (the image model on the
tubelet's mean frame). Both are exact for ``t = 1``.

Nothing is downloaded: pass a path to a ``torch.save``-d state dict (``.pt`` / ``.pth`` / ``.bin``; wrappers with a
``"model"`` or ``"state_dict"`` entry are unwrapped) or ``.safetensors`` (needs the ``safetensors`` package), or
the state dict itself.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from .pos_embed import resample_grid

Inflation = Literal["central", "average"]
PATCH_KEY = "patch_embed.proj.weight"
_HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.")  # timm classifier parts: the model gets a new head


@dataclass
class LoadReport:
    """What ``load_pretrained`` did. ``missing``: model keys left at initialization; ``unexpected``: checkpoint
    keys with no place in the model; ``skipped``: checkpoint keys deliberately not loaded (the ImageNet head)."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pos_grid: Optional[tuple[tuple[int, int], tuple[int, int]]] = None  # (checkpoint grid, model grid) if resampled
    inflation: Optional[str] = None  # "central" / "average" when a 2D kernel was inflated to a tubelet
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.layout} layout: loaded {len(self.loaded)} tensors"]
        if self.pos_grid:
            parts.append(f"pos_embed resampled {self.pos_grid[0]} -> {self.pos_grid[1]}")
        if self.inflation:
            parts.append(f"patch kernel inflated ({self.inflation})")
        parts.append(f"missing (left at init) {len(self.missing)}: {_short(self.missing)}")
        parts.append(f"unexpected {len(self.unexpected)}: {_short(self.unexpected)}")
        if self.skipped:
            parts.append(f"skipped head {self.skipped}")
        parts += self.notes
        return "; ".join(parts)


def _short(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


# ---- reading --------------------------------------------------------------------------------------------------
def read_state_dict(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    """A local checkpoint file -> flat state dict of tensors (never downloads)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (pretrained weights are read from local files only)")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"{path} is safetensors: pip install safetensors, or save it with torch.save") from err
        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "model_state"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """ "huggingface" (``vit.embeddings...`` / ``embeddings...``) or "timm" (``patch_embed.proj.weight``)."""
    keys = set(state_dict)
    if any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in keys):
        return "huggingface"
    if PATCH_KEY in keys:
        return "timm"
    raise ValueError(
        f"unrecognized checkpoint layout: expected timm keys ({PATCH_KEY!r}, 'blocks.0.attn.qkv.weight', ...) or "
        f"Hugging Face ViT keys ('vit.embeddings.patch_embeddings.projection.weight', ...); first keys: "
        f"{sorted(keys)[:5]}"
    )


# ---- Hugging Face -> timm -------------------------------------------------------------------------------------
_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_HF_LAYER_PARTS = {
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def hf_to_timm(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a Hugging Face ``ViTModel`` / ``ViTForImageClassification`` state dict to timm's layout.

    Separate query/key/value projections are concatenated into ``qkv`` (rows ``[q; k; v]``, timm's order).
    Returns ``(converted, unconverted_keys)``; the latter (pooler, mask token, ...) have no timm equivalent.
    """
    converted: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    unconverted: list[str] = []
    for key, value in state_dict.items():
        name = key.removeprefix("vit.")
        if name in _HF_TOP:
            converted[_HF_TOP[name]] = value
            continue
        match = _HF_LAYER.fullmatch(name)
        if match is None:
            unconverted.append(key)
            continue
        index, rest = int(match.group(1)), match.group(2)
        part, _, kind = rest.rpartition(".")  # kind: weight / bias
        if part in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
            qkv.setdefault((index, kind), {})[part.rsplit(".", 1)[1]] = value
        elif part in _HF_LAYER_PARTS:
            converted[f"blocks.{index}.{_HF_LAYER_PARTS[part]}.{kind}"] = value
        else:
            unconverted.append(key)
    for (index, kind), parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:
            unconverted += [f"vit.encoder.layer.{index}.attention.attention.{p}.{kind}" for p in parts]
            continue
        converted[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return converted, unconverted


# ---- tensors that need reshaping ------------------------------------------------------------------------------
def inflate_patch_weight(weight: Tensor, tubelet_size: int, method: Inflation = "central") -> Tensor:
    """2D patch kernel ``(E, C, P, P)`` -> tubelet kernel ``(E, C, t, P, P)`` (ViViT inflation).

    ``central``: the kernel at frame ``t // 2``, zeros elsewhere. ``average``: the kernel / t at every frame.
    Either way a clip of ``t`` identical frames gives the 2D embedding of that frame.
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a 2D patch kernel (E, C, P, P); got shape {list(weight.shape)}")
    if tubelet_size < 1:
        raise ValueError(f"tubelet_size={tubelet_size} must be >= 1")
    if method == "central":
        inflated = weight.new_zeros(weight.shape[:2] + (tubelet_size,) + weight.shape[2:])
        inflated[:, :, tubelet_size // 2] = weight
        return inflated
    if method == "average":
        return weight.unsqueeze(2).expand(-1, -1, tubelet_size, -1, -1) / tubelet_size
    raise ValueError(f"inflation={method!r} is not supported; use 'central' or 'average'")


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _grid_of_pos(rows: int) -> tuple[int, int]:
    side = math.isqrt(rows)
    if side * side != rows:
        raise ValueError(f"checkpoint pos_embed has {rows} grid rows: not a square grid")
    return (side, side)


# ---- loading --------------------------------------------------------------------------------------------------
def load_pretrained(
    model: torch.nn.Module,
    source: Union[str, os.PathLike, Mapping[str, Tensor]],
    *,
    inflation: Inflation = "central",
) -> LoadReport:
    """Load an ImageNet ViT checkpoint (timm or Hugging Face layout) into an ``LSViTForAction``.

    Raises ``ValueError`` naming the tensor when a shape cannot be reconciled (different embed_dim, patch
    size or channels): build the model with the checkpoint's ``embed_dim`` / ``num_heads`` / ``patch_size``.
    Extra or missing blocks are reported, not fatal.
    """
    state_dict = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    layout = detect_layout(state_dict)
    if layout == "huggingface":
        state_dict, unconverted = hf_to_timm(state_dict)
    else:
        unconverted = []
    report = LoadReport(layout=layout, unexpected=list(unconverted))
    own = model.state_dict()
    to_load: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_HEAD_PREFIXES):
            report.skipped.append(key)
            continue
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if key == PATCH_KEY and value.dim() == 4 and target.dim() == 5:
            value = inflate_patch_weight(value, target.shape[2], inflation)
            report.inflation = inflation
        elif key == "pos_embed" and value.shape != target.shape:
            value = value.reshape(1, -1, value.shape[-1])
            if _is_square(value.shape[1]) and not _is_square(value.shape[1] - 1):
                # timm's no_embed_class models keep no CLS row: the CLS slot starts with no position
                value = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
                report.notes.append("pos_embed had no CLS row: a zero row was put in front")
            old_grid = _grid_of_pos(value.shape[-2] - 1)
            new_grid = _grid_of_pos(target.shape[-2] - 1)
            if value.shape[-1] == target.shape[-1]:
                value = resample_grid(value, new_grid, old_grid)
                report.pos_grid = (old_grid, new_grid)
        if value.shape != target.shape:
            raise ValueError(
                f"checkpoint tensor {key!r} has shape {list(value.shape)} but the model expects "
                f"{list(target.shape)}; build the model with the checkpoint's embed_dim, num_heads, mlp_ratio, "
                f"patch_size and in_channels"
            )
        to_load[key] = value.to(target.dtype)
    result = model.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # filtered above against model.state_dict()
    report.loaded = sorted(to_load)
    report.missing = sorted(result.missing_keys)
    return report
