"""Pretrained ViT / video-ViT weights (local files only) into ``LSViTForAction``: timm, Hugging Face ViT,
VideoMAE (original and Hugging Face) and ViViT (Hugging Face) layouts; 3D inflation; ``lsvit train --pretrained``.

What loads: patch embedding, CLS token, positional embedding (bicubic-resampled if the patch grid differs),
every transformer block's norms / attention / MLP, and the final norm. What stays at its initialization: the
classification head (a new task), SMIF and LMI (not in an image model; their gates start near identity, so the
loaded ViT's behaviour is where training starts).

3D models get the 2D patch kernel inflated into the ``t x P x P`` tubelet kernel as in ViViT (Arnab et al. 2021):
``central`` puts the 2D kernel in the middle frame and zeros elsewhere (the model starts as the image model on
each tubelet's central frame); ``average`` repeats it ``t`` times divided by ``t`` (the image model on the
tubelet's mean frame). Both are exact for ``t = 1``.

Video checkpoints: a VideoMAE or ViViT tubelet kernel loads as is when the tubelets match; otherwise it is summed
over time (the response to a static clip) and, for a 3D model, inflated again. VideoMAE's separate ``q_bias`` /
``v_bias`` become ``qkv.bias`` with a zero key bias; its fixed sinusoidal positions are not stored, so the position
tables start new. ViViT's joint space-time positional table is split into the nearest sum of a spatial and a
temporal table (row and column means). A mean-pooling model's ``fc_norm`` loads as the final ``norm``.

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
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from .pos_embed import resample_grid, resample_steps

Inflation = Literal["central", "average"]
PATCH_KEY = "patch_embed.proj.weight"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "checkpoint.pth")
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
    resampled: list[str] = field(default_factory=list)  # "name: from -> to" for tables resized to the model
    inflated: list[str] = field(default_factory=list)  # "name: how" for kernels given a new time extent
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.layout} layout: loaded {len(self.loaded)} tensors"]
        parts.append(f"resampled {len(self.resampled)}: {_short(self.resampled)}")
        parts.append(f"inflated {len(self.inflated)}: {_short(self.inflated)}")
        parts.append(f"new (left at init) {len(self.missing)}: {_short(self.missing)}")
        parts.append(f"unused from the file {len(self.unexpected)}: {_short(self.unexpected)}")
        if self.pos_grid:
            parts.append(f"pos_embed resampled {self.pos_grid[0]} -> {self.pos_grid[1]}")
        if self.skipped:
            parts.append(f"skipped head {self.skipped}")
        parts += self.notes
        return "; ".join(parts)


def _short(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


# ---- reading --------------------------------------------------------------------------------------------------
def read_state_dict(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    """A local checkpoint file (or a Hugging Face model folder) -> flat state dict of tensors (never downloads)."""
    path = os.fspath(path)
    if os.path.isdir(path):  # save_pretrained() folders hold the weights under a fixed name
        found = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(path, name))]
        if not found:
            raise FileNotFoundError(f"folder {path!r} holds none of {list(WEIGHT_FILES)}: pass the weights file")
        path = os.path.join(path, found[0])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (pretrained weights are read from local files only)")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"{path} is safetensors: pip install safetensors, or save it with torch.save") from err
        return load_file(path)
    from .checkpoint import read_file

    obj = read_file(Path(path), "cpu")
    for wrapper in ("model", "module", "state_dict", "model_state"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """ "huggingface" (``vit.embeddings...`` / ``embeddings...``) or "timm" (``patch_embed.proj.weight``)."""
    keys = set(state_dict)
    if any(k.startswith("videomae.") for k in keys):
        return "videomae-huggingface"
    if any(k.startswith("vivit.") for k in keys):
        return "vivit-huggingface"
    if any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in keys):
        return "huggingface"
    if any(k.endswith("attn.q_bias") for k in keys) and any(k.endswith(PATCH_KEY) for k in keys):
        return "videomae"
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


_HF_PREFIXES = ("vit.", "videomae.", "vivit.")


def hf_to_timm(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a Hugging Face ViT / VideoMAE / ViViT state dict to timm's layout.

    Separate query/key/value projections are concatenated into ``qkv`` (rows ``[q; k; v]``, timm's order);
    VideoMAE's bias-free projections with ``q_bias`` / ``v_bias`` get a zero key bias.
    Returns ``(converted, unconverted_keys)``; the latter (pooler, mask token, ...) have no timm equivalent.
    """
    converted: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    unconverted: list[str] = []
    for key, value in state_dict.items():
        name = key
        for prefix in _HF_PREFIXES:
            name = name.removeprefix(prefix)
        if name in _HF_TOP:
            converted[_HF_TOP[name]] = value
            continue
        if name.startswith("fc_norm."):
            converted[name] = value
            continue
        match = _HF_LAYER.fullmatch(name)
        if match is None:
            unconverted.append(key)
            continue
        index, rest = int(match.group(1)), match.group(2)
        part, _, kind = rest.rpartition(".")  # kind: weight / bias, or VideoMAE's q_bias / v_bias
        if part in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
            qkv.setdefault((index, kind), {})[part.rsplit(".", 1)[1]] = value
        elif part == "attention.attention" and kind in ("q_bias", "v_bias"):
            qkv.setdefault((index, "bias"), {})[{"q_bias": "query", "v_bias": "value"}[kind]] = value
        elif part in _HF_LAYER_PARTS:
            converted[f"blocks.{index}.{_HF_LAYER_PARTS[part]}.{kind}"] = value
        else:
            unconverted.append(key)
    for (index, kind), parts in sorted(qkv.items()):
        if kind == "bias" and set(parts) == {"query", "value"}:
            parts["key"] = torch.zeros_like(parts["query"])
        if set(parts) != {"query", "key", "value"}:
            unconverted += [f"encoder.layer.{index}.attention.attention.{p}.{kind}" for p in parts]
            continue
        converted[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return converted, unconverted


def videomae_to_timm(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The original VideoMAE layout (timm-like names; pre-training files put the encoder under ``encoder.``)
    to timm's: ``attn.q_bias`` / ``attn.v_bias`` become ``attn.qkv.bias`` with a zero key bias."""
    pretraining = any(key.startswith("encoder.") for key in state_dict)
    converted: dict[str, Tensor] = {}
    unconverted: list[str] = []
    for key, value in state_dict.items():
        if pretraining and not key.startswith("encoder."):
            unconverted.append(key)  # decoder, encoder_to_decoder, mask_token: pre-training only
            continue
        name = key.removeprefix("encoder.")
        if name.endswith(".attn.v_bias"):
            continue
        if name.endswith(".attn.q_bias"):
            stem = name.removesuffix("q_bias")
            v_bias = state_dict[key.removesuffix("q_bias") + "v_bias"]
            converted[stem + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), v_bias])
            continue
        converted[name] = value
    return converted, unconverted


