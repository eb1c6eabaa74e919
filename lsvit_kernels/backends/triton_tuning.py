"""Block sizes for the Triton kernels on real GPUs, and the bytes-and-FLOPs model they are judged against.

No Triton import here: the configs are plain data, so the ahead-of-time compile test can compile every config
the heuristic can pick (``candidate_configs``), and the benchmark suite can call ``roofline_floor_us``.

Heuristic (keyed on the shape, no run-time autotuning): each kernel has, per architecture (sm_90 Hopper,
sm_80 Ampere and later 8.x) and per operand kind (16-bit, tf32, ieee float32), a list of configs from the
largest tile to the smallest. The first config that fits the device's shared memory and still gives at least
``2 x SMs`` tiles is used (big tiles reuse operands best; two waves keep every SM busy); else the smallest
that fits. The reductions (grad_weight over tokens, the row sums over groups) are split so their grids reach
that many programs too. ``triton.autotune`` is not used: it cannot run under the interpreter, and a fixed
choice keeps the set of compiled variants known (and tested for spills) ahead of time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import geometry

KERNELS = ("forward", "grad_weight", "grad_video", "grad_rows")


@dataclass(frozen=True)
class KernelConfig:
    """Tile of one program. Per kernel the axes mean:

    - forward: ``block_m`` tokens x ``block_n`` of E, reduced over K in ``block_k`` steps
    - grad_weight: ``block_n`` of E x ``block_k`` of K, reduced over tokens in ``block_m`` steps
    - grad_video: ``block_m`` tokens x ``block_n`` of K, reduced over E in ``block_k`` steps
    - grad_rows: ``block_m`` rows x ``block_n`` of E (``block_k`` unused)
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3

    def meta(self) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "GROUP_M": self.group_m}

    def launch(self) -> dict:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


C = KernelConfig
# (kernel, arch, operand kind) -> configs, largest tile first. Operand kinds: "16bit" (fp16/bf16 tensor cores;
# also uint8 video cast in registers), "tf32" (float32 on tensor cores), "ieee" (float32, exact FMA dot).
_TABLE: dict[tuple[str, int, str], tuple[KernelConfig, ...]] = {
    # forward: 128 x 256 tiles spill (the gathered video tile's int64 addresses share the register file with the
    # accumulator), so 128 x 128 with 8 warps is the largest; 64-row tiles when 128 would leave SMs idle.
    ("forward", 90, "16bit"): (C(128, 128, 64, 8, 8, 4), C(64, 128, 64, 8, 4, 4)),
    ("forward", 90, "tf32"): (C(128, 128, 32, 8, 8, 3), C(64, 128, 32, 8, 4, 3)),
    ("forward", 80, "16bit"): (C(128, 128, 32, 8, 8, 4), C(64, 128, 32, 8, 4, 4)),
    ("forward", 80, "tf32"): (C(128, 128, 32, 8, 8, 3), C(64, 128, 32, 8, 4, 3)),
    # grad_weight (E x K tile, reduce over tokens)
    ("grad_weight", 90, "16bit"): (C(64, 128, 128, 8, 8, 3), C(64, 128, 64, 8, 4, 4)),
    ("grad_weight", 90, "tf32"): (C(32, 128, 128, 8, 8, 3), C(32, 64, 128, 8, 4, 3)),
    ("grad_weight", 80, "16bit"): (C(32, 128, 128, 8, 8, 3), C(32, 128, 64, 8, 4, 4)),
    ("grad_weight", 80, "tf32"): (C(32, 128, 128, 8, 8, 3), C(32, 64, 64, 8, 4, 3)),  # 32x64x128 spills
    # grad_video (token x K tile, reduce over E)
    ("grad_video", 90, "16bit"): (C(128, 128, 64, 8, 8, 4), C(64, 128, 64, 8, 4, 4)),
    ("grad_video", 90, "tf32"): (C(128, 128, 32, 8, 8, 3), C(64, 128, 32, 8, 4, 3)),
    ("grad_video", 80, "16bit"): (C(128, 128, 32, 8, 4, 4), C(64, 128, 32, 8, 4, 4)),
    ("grad_video", 80, "tf32"): (C(128, 128, 32, 8, 8, 3), C(64, 128, 32, 8, 4, 3)),
}
# Exact float32 runs on FMA units: one small tile fits both architectures.
for _kernel in ("forward", "grad_weight", "grad_video"):
    for _arch in (80, 90):
        _TABLE[(_kernel, _arch, "ieee")] = (C(32, 64, 32, 8, 4, 2),)
