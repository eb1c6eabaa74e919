"""Triton backend: the patch embedding forward and backward, each in one pass over the video (triton_kernels.py).

Registered as ``"triton"`` for CUDA tensors (first in the automatic CUDA order), and for CPU tensors only when
``TRITON_INTERPRET=1`` was set before Triton was imported, so tests can run every kernel on the CPU when asked by
name; the automatic CPU order never lists it. Imports without Triton and says why it cannot run.

Launch wrappers take an optional explicit ``KernelConfig`` (tests use that to cross block edges); otherwise the
shape-keyed heuristic of ``triton_tuning.py`` picks one on a GPU, and small fixed tiles are used in the
interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .. import geometry
from ..registry import Backend, register_backend
from . import triton_tuning as tuning
from .triton_tuning import KernelConfig

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

try:
    from . import triton_kernels as kernels

    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # ImportError, or a broken install that fails while importing
    kernels = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"triton is not importable ({type(exc).__name__}: {exc}); install it with `pip install triton`"

_INT32_MAX = 2**31 - 1


def unavailable_reason(device_type: str) -> Optional[str]:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if device_type == "cpu":
        if not INTERPRET:
            return "Triton runs on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before importing triton"
        return None
    if device_type != "cuda":
        return f"the Triton backend runs on cuda tensors, not {device_type}"
    if INTERPRET:
        return "TRITON_INTERPRET=1 is set, so Triton would interpret on the CPU; unset it to run on the GPU"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    if torch.version.hip is not None:
        return "the Triton kernels are tuned and tested for NVIDIA GPUs only (this is a ROCm build of torch)"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"needs compute capability >= 8.0 (Ampere) for bf16 tensor-core dots; this GPU is sm_{major}{minor}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Shared launch plumbing


@functools.cache
def _device_facts(index: int) -> tuple[tuple[int, int], int, int]:
    """(capability, SM count, opt-in shared memory per block) of CUDA device ``index``."""
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or tuning.SMEM_LIMIT[tuning.arch_of((props.major, 0))]
    return (props.major, props.minor), props.multi_processor_count, smem


def _sm_count(device: torch.device) -> int:
    return 4 if device.type != "cuda" else _device_facts(_index(device))[1]


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _dot_precision(dtype: torch.dtype) -> str:
    """float32 follows torch's matmul precision setting (default "highest": exact, no TF32)."""
    if dtype == torch.float32 and not INTERPRET and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee" if dtype == torch.float32 else "tf32"  # the flag is ignored for 16-bit operands


def _config(kernel: str, grid: geometry.PatchGrid, dtype, video_dtype, device: torch.device) -> KernelConfig:
    if device.type != "cuda":
        return tuning.INTERPRETER_CONFIGS[kernel]
    capability, sm_count, smem = _device_facts(_index(device))
    return tuning.pick_config(kernel, grid, dtype, video_dtype, capability, sm_count, smem, _dot_precision(dtype))


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _max_offset(shape, strides) -> int:
    return sum((size - 1) * stride for size, stride in zip(shape, strides, strict=True))


def _wide(video: Tensor, *others: Tensor) -> bool:
    """True when an offset of the launch can pass 2^31 - 1: then the kernels index in int64, else in int32."""
    reach = [_max_offset(video.shape, video.stride())] + [t.numel() for t in others]
    return max(reach) > _INT32_MAX


def channels_last_order(grid: geometry.PatchGrid, strides: tuple[int, ...]) -> bool:
    """True when the video's pixels interleave channels (``stride_c == 1``, ``stride_w == C``, as decoders and
    ``torch.channels_last_3d`` write them): the kernels then walk K as ``(dt, dh, dw, c)`` so one patch row is
    one contiguous run of ``pw C`` elements (vector loads); otherwise as ``(c, dt, dh, dw)``."""
    _, _, stride_c, _, stride_w = strides
    return grid.channels > 1 and stride_c == 1 and stride_w == grid.channels


def k_ordered_weight(weight: Tensor, channels_last: bool) -> Tensor:
    """The weight as a contiguous ``(E, K)`` matrix in the kernels' k order (``channels_last_order``)."""
    e = weight.shape[0]
    if not channels_last:
        return weight.reshape(e, -1).contiguous()
    full = weight if weight.dim() == 5 else weight.unsqueeze(2)  # (E, C, t, ph, pw)
    return full.permute(0, 2, 3, 4, 1).reshape(e, -1).contiguous()  # (E, t ph pw C)