def to_timm_names(state_dict: Mapping[str, Tensor], layout: str) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """(timm-named tensors, keys with no timm equivalent, notes) for any supported layout."""
    notes: list[str] = []
    if layout == "timm":
        converted, unconverted = dict(state_dict), []
    elif layout == "videomae":
        converted, unconverted = videomae_to_timm(state_dict)
    else:
        converted, unconverted = hf_to_timm(state_dict)
    if "norm.weight" not in converted and "fc_norm.weight" in converted:  # mean-pooling models: norm after pooling
        converted["norm.weight"] = converted.pop("fc_norm.weight")
        converted["norm.bias"] = converted.pop("fc_norm.bias")
        notes.append("fc_norm (norm of the pooled feature) loaded as the final norm")
    return converted, unconverted, notes


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
def adapt_patch_kernel(value: Tensor, target: Tensor, inflation: Inflation) -> tuple[Tensor, Optional[str], bool]:
    """A 2D or tubelet kernel reshaped to the model's: inflated, summed over time, or both.

    Returns (kernel, what was done or None, whether ``inflation`` was used)."""
    if value.dim() == 4 and target.dim() == 5:
        inflated = inflate_patch_weight(value, target.shape[2], inflation)
        return inflated, f"2D -> tubelet {target.shape[2]} ({inflation})", True
    if value.dim() == 5 and target.dim() == 4:
        return value.sum(dim=2), f"tubelet {value.shape[2]} summed over time -> 2D (a static clip's response)", False
    if value.dim() == 5 and target.dim() == 5 and value.shape[2] != target.shape[2]:
        inflated = inflate_patch_weight(value.sum(dim=2), target.shape[2], inflation)
        return inflated, f"tubelet {value.shape[2]} summed, inflated to {target.shape[2]} ({inflation})", True
    return value, None, False