# Row sums: a bandwidth-bound reduction, no dot; one config everywhere.
for _arch in (80, 90):
    for _kind in ("16bit", "tf32", "ieee"):
        _TABLE[("grad_rows", _arch, _kind)] = (C(16, 256, 1, 1, 4, 1),)

# Under TRITON_INTERPRET=1 (CPU): small tiles, so the tests' small shapes cross block edges and run fast.
INTERPRETER_CONFIGS = {
    "forward": C(32, 32, 32, 2, 1, 1),
    "grad_weight": C(32, 32, 32, 2, 1, 1),
    "grad_video": C(32, 32, 32, 2, 1, 1),
    "grad_rows": C(16, 32, 1, 1, 1, 1),
}

# Shared memory per block (opt-in) of the architectures tuned for: A100 163 KB, H100 227 KB.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def arch_of(capability: tuple[int, int]) -> int:
    """Table key for a compute capability: 90 for Hopper and newer, 80 for Ampere/Ada."""
    return 90 if capability[0] >= 9 else 80


def operand_kind(dtype: torch.dtype, precision: str) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "16bit"
    return "tf32" if precision == "tf32" else "ieee"


def candidate_configs(kernel: str, arch: int, kind: str) -> tuple[KernelConfig, ...]:
    """Every config the heuristic can pick for ``kernel`` on ``arch`` (80 or 90) with operands of ``kind``."""
    return _TABLE[(kernel, arch, kind)]


def smem_bytes(kernel: str, cfg: KernelConfig, operand_bytes: int, video_bytes: Optional[int] = None) -> int:
    """Shared memory the software pipeline holds: ``num_stages`` copies of both dot operands' tiles."""
    video_bytes = operand_bytes if video_bytes is None else video_bytes
    if kernel == "grad_rows":
        return 0
    if kernel == "forward":  # video (M x K) and weight (K x N)
        per_stage = cfg.block_m * cfg.block_k * video_bytes + cfg.block_k * cfg.block_n * operand_bytes
    elif kernel == "grad_weight":  # grad (N x M) and video (M x K)
        per_stage = cfg.block_n * cfg.block_m * operand_bytes + cfg.block_m * cfg.block_k * video_bytes
    else:  # grad_video: grad (M x K) and weight (K x N)
        per_stage = (cfg.block_m + cfg.block_n) * cfg.block_k * operand_bytes
    return max(cfg.num_stages, 1) * per_stage


def tiles(kernel: str, grid: geometry.PatchGrid, cfg: KernelConfig) -> int:
    """Programs of one launch before any split."""
    m, e, k = grid.batch * grid.num_patches, grid.embed_dim, grid.patch_dim
    if kernel == "forward":
        return math.ceil(m / cfg.block_m) * math.ceil(e / cfg.block_n)
    if kernel == "grad_weight":
        return math.ceil(e / cfg.block_n) * math.ceil(k / cfg.block_k)
    if kernel == "grad_video":
        return math.ceil(m / cfg.block_m) * math.ceil(k / cfg.block_n)
    raise ValueError(f"unknown kernel {kernel!r}")


def pick_config(
    kernel: str,
    grid: geometry.PatchGrid,
    dtype: torch.dtype,
    video_dtype: torch.dtype,
    capability: tuple[int, int],
    sm_count: int,
    smem_limit: int,
    precision: str = "ieee",
) -> KernelConfig:
    """The heuristic (module docstring): the largest tile that fits and still fills two waves."""
    configs = candidate_configs(kernel, arch_of(capability), operand_kind(dtype, precision))
    operand_bytes = torch.empty(0, dtype=dtype).element_size()
    video_bytes = torch.empty(0, dtype=video_dtype).element_size()
    fitting = [c for c in configs if smem_bytes(kernel, c, operand_bytes, video_bytes) <= smem_limit]
    if not fitting:
        raise RuntimeError(
            f"no {kernel} config fits {smem_limit} bytes of shared memory on sm_{capability[0]}{capability[1]}; "
            f"use backend='cuda' or 'reference'"
        )
    if kernel in ("grad_weight", "grad_rows"):
        return fitting[0]  # their parallelism comes from splitting the reduction
    for cfg in fitting:
        if tiles(kernel, grid, cfg) >= 2 * sm_count:
            return cfg
    return fitting[-1]