def _geometry_meta(grid: geometry.PatchGrid, channels_last: bool) -> dict:
    """The compile-time geometry of every kernel but grad_rows: one compiled variant per video geometry
    (frames / tubelet, resolution / patch, channels); batch and embedding width stay run-time (docs/triton.md)."""
    return {
        "CHANNELS": grid.channels,
        "GRID_H": grid.grid_h,
        "GRID_W": grid.grid_w,
        "STEPS": grid.steps,
        "PATCH_T": grid.tubelet,
        "PATCH_H": grid.patch_h,
        "PATCH_W": grid.patch_w,
        "CHANNELS_LAST": channels_last,
        "CLS_SLOTS": grid.cls_slots,
    }


def _common_meta(grid: geometry.PatchGrid, dtype: torch.dtype, wide: bool, channels_last: bool) -> dict:
    return {
        **_geometry_meta(grid, channels_last),
        "WIDE": wide,
        "DOT_PRECISION": _dot_precision(dtype),
        "INTERPRET_BF16": INTERPRET and dtype == torch.bfloat16,  # its bf16 dot and cast are wrong
    }


@dataclass
class Launch:
    """One kernel launch, built without touching a GPU (tensors may live on the ``meta`` device): the
    ahead-of-time audit compiles exactly what ``run`` would launch."""

    kernel: str  # attribute of triton_kernels
    programs: tuple[int, ...]
    args: dict  # run-time arguments by name, signature order: tensors and ints
    meta: dict  # tl.constexpr arguments
    config: KernelConfig

    def run(self) -> None:
        getattr(kernels, self.kernel)[self.programs](**self.args, **self.meta, **self.config.launch())


def _strides(names: tuple[str, ...], strides) -> dict:
    return dict(zip(names, strides, strict=True))


_VIDEO_STRIDES = ("stride_b", "stride_t", "stride_c", "stride_h", "stride_w")


def _checked_grid(video: Tensor, weight: Tensor, has_cls: bool) -> geometry.PatchGrid:
    if _IMPORT_ERROR is not None:
        raise RuntimeError(_IMPORT_ERROR)
    grid = geometry.grid_of(video.shape, weight.shape, has_cls)
    if weight.dtype not in BACKEND.dtypes:
        raise TypeError(f"the Triton backend supports {BACKEND.dtypes}, not {weight.dtype}; use backend='reference'")
    if video.dtype not in (weight.dtype, torch.uint8):
        raise TypeError(f"video dtype {video.dtype} must be uint8 or the weight's dtype {weight.dtype}")
    if grid.batch * grid.num_patches > _INT32_MAX:
        raise ValueError(
            f"{grid.batch * grid.num_patches} patch tokens in one call exceed 2^31 - 1; split the batch into chunks"
        )
    return grid


# ----------------------------------------------------------------------------------------------------------------
# Forward


def forward_launch(
    video: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    pos_embed: Optional[Tensor],
    cls_token: Optional[Tensor],
    out: Tensor,
    cfg: KernelConfig,
) -> Launch:
    """The forward's launch (no GPU needed: the audit builds it on ``meta`` tensors)."""
    grid = geometry.grid_of(video.shape, weight.shape, cls_token is not None)
    strides = tuple(video.stride())
    channels_last = channels_last_order(grid, strides)
    w = k_ordered_weight(weight, channels_last)
    num_tokens = grid.batch * grid.num_patches
    programs = math.ceil(num_tokens / cfg.block_m) * math.ceil(grid.embed_dim / cfg.block_n)
    args = {
        "video_ptr": video,
        "weight_ptr": w,
        "bias_ptr": w if bias is None else bias,  # never read when absent (the flags below)
        "pos_ptr": w if pos_embed is None else pos_embed,
        "cls_ptr": w if cls_token is None else cls_token,
        "out_ptr": out,
        "num_tokens": num_tokens,
        "embed_dim": grid.embed_dim,
        **_strides(_VIDEO_STRIDES, strides),
    }
    meta = {
        **_common_meta(grid, weight.dtype, _wide(video, out), channels_last),
        "HAS_BIAS": bias is not None,
        "HAS_POS": pos_embed is not None,
        "POS_PER_TOKEN": pos_embed is not None and grid.pos_is_per_token(pos_embed.shape[0]),
        "VIDEO_AS_B": video.dtype != weight.dtype,  # uint8: converted tile stored to shared memory (kernel doc)
        **cfg.meta(),
    }
    return Launch("patch_embed_fwd_kernel", (programs,), args, meta, cfg)


