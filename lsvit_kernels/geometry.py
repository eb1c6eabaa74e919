"""Patch geometry: grids, token counts, and the op's argument checks (shapes, dtypes, devices) with their messages.

This is the only place that knows how a video is cut into patches, and the only place that validates the op's
arguments: ``patch_embed`` calls ``checked_operands`` once, at the public boundary; kernels and
fake implementations take the already checked arguments' grid from ``grid_of`` and keep only short invariant
checks of their own.

Conventions (see docs/op.md):
- The op sees the video in *logical* ``(B, T, C, H, W)`` order with any strides; a ``(B, C, T, H, W)`` video is
  passed as a permuted view, never copied.
- The weight is in ``nn.Conv3d`` layout ``(E, C, t, ph, pw)``; a ``nn.Conv2d`` weight ``(E, C, ph, pw)`` is the
  ``t = 1`` case. K is flattened in ``(c, dt, dh, dw)`` order, the order of ``conv.weight.view(E, -1)``.
- Tokens are written as ``(B, T', S + N, E)``: ``T' = T / t`` time steps, ``N = (H / ph) (W / pw)`` spatial
  patches in row-major order, and ``S = 1`` leading CLS slot per step when a CLS token is given, else ``S = 0``.
- ``pos_embed`` has ``S + N`` rows (one per slot, broadcast over time) or ``T' (S + N)`` rows (one per token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch

LAYOUTS = ("BTCHW", "BCTHW")


@dataclass(frozen=True)
class PatchGrid:
    """How one video is cut into tubelets, and the shape of the token tensor that results."""

    batch: int
    frames: int
    channels: int
    height: int
    width: int
    embed_dim: int
    tubelet: int
    patch_h: int
    patch_w: int
    cls_slots: int = 0  # 1 when a CLS slot leads each time step

    @property
    def steps(self) -> int:
        """T': time steps (tubelets along time)."""
        return self.frames // self.tubelet

    @property
    def grid_h(self) -> int:
        return self.height // self.patch_h

    @property
    def grid_w(self) -> int:
        return self.width // self.patch_w

    @property
    def num_spatial(self) -> int:
        """N: patches per time step."""
        return self.grid_h * self.grid_w

    @property
    def tokens_per_step(self) -> int:
        """S + N: rows per time step in the output, CLS slot included."""
        return self.cls_slots + self.num_spatial

    @property
    def num_patches(self) -> int:
        """T' * N: patch tokens per clip (CLS slots excluded)."""
        return self.steps * self.num_spatial

    @property
    def patch_dim(self) -> int:
        """K = C * t * ph * pw: the GEMM's reduction length."""
        return self.channels * self.tubelet * self.patch_h * self.patch_w

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.steps, self.tokens_per_step, self.embed_dim)

    def pos_rows_allowed(self) -> tuple[int, int]:
        """Row counts pos_embed may have: per slot (broadcast over time) or per token."""
        return (self.tokens_per_step, self.steps * self.tokens_per_step)

    def pos_is_per_token(self, pos_rows: int) -> bool:
        """True when pos_embed has one row per token rather than one per slot broadcast over time."""
        return pos_rows != self.tokens_per_step

    def flops(self) -> int:
        """Multiply-adds of the projection, counted as 2 FLOPs each."""
        return 2 * self.batch * self.num_patches * self.patch_dim * self.embed_dim