def split_space_time(pos: Tensor, model: torch.nn.Module) -> tuple[Tensor, Tensor, str]:
    """A joint ``(1, 1 + T' N, E)`` table (ViViT) -> spatial ``(1, 1 + N, E)`` and temporal ``(T', E)``.

    ``pos[t, n] ~ spatial[n] + temporal[t]``: the spatial rows are the means over time, the temporal rows the
    means over space minus the grand mean (the least-squares additive fit).
    """
    rows = pos.shape[1] - 1
    grid_rows = model.config.grid_size**2
    steps = model.temporal_pos_embed.shape[0] if model.temporal_pos_embed is not None else None
    if rows % grid_rows == 0:
        time_steps, spatial_rows = rows // grid_rows, grid_rows
    elif steps and rows % steps == 0 and _is_square(rows // steps):
        time_steps, spatial_rows = steps, rows // steps
    else:
        raise ValueError(
            f"checkpoint pos_embed has {rows} rows: neither a square grid nor time steps x the model's "
            f"{grid_rows}-patch grid; build the model with the checkpoint's image_size / num_frames"
        )
    table = pos[0, 1:].reshape(time_steps, spatial_rows, -1)
    spatial = torch.cat([pos[:, :1], table.mean(dim=0, keepdim=True)], dim=1)
    temporal = table.mean(dim=1) - table.mean(dim=(0, 1))
    return spatial, temporal, f"space-time pos_embed split into {spatial_rows} spatial + {time_steps} temporal rows"


def load_pretrained(
    model: torch.nn.Module,
    source: Union[str, os.PathLike, Mapping[str, Tensor]],
    *,
    inflation: Inflation = "central",
) -> LoadReport:
    """Load a ViT / VideoMAE / ViViT checkpoint (timm or Hugging Face layout) into an ``LSViTForAction``.

    Raises ``ValueError`` naming the tensor when a shape cannot be reconciled (different embed_dim, patch
    size or channels): build the model with the checkpoint's ``embed_dim`` / ``num_heads`` / ``patch_size``.
    Extra or missing blocks are reported, not fatal.
    """
    state_dict = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    layout = detect_layout(state_dict)
    state_dict, unconverted, notes = to_timm_names(state_dict, layout)
    report = LoadReport(layout=layout, unexpected=list(unconverted), notes=notes)
    own = model.state_dict()
    to_load: dict[str, Tensor] = {}
    pos = state_dict.get("pos_embed")
    if pos is not None and "pos_embed" in own:
        pos = pos.reshape(1, -1, pos.shape[-1])
        if layout.startswith("vivit"):  # a joint space-time table
            pos, temporal, note = split_space_time(pos, model)
            state_dict["pos_embed"] = pos
            report.notes.append(note)
            if "temporal_pos_embed" in own:
                target = own["temporal_pos_embed"]
                to_load["temporal_pos_embed"] = resample_steps(temporal, target.shape[0]).to(target.dtype)
                if temporal.shape[0] != target.shape[0]:
                    report.resampled.append(f"temporal_pos_embed: {temporal.shape[0]} -> {target.shape[0]} steps")
    for key, value in state_dict.items():
        if key.startswith(_HEAD_PREFIXES):
            report.skipped.append(key)
            continue
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if key == PATCH_KEY:
            value, how, inflated = adapt_patch_kernel(value, target, inflation)
            if how:
                report.inflated.append(f"{key}: {how}")
            if inflated:
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
                report.resampled.append(f"pos_embed: {old_grid[0]}x{old_grid[1]} -> {new_grid[0]}x{new_grid[1]} grid")
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