def forward(
    video: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    pos_embed: Optional[Tensor],
    cls_token: Optional[Tensor],
    config: Optional[KernelConfig] = None,
    out: Optional[Tensor] = None,
) -> Tensor:
    """Tokens ``(B, T', S + N, E)`` of a logical ``(B, T, C, H, W)`` video (any strides), in one launch.

    ``out``: an optional contiguous ``(B, T', S + N, E)`` buffer in the weight's dtype to write into.
    """
    grid = _checked_grid(video, weight, cls_token is not None)
    if out is None:
        out = torch.empty(grid.output_shape, dtype=weight.dtype, device=weight.device)
    elif tuple(out.shape) != grid.output_shape or not out.is_contiguous() or out.dtype != weight.dtype:
        raise ValueError(f"out must be a contiguous {weight.dtype} tensor of shape {grid.output_shape}")
    cfg = config or _config("forward", grid, weight.dtype, video.dtype, video.device)
    with _device_guard(video.device):
        forward_launch(video, weight, bias, pos_embed, cls_token, out, cfg).run()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Backward


def _word_aligned(video: Tensor, grid: geometry.PatchGrid, channels_last: bool) -> bool:
    """True when every run of 4 reduction indices starting at a multiple of 4 is 4 consecutive bytes at a 4-byte
    aligned address: the patch rows (``pw`` pixels, or ``pw C`` interleaved ones) are contiguous and a multiple of
    4 long, every other stride (of a dimension longer than 1) a multiple of 4, the data pointer 4-byte aligned."""
    strides = dict(zip(_VIDEO_STRIDES, video.stride(), strict=True))
    sizes = dict(zip(_VIDEO_STRIDES, video.shape, strict=True))
    inner = "stride_c" if channels_last else "stride_w"
    run = grid.patch_w * grid.channels if channels_last else grid.patch_w
    others = [n for n in _VIDEO_STRIDES if n != inner and not (channels_last and n == "stride_w")]
    return (
        run % 4 == 0
        and strides[inner] == 1
        and all(strides[n] % 4 == 0 for n in others if sizes[n] > 1)
        and video.data_ptr() % 4 == 0
    )


def grad_weight_launch(
    grad_tokens: Tensor, video: Tensor, weight: Tensor, has_cls: bool, cfg: KernelConfig, programs: int
) -> tuple[Launch, bool]:
    """grad_weight's stream-K launch and whether its partials are in the channels-last k order. ``programs`` is
    a request: the launch runs that many (at most one per step), each walking an equal run (to one step) of the
    (tile, token step) range."""
    grid = geometry.grid_of(video.shape, weight.shape, has_cls)
    strides = tuple(video.stride())
    channels_last = channels_last_order(grid, strides)
    num_tokens = grid.batch * grid.num_patches
    e, k = grid.embed_dim, grid.patch_dim
    tiles, tile_steps = tuning.tiles("grad_weight", grid, cfg), math.ceil(num_tokens / cfg.block_m)
    if tiles * tile_steps > _INT32_MAX:
        raise ValueError(
            f"grad_weight's {tiles} tiles x {tile_steps} token steps exceed 2^31 - 1; split the batch into chunks"
        )
    plan = tuning.stream_k(tiles, tile_steps, programs)
    partial = torch.empty((plan.pieces, e, k), dtype=torch.float32, device=video.device)
    args = {
        "grad_ptr": grad_tokens,
        "video_ptr": video,
        "partial_ptr": partial,
        "num_tokens": num_tokens,
        "embed_dim": e,
        "pieces": plan.pieces,
        **_strides(_VIDEO_STRIDES, strides),
    }
    meta = {
        **_common_meta(grid, weight.dtype, _wide(video, grad_tokens, partial), channels_last),
        "EVEN_N": e % cfg.block_n == 0,
        "VIDEO_WORDS": cfg.video_words and video.dtype == torch.uint8 and _word_aligned(video, grid, channels_last),
        **cfg.meta(),
    }
    return Launch("patch_embed_grad_weight_kernel", (plan.programs,), args, meta, cfg), channels_last