def splits_for(programs: int, reduction_steps: int, sm_count: int) -> int:
    """How many slices to cut a reduction of ``reduction_steps`` steps into so ``programs x splits`` reaches
    two waves, keeping at least 8 steps per slice (the partial sums cost a store each)."""
    want = math.ceil(2 * sm_count / max(programs, 1))
    return max(1, min(want, reduction_steps // 8 or 1))


# ----------------------------------------------------------------------------------------------------------------
# Bytes-and-FLOPs model (docs/triton.md): DRAM traffic assuming each operand crosses HBM once (L2 holds the
# weight and the tiles shared by concurrently running programs, which the grouped order arranges).

H100_BF16_TFLOPS = 790.0  # dense bf16 tensor-core peak (SXM), TFLOP/s
H100_HBM_TBPS = 3.0  # HBM3 bandwidth, TB/s (3.35 spec; ~3.0 reachable)


@dataclass(frozen=True)
class KernelCost:
    flops: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes_total(self) -> int:
        return self.bytes_read + self.bytes_written

    def floor_us(self, tflops: float = H100_BF16_TFLOPS, tbps: float = H100_HBM_TBPS) -> float:
        """Roofline floor: the larger of compute time and memory time, in microseconds."""
        return max(self.flops / (tflops * 1e12), self.bytes_total / (tbps * 1e12)) * 1e6


def _size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def kernel_cost(
    kernel: str,
    grid: geometry.PatchGrid,
    dtype: torch.dtype,
    video_dtype: Optional[torch.dtype] = None,
    pos_per_token: bool = False,
    has_pos: bool = True,
    has_bias: bool = True,
) -> KernelCost:
    """DRAM bytes and FLOPs of one launch of ``kernel`` on ``grid`` (see docs/triton.md for the per-tile view)."""
    g = grid
    w, v = _size(dtype), _size(video_dtype or dtype)
    m, e, k = g.batch * g.num_patches, g.embed_dim, g.patch_dim
    video = g.batch * g.frames * g.channels * g.height * g.width
    tokens = g.batch * g.steps * g.tokens_per_step * e
    pos_rows = (g.steps if pos_per_token else 1) * g.tokens_per_step if has_pos else 0
    if kernel == "forward":
        small = (e * k + pos_rows * e + (e if has_bias else 0) + (e if g.cls_slots else 0)) * w
        return KernelCost(2 * m * k * e, video * v + small, tokens * w)
    if kernel == "grad_weight":  # reads the patch rows of grad and the video; writes float32 partials
        return KernelCost(2 * m * k * e, m * e * w + video * v, e * k * 4)
    if kernel == "grad_video":
        return KernelCost(2 * m * k * e, m * e * w + e * k * w, video * v)
    if kernel == "grad_rows":
        return KernelCost(tokens, tokens * w, pos_rows * e * 4 if has_pos else g.tokens_per_step * e * 4)
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")


def roofline_floor_us(
    grid: geometry.PatchGrid,
    dtype: torch.dtype,
    kernel: str = "forward",
    video_dtype: Optional[torch.dtype] = None,
    tflops: float = H100_BF16_TFLOPS,
    tbps: float = H100_HBM_TBPS,
) -> float:
    """Roofline floor in microseconds of one kernel on ``grid`` (default: H100, bf16 tensor cores, HBM3).

    ``kernel="backward"`` sums grad_weight, grad_video and grad_rows. For the default B=32, T=16, 224x224,
    tubelet 2x16x16, E=768 bf16 forward this is ~150 us (compute-bound: 118 GFLOP vs ~234 MB).
    """
    if kernel == "backward":
        return sum(roofline_floor_us(grid, dtype, k, video_dtype, tflops, tbps) for k in KERNELS[1:])
    return kernel_cost(kernel, grid, dtype, video_dtype).floor_us(tflops, tbps)