def token_counts(
    frames: int, height: int, width: int | None = None, patch_size: int = 16, tubelet_size: int = 1
) -> int:
    """Patch tokens per clip (no CLS): ``(frames / t) * (height / P) * (width / P)``.

    >>> token_counts(16, 224, patch_size=16, tubelet_size=1), token_counts(16, 224, tubelet_size=2)
    (3136, 1568)
    """
    width = height if width is None else width
    check_divisible("num_frames", frames, "tubelet_size", tubelet_size, alternative="tubelet_size=1")
    check_divisible("image height", height, "patch_size", patch_size)
    check_divisible("image width", width, "patch_size", patch_size)
    return (frames // tubelet_size) * (height // patch_size) * (width // patch_size)


def _valid_multiples(value: int, divisor: int) -> str:
    below = (value // divisor) * divisor
    above = below + divisor
    choices = [str(v) for v in (below, above) if v > 0]
    return " or ".join(choices)


def check_divisible(name: str, value: int, divisor_name: str, divisor: int, alternative: str | None = None) -> None:
    """Raise ``ValueError`` naming both numbers and the nearest valid choices (and ``alternative``, another fix)."""
    if divisor < 1:
        raise ValueError(f"{divisor_name}={divisor} must be >= 1")
    if value % divisor:
        hint = f"use {_valid_multiples(value, divisor)}" + (f", or {alternative}" if alternative else "")
        raise ValueError(f"{name}={value} is not divisible by {divisor_name}={divisor}; {hint}")


def normalize_weight_shape(weight_shape: Sequence[int]) -> tuple[int, int, int, int, int]:
    """``(E, C, ph, pw)`` (Conv2d) or ``(E, C, t, ph, pw)`` (Conv3d) -> ``(E, C, t, ph, pw)``."""
    shape = tuple(weight_shape)
    if len(shape) == 4:
        return (shape[0], shape[1], 1, shape[2], shape[3])
    if len(shape) == 5:
        return shape  # type: ignore[return-value]
    raise ValueError(
        f"weight must have nn.Conv3d layout (E, C, t, P, P) or nn.Conv2d layout (E, C, P, P); "
        f"got {len(shape)} dims with shape {list(shape)}"
    )


def video_dims(video_shape: Sequence[int], layout: str) -> tuple[int, int, int, int, int]:
    """``(B, T, C, H, W)`` of a video given in ``layout``; a 4D ``(B, C, H, W)`` image is one frame."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not supported; use one of {LAYOUTS}")
    shape = tuple(video_shape)
    if len(shape) == 4:
        b, c, h, w = shape
        return (b, 1, c, h, w)
    if len(shape) != 5:
        raise ValueError(
            f"video must be 5D {layout} (or a 4D (B, C, H, W) image); got {len(shape)} dims with shape {list(shape)}"
        )
    if layout == "BTCHW":
        b, t, c, h, w = shape
    else:
        b, c, t, h, w = shape
    return (b, t, c, h, w)


def patch_grid(
    video_shape: Sequence[int],
    weight_shape: Sequence[int],
    *,
    has_cls: bool = False,
    pos_rows: int | None = None,
    bias_shape: Sequence[int] | None = None,
    cls_numel: int | None = None,
) -> PatchGrid:
    """Validate a logical ``(B, T, C, H, W)`` video against a weight and return its grid.

    Every shape error of the op is raised here, before any work, naming the problem and the fix.
    """
    if len(video_shape) != 5:
        raise ValueError(f"video must be 5D (B, T, C, H, W) here; got shape {list(video_shape)}")
    b, t, c, h, w = video_shape
    e, wc, tubelet, ph, pw = normalize_weight_shape(weight_shape)
    if min(e, wc, tubelet, ph, pw) < 1:
        raise ValueError(f"weight shape {list(weight_shape)} has an empty dimension")
    if c != wc:
        raise ValueError(
            f"video has C={c} channels but weight expects C={wc} (weight shape {list(weight_shape)}); "
            f"check the layout argument ('BTCHW' vs 'BCTHW') or the model's in_channels"
        )
    check_divisible("num_frames", t, "tubelet_size", tubelet, alternative="tubelet_size=1")
    check_divisible("video height", h, "patch height", ph)
    check_divisible("video width", w, "patch width", pw)
    if t == 0 or h == 0 or w == 0:
        raise ValueError(f"video shape {list(video_shape)} has no frames or no pixels")
    grid = grid_of(video_shape, weight_shape, has_cls)
    check_index_range(grid)
    if bias_shape is not None and tuple(bias_shape) != (e,):
        raise ValueError(f"bias must have shape ({e},) to match embed_dim={e}; got {list(bias_shape)}")
    if cls_numel is not None and cls_numel != e:
        raise ValueError(f"cls_token must have {e} elements (embed_dim); got {cls_numel}")
    if pos_rows is not None:
        allowed = grid.pos_rows_allowed()
        if pos_rows not in allowed:
            cls_note = " (CLS slot included)" if has_cls else ""
            raise ValueError(
                f"pos_embed has {pos_rows} rows but this video has {grid.tokens_per_step} tokens per time step"
                f"{cls_note} and {grid.steps} time steps: give {allowed[0]} rows (one per slot, broadcast over "
                f"time) or {allowed[1]} rows (one per token); interpolate the positional embedding if the "
                f"resolution changed"
            )
    return grid


def grid_of(video_shape: Sequence[int], weight_shape: Sequence[int], has_cls: bool = False) -> PatchGrid:
    """The grid of a logical ``(B, T, C, H, W)`` video and a weight that ``patch_grid`` has validated: no checks."""
    b, t, c, h, w = video_shape
    e, _, tubelet, ph, pw = normalize_weight_shape(weight_shape)
    return PatchGrid(b, t, c, h, w, e, tubelet, ph, pw, 1 if has_cls else 0)


def check_pos_embed_shape(pos_shape: Sequence[int], embed_dim: int) -> None:
    """``pos_embed`` must be ``(rows, E)`` (a leading 1 removed by the caller); its row count is checked by
    ``patch_grid``."""
    if len(pos_shape) != 2 or pos_shape[1] != embed_dim:
        raise ValueError(f"pos_embed must be (rows, E={embed_dim}) or (1, rows, E); got {list(pos_shape)}")


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_companion(name: str, tensor: Optional[torch.Tensor], weight: torch.Tensor, same_dtype: bool = True) -> None:
    """``tensor`` (None passes) must be on the weight's device and, with ``same_dtype``, in the weight's dtype."""
    if tensor is None:
        return
    if tensor.device != weight.device:
        raise ValueError(f"{name} is on {tensor.device} but weight is on {weight.device}; move both to one device")
    if same_dtype and tensor.dtype != weight.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but weight has {weight.dtype}; cast {name} to {weight.dtype}")


def checked_operands(
    video: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    pos_embed: Optional[torch.Tensor] = None,
    cls_token: Optional[torch.Tensor] = None,
) -> tuple[float, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Every check of a patch embedding of a logical ``(B, T, C, H, W)`` video, before any work.

    The weight must be float32/float16/bfloat16/float64, the video the weight's dtype or uint8, every tensor on
    the weight's device, bias, pos_embed and cls_token in the weight's dtype, and the shapes fit ``patch_grid``.
    Returns ``(pixel_scale, weight5, pos_embed, cls_token)``: the pixel scale (1/255 for uint8 video, else 1), the
    weight in ``(E, C, t, ph, pw)`` layout (a view), ``pos_embed`` as ``(rows, E)`` (a leading dimension of 1
    removed) and ``cls_token`` as ``(E,)``.
    """
    normalize_weight_shape(weight.shape)
    weight5 = weight.unsqueeze(2) if weight.dim() == 4 else weight
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"weight must be float32, float16, bfloat16 or float64; got {weight.dtype}: cast it with "
            f"weight.float() (or .half(), .bfloat16(), .double())"
        )
    if video.device != weight.device:
        raise ValueError(f"video is on {video.device} but weight is on {weight.device}; move both to one device")
    if video.dtype not in (torch.uint8, weight.dtype):
        raise TypeError(
            f"video has dtype {video.dtype} but weight has {weight.dtype}; cast the video to {weight.dtype} "
            f"(or pass uint8 pixels with mean/std)"
        )
    for name, t in (("bias", bias), ("pos_embed", pos_embed), ("cls_token", cls_token)):
        check_companion(name, t, weight)
    pixel_scale = 1.0 / 255.0 if video.dtype == torch.uint8 else 1.0
    if pos_embed is not None:
        if pos_embed.dim() == 3 and pos_embed.shape[0] == 1:
            pos_embed = pos_embed[0]
        check_pos_embed_shape(pos_embed.shape, weight.shape[0])
    if cls_token is not None:
        cls_token = cls_token.reshape(-1)
    patch_grid(
        video.shape,
        weight5.shape,
        has_cls=cls_token is not None,
        pos_rows=None if pos_embed is None else pos_embed.shape[0],
        bias_shape=None if bias is None else bias.shape,
        cls_numel=None if cls_token is None else cls_token.numel(),
    )
    return pixel_scale, weight5, pos_embed, cls_token


INDEX_MAX = 2**63 - 1  # the largest element index a tensor (and every kernel, which indexes in int64) can hold


def check_index_range(grid: PatchGrid) -> None:
    """Raise ``ValueError`` when the video or the tokens have more elements than a 64-bit index can address.

    Symbolic sizes (``torch.compile`` with dynamic shapes) are not checked here, so no guard is added for them.
    """
    sizes = (grid.batch, grid.frames, grid.channels, grid.height, grid.width, grid.embed_dim)
    if not all(isinstance(v, int) for v in sizes):
        return
    for what, shape in (
        ("a video", (grid.batch, grid.frames, grid.channels, grid.height, grid.width)),
        ("tokens", grid.output_shape),
    ):
        count = math.prod(shape)
        if count > INDEX_MAX:
            raise ValueError(
                f"{what} of shape {list(shape)} hold {count} elements, more than a 64-bit index can hold "
                f"({INDEX_MAX}); use a smaller batch, fewer frames, a lower resolution or a smaller embed_dim"
            )


def tubelet_origin(token: int, grid: PatchGrid) -> tuple[int, int, int, int]:
    """``(b, frame, row, col)`` of the top-left-front pixel of patch token ``token`` in ``[0, B T' N)``.

    Token order is ``(b, step, gy, gx)`` row-major; the same arithmetic lives in csrc/patch_embed.h and the
    Triton kernels' index helpers.
    """
    gx = token % grid.grid_w
    gy = (token // grid.grid_w) % grid.grid_h
    step = (token // grid.num_spatial) % grid.steps
    b = token // grid.num_patches
    return (b, step * grid.tubelet, gy * grid.patch_h, gx * grid.patch_w)


def k_offset(k: int, grid: PatchGrid) -> tuple[int, int, int, int]:
    """``(c, dt, dh, dw)`` of reduction index ``k`` in ``[0, K)``, in ``conv.weight.view(E, -1)`` order."""
    dw = k % grid.patch_w
    dh = (k // grid.patch_w) % grid.patch_h
    dt = (k // (grid.patch_w * grid.patch_h)) % grid.tubelet
    c = k // (grid.patch_w * grid.patch_h * grid.tubelet)
    return (c, dt, dh, dw)