def grad_weight(
    grad_tokens: Tensor,
    video: Tensor,
    weight: Tensor,
    has_cls: bool,
    config: Optional[KernelConfig] = None,
    programs: Optional[int] = None,
) -> Tensor:
    """``G^T X`` as an implicit GEMM over the video: ``(E, C, t, ph, pw)`` in the weight's dtype. ``programs``:
    the stream-K grid (default: the cost model's, ``triton_tuning.best_programs``)."""
    grid = _checked_grid(video, weight, has_cls)
    cfg = config or _config("grad_weight", grid, weight.dtype, video.dtype, video.device)
    if programs is None:
        capability = _device_facts(_index(video.device))[0] if video.device.type == "cuda" else (9, 0)
        programs = tuning.programs_for_grid(
            grid, cfg, _sm_count(video.device), weight.dtype, video.dtype, capability, _dot_precision(weight.dtype)
        )
    launch, channels_last = grad_weight_launch(grad_tokens, video, weight, has_cls, cfg, programs)
    with _device_guard(video.device):
        launch.run()
    partial = launch.args["partial_ptr"]
    total = partial[0] if partial.shape[0] == 1 else partial.sum(0)  # (E, K) float32 in k order
    if channels_last:  # (E, t, ph, pw, C) -> (E, C, t, ph, pw)
        g = grid
        total = total.view(g.embed_dim, g.tubelet, g.patch_h, g.patch_w, g.channels).permute(0, 4, 1, 2, 3)
    return total.to(weight.dtype).reshape(weight.shape)


def grad_video_launch(grad_tokens: Tensor, weight: Tensor, out: Tensor, has_cls: bool, cfg: KernelConfig) -> Launch:
    """grad_video's launch, writing into ``out`` (any strides; channels-last k order when it interleaves)."""
    grid = geometry.grid_of(out.shape, weight.shape, has_cls)
    strides = tuple(out.stride())
    channels_last = channels_last_order(grid, strides)
    num_tokens = grid.batch * grid.num_patches
    programs = math.ceil(num_tokens / cfg.block_m) * math.ceil(grid.patch_dim / cfg.block_n)
    args = {
        "grad_ptr": grad_tokens,
        "weight_ptr": k_ordered_weight(weight, channels_last),
        "grad_video_ptr": out,
        "num_tokens": num_tokens,
        "embed_dim": grid.embed_dim,
        **_strides(_VIDEO_STRIDES, strides),
    }
    meta = {**_common_meta(grid, weight.dtype, _wide(out, grad_tokens), channels_last), **cfg.meta()}
    return Launch("patch_embed_grad_video_kernel", (programs,), args, meta, cfg)


def grad_video(
    grad_tokens: Tensor,
    video: Tensor,
    weight: Tensor,
    has_cls: bool,
    config: Optional[KernelConfig] = None,
    out: Optional[Tensor] = None,
) -> Tensor:
    """``G W`` scattered into a ``(B, T, C, H, W)`` tensor in the video's dtype: ``out`` (any strides) or a new
    contiguous one."""
    grid = _checked_grid(video, weight, has_cls)
    if not video.is_floating_point():
        raise TypeError(f"no gradient for a {video.dtype} video; only floating-point videos have one")
    cfg = config or _config("grad_video", grid, weight.dtype, video.dtype, video.device)
    if out is None:
        out = torch.empty(video.shape, dtype=video.dtype, device=video.device)
    elif out.shape != video.shape or out.dtype != video.dtype:
        raise ValueError(f"out must be a {video.dtype} tensor of shape {tuple(video.shape)}")
    with _device_guard(video.device):
        grad_video_launch(grad_tokens, weight, out, has_cls, cfg).run()
    return out


def grad_rows_launch(grad_tokens: Tensor, groups: int, rows: int, cfg: KernelConfig, splits: int) -> Launch:
    """The row sums' launch; ``splits`` is a request (at most that many runs of whole groups)."""
    e = grad_tokens.shape[-1]
    tiles_m, tiles_n = math.ceil(rows / cfg.block_m), math.ceil(e / cfg.block_n)
    groups_per_split = math.ceil(groups / max(1, min(splits, groups)))
    splits = max(1, math.ceil(groups / groups_per_split))
    partial = torch.empty((splits, rows, e), dtype=torch.float32, device=grad_tokens.device)
    args = {
        "grad_ptr": grad_tokens,
        "partial_ptr": partial,
        "groups": groups,
        "rows": rows,
        "embed_dim": e,
        "groups_per_split": groups_per_split,
    }
    meta = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n}
    return Launch("patch_embed_grad_rows_kernel", (tiles_m, tiles_n, splits), args, meta, cfg)


def grad_row_sums(
    grad_tokens: Tensor,
    groups: int,
    rows: int,
    config: Optional[KernelConfig] = None,
    splits: Optional[int] = None,
) -> Tensor:
    """float32 ``(rows, E)``: grad_tokens viewed as ``(groups, rows, E)`` summed over groups, in one pass."""
    e = grad_tokens.shape[-1]
    cfg = config or (
        tuning.INTERPRETER_CONFIGS["grad_rows"]
        if grad_tokens.device.type != "cuda"
        else tuning.candidate_configs("grad_rows", 90, "16bit")[0]
    )
    if splits is None:
        tiles = math.ceil(rows / cfg.block_m) * math.ceil(e / cfg.block_n)
        splits = tuning.splits_for(tiles, groups, _sm_count(grad_tokens.device))
    launch = grad_rows_launch(grad_tokens, groups, rows, cfg, splits)
    with _device_guard(grad_tokens.device):
        launch.run()
    partial = launch.args["partial_ptr"]
    return partial[0] if partial.shape[0] == 1 else partial.sum(0)


def backward(
    grad_tokens: Tensor,
    video: Tensor,
    weight: Tensor,
    pos_rows: int,
    has_bias: bool,
    has_cls: bool,
    output_mask: list[bool],
    configs: Optional[dict[str, KernelConfig]] = None,
) -> tuple[Optional[Tensor], ...]:
    """(grad_video, grad_weight, grad_bias, grad_pos, grad_cls), None where ``output_mask`` is False.

    grad_weight re-reads the video (no patch matrix); grad_video is written only when asked; grad_pos,
    grad_bias and grad_cls all come from one pass of row sums over grad_tokens.
    """
    configs = configs or {}
    grid = _checked_grid(video, weight, has_cls)
    need_video, need_weight, need_bias, need_pos, need_cls = (bool(m) for m in output_mask)
    need_bias &= has_bias
    need_pos &= pos_rows > 0
    need_cls &= has_cls
    grad_tokens = grad_tokens.contiguous()
    dtype = weight.dtype
    grads: list[Optional[Tensor]] = [None] * 5
    if need_video:
        grads[0] = grad_video(grad_tokens, video, weight, has_cls, configs.get("grad_video"))
    if need_weight:
        grads[1] = grad_weight(grad_tokens, video, weight, has_cls, configs.get("grad_weight"))
    if need_bias or need_pos or need_cls:
        s, per_step = grid.cls_slots, grid.tokens_per_step
        per_token = need_pos and grid.pos_is_per_token(pos_rows)
        groups, rows = (grid.batch, grid.steps * per_step) if per_token else (grid.batch * grid.steps, per_step)
        sums = grad_row_sums(grad_tokens, groups, rows, configs.get("grad_rows"))  # (rows, E) float32
        slots = sums.view(-1, per_step, grid.embed_dim)  # (1 or T', S + N, E)
        if need_bias:
            grads[2] = slots[:, s:].sum((0, 1)).to(dtype)
        if need_pos:
            grads[3] = sums.to(dtype)
        if need_cls:
            grads[4] = slots[:, 0].sum(0).to(dtype)
    return tuple(grads)


BACKEND = register_backend(
    Backend(
        name="triton",
        devices=("cuda", "cpu") if INTERPRET else ("cuda",),
        forward=forward,
        backward=backward,
        unavailable_reason=unavailable_reason,
        description="fused Triton kernels: gather tubelets from the strided video, tl.dot, bias+pos epilogue",
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
    )
)
