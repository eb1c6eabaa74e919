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

import dataclasses
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
    # CTAs of this config resident per SM on its architecture (at least; a uint8 video can need more registers
    # than a 16-bit one), from its compiled registers and shared memory: the cost model's occupancy, checked
    # against every compiled variant by the audit (lsvit.bench.gpu_audit).
    ctas_per_sm: int = 1
    # Register cap given to ptxas (``maxnreg``), so ``ctas_per_sm`` CTAs fit the 64 K registers of an SM:
    # 128 for two 8-warp CTAs. None lets ptxas choose (up to 255).
    max_registers: Optional[int] = None
    # grad_weight: read a uint8 video as int32 words of 4 pixels, unpacked in registers (triton_kernels), when its
    # layout allows (the wrapper checks). On sm_80 the video tile is an MN-major mma.sync operand, and Triton gives
    # a uint8 one a shared layout of 8-element vectors, so its cp.async copies are 8 bytes; the words' are 16. On
    # both architectures the main loop is shorter (docs/triton.md, audit). Not for exact float32: at its tile the
    # FMA loop keeps a spill on sm_90.
    video_words: bool = False

    def meta(self) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "GROUP_M": self.group_m}

    def launch(self) -> dict:
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.max_registers is not None:
            options["maxnreg"] = self.max_registers
        return options


C = KernelConfig
# (kernel, arch, operand kind) -> configs. Operand kinds: "16bit" (fp16/bf16 tensor cores; also a uint8 video
# converted on the way to shared memory), "tf32" (float32 on tensor cores), "ieee" (float32, exact FMA dot).
# The heuristic (pick_config) takes the one with the lowest modeled time (estimate_us). The last field is the
# CTAs per SM of the compiled kernel (docs/triton.md's audit table; checked by tests/kernels/test_gpu_audit.py).
_TABLE: dict[tuple[str, int, str], tuple[KernelConfig, ...]] = {
    # forward (token x E tile, reduce over K): 128 x 128 x 64 with 3 stages fits two CTAs per SM (<= 128
    # registers, 2 x 96 KB); 128 x 256 reads 1.5x fewer operand bytes from L2 per FLOP but runs one CTA per SM.
    ("forward", 90, "16bit"): (
        C(128, 128, 64, 8, 8, 3, 2, 128),
        C(128, 256, 64, 8, 8, 3, 1),
        C(64, 128, 64, 8, 4, 4, 2),
    ),
    ("forward", 90, "tf32"): (C(128, 128, 32, 8, 8, 3, 1), C(64, 128, 32, 8, 4, 3, 2)),
    ("forward", 80, "16bit"): (C(128, 128, 32, 8, 8, 4, 1), C(64, 128, 32, 8, 4, 4, 3)),
    ("forward", 80, "tf32"): (C(128, 128, 32, 8, 8, 3, 1), C(64, 128, 32, 8, 4, 3, 1)),
    # grad_weight (E x K tile, reduce over tokens)
    # one config on sm_90: 64 x 128 x 64 with 4 warps spends 1.1 issue cycles per tensor cycle (audit); the
    # stream-K grid (best_programs) gives the parallelism
    ("grad_weight", 90, "16bit"): (C(64, 128, 128, 8, 8, 3, 2, 128, video_words=True),),
    ("grad_weight", 90, "tf32"): (
        C(32, 128, 128, 8, 8, 3, 2, 128, video_words=True),
        C(32, 64, 128, 8, 4, 3, 2, video_words=True),
    ),
    ("grad_weight", 80, "16bit"): (
        C(32, 128, 128, 8, 8, 3, 1, video_words=True),
        C(32, 128, 64, 8, 4, 4, 2, video_words=True),
    ),
    # sm_80 tf32, one config: 32 x 64 x 64 spends 1.05 issue cycles per MMA cycle
    ("grad_weight", 80, "tf32"): (C(32, 128, 128, 8, 8, 3, 1, video_words=True),),
    # grad_video (token x K tile, reduce over E)
    ("grad_video", 90, "16bit"): (
        C(128, 128, 64, 8, 8, 3, 2, 128),
        C(128, 256, 64, 8, 8, 3, 1),
        C(64, 128, 64, 8, 4, 4, 2),
    ),
    ("grad_video", 90, "tf32"): (C(128, 128, 32, 8, 8, 3, 2), C(64, 128, 32, 8, 4, 3, 2)),
    ("grad_video", 80, "16bit"): (C(128, 128, 32, 8, 4, 4, 2), C(64, 128, 32, 8, 4, 4, 3)),
    ("grad_video", 80, "tf32"): (C(128, 128, 32, 8, 8, 3, 1), C(64, 128, 32, 8, 4, 3, 1)),
}
# Exact float32 runs on FMA units: one small tile fits both architectures.
for _kernel in ("forward", "grad_weight", "grad_video"):
    for _arch in (80, 90):
        _TABLE[(_kernel, _arch, "ieee")] = (C(32, 64, 32, 8, 4, 2, 2),)
# A uint8 video under exact float32: the config above holds a 32 x 32-byte video tile, 8 bytes per thread of 4
# warps, too few for a 16-byte cp.async. These tiles hold 64 x 32 (forward) and 32 x 64 (grad_weight) bytes at the
# same FMAs per iteration. The float32 video keeps its config: at 32 x 32 x 64 its sm_90 grad_weight loop spends
# 1.42 issue cycles per FMA cycle (the audit's bound is 1.4); the uint8 one spills in the loop at 32 x 64 x 64.
_UINT8_TABLE: dict[tuple[str, int, str], tuple[KernelConfig, ...]] = {}
for _arch in (80, 90):
    _UINT8_TABLE[("forward", _arch, "ieee")] = (C(64, 32, 32, 8, 4, 2, 2),)
    _UINT8_TABLE[("grad_weight", _arch, "ieee")] = (C(32, 32, 64, 8, 4, 2, 2),)
# Row sums: a bandwidth-bound reduction, no dot; one config everywhere.
for _arch in (80, 90):
    for _kind in ("16bit", "tf32", "ieee"):
        _TABLE[("grad_rows", _arch, _kind)] = (C(16, 256, 1, 1, 4, 1, 8),)

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


def candidate_configs(
    kernel: str, arch: int, kind: str, video_dtype: Optional[torch.dtype] = None
) -> tuple[KernelConfig, ...]:
    """Every config the heuristic can pick for ``kernel`` on ``arch`` (80 or 90) with operands of ``kind`` and a
    video of ``video_dtype`` (None: the operands' dtype)."""
    if video_dtype == torch.uint8 and (kernel, arch, kind) in _UINT8_TABLE:
        return _UINT8_TABLE[(kernel, arch, kind)]
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
    """The heuristic (module docstring): of the configs that fit, the one with the lowest modeled time."""
    kind = operand_kind(dtype, precision)
    configs = candidate_configs(kernel, arch_of(capability), kind, video_dtype)
    operand_bytes = torch.empty(0, dtype=dtype).element_size()
    video_bytes = torch.empty(0, dtype=video_dtype).element_size()
    fitting = [c for c in configs if smem_bytes(kernel, c, operand_bytes, video_bytes) <= smem_limit]
    if not fitting:
        raise RuntimeError(
            f"no {kernel} config fits {smem_limit} bytes of shared memory on sm_{capability[0]}{capability[1]}; "
            f"use backend='cuda' or 'reference'"
        )
    if kernel == "grad_rows":
        return fitting[0]
    device = device_for(capability, sm_count)

    def modeled(cfg: KernelConfig) -> float:
        programs = best_programs(grid, cfg, device, dtype, video_dtype, kind) if kernel == "grad_weight" else None
        return estimate(kernel, grid, cfg, dtype, video_dtype, device, kind, programs).us

    return min(fitting, key=modeled)  # ties: the earlier (table order)


def splits_for(programs: int, reduction_steps: int, sm_count: int) -> int:
    """The row sums' split: slices of a reduction of ``reduction_steps`` steps so ``programs x splits`` reaches
    two waves, keeping at least 8 steps per slice (the partial sums cost a store each)."""
    want = math.ceil(2 * sm_count / max(programs, 1))
    return max(1, min(want, reduction_steps // 8 or 1))


@dataclass(frozen=True)
class StreamK:
    """grad_weight's stream-K schedule: ``programs`` each walk ``steps_per_program`` (or one fewer) of the
    flattened (tile, token step) range; ``pieces`` partial slots per tile (the most programs sharing one tile);
    ``segments`` the most tiles one program touches (each costs a prologue and a partial store)."""

    programs: int
    steps_per_program: int
    pieces: int
    segments: int


def stream_k(tiles: int, tile_steps: int, programs: int) -> StreamK:
    """The stream-K schedule of ``tiles`` tiles of ``tile_steps`` reduction steps on ``programs`` programs (at
    most one per step), as patch_embed_grad_weight_kernel walks it: of the S steps, the first ``S % P``
    programs take ``S // P + 1`` consecutive steps, the others ``S // P``."""
    total = tiles * tile_steps
    programs = max(1, min(programs, total))
    short, longer = divmod(total, programs)
    bounds = [p * short + min(p, longer) for p in range(programs + 1)]

    def owner(step: int) -> int:  # the program walking ``step``
        long_steps = longer * (short + 1)
        return step // (short + 1) if step < long_steps else longer + (step - long_steps) // short

    pieces = max(owner((t + 1) * tile_steps - 1) - owner(t * tile_steps) + 1 for t in range(tiles))
    segments = max((bounds[p + 1] - 1) // tile_steps - bounds[p] // tile_steps + 1 for p in range(programs))
    return StreamK(programs, math.ceil(total / programs), pieces, segments)


def best_programs(
    grid: geometry.PatchGrid,
    cfg: KernelConfig,
    device: Device,
    dtype: torch.dtype,
    video_dtype: Optional[torch.dtype] = None,
    kind: str = "16bit",
) -> int:
    """grad_weight's stream-K program count with the lowest modeled time, of the multiples of the resident slots
    (``SMs x CTAs per SM``: every wave full, every program the same work) that keep at least 8 token steps per
    program; each program touching a tile adds a float32 ``(E, K)`` partial slot to write and re-read, so more
    waves cost more. Too little work for one full wave of 8-step programs: one program per 8 steps."""
    total = tiles("grad_weight", grid, cfg) * math.ceil(grid.batch * grid.num_patches / cfg.block_m)
    slots = device.sms * max(1, cfg.ctas_per_sm)
    candidates = [n * slots for n in range(1, 9) if n * slots * 8 <= total] or [max(1, total // 8)]
    return min(candidates, key=lambda p: estimate("grad_weight", grid, cfg, dtype, video_dtype, device, kind, p).us)


def programs_for_grid(
    grid: geometry.PatchGrid,
    cfg: KernelConfig,
    sm_count: int,
    dtype: torch.dtype,
    video_dtype: Optional[torch.dtype] = None,
    capability: tuple[int, int] = (9, 0),
    precision: str = "ieee",
) -> int:
    """``best_programs`` on a device with ``sm_count`` SMs of ``capability``'s architecture."""
    return best_programs(
        grid, cfg, device_for(capability, sm_count), dtype, video_dtype, operand_kind(dtype, precision)
    )


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


# ----------------------------------------------------------------------------------------------------------------
# Cost model (docs/triton.md): the roofline above plus what a tile-by-tile kernel adds to it. Estimates, not
# measurements: ``lsvit.bench.gpu_validate`` puts them next to measured times on the first GPU.


@dataclass(frozen=True)
class Device:
    """What the model needs of a GPU. Throughputs are reachable rates, below the data-sheet peaks."""

    name: str
    sms: int
    clock_ghz: float
    tflops_16bit: float  # dense fp16/bf16 tensor cores; tf32 is half of it
    tflops_fp32: float  # FMA units (exact float32 dots)
    hbm_tbps: float
    l2_tbps: float  # L2 -> SM operand bandwidth (estimate: not published; the sweep measures it)

    def tflops(self, kind: str) -> float:
        return {"16bit": self.tflops_16bit, "tf32": self.tflops_16bit / 2, "ieee": self.tflops_fp32}[kind]


H100 = Device("H100 SXM", sms=132, clock_ghz=1.755, tflops_16bit=H100_BF16_TFLOPS, tflops_fp32=60.0, hbm_tbps=3.0,
              l2_tbps=12.0)  # fmt: skip
A100 = Device("A100 SXM", sms=108, clock_ghz=1.41, tflops_16bit=280.0, tflops_fp32=19.0, hbm_tbps=1.8, l2_tbps=5.0)

# Per-tile fixed cost: the instructions a program issues outside its main loop (index math and pipeline
# prologue before it, the bias/pos/CLS epilogue and the stores after it: ~700 + ~1,000 per warp in the sm_90
# forward's SASS, docs/triton.md), issued by 4 schedulers per SM, plus the latency of the first loads (the
# pipeline fill, ~1,000 cycles from DRAM). A second resident CTA runs its main loop meanwhile, so with c CTAs per
# SM 1/c of it is exposed.
TILE_OUTSIDE_LOOP_INSTRUCTIONS = 1700
PIPELINE_FILL_CYCLES = 1000
LAUNCH_US = 3.0  # an extra launch (the partial-sum reduction of a split grad_weight)


def device_for(capability: tuple[int, int], sm_count: int) -> Device:
    """The model's device for a compute capability (H100-like for 9.x and newer, A100-like for 8.x)."""
    base = H100 if arch_of(capability) == 90 else A100
    return dataclasses.replace(base, sms=sm_count)


@dataclass(frozen=True)
class Estimate:
    """Modeled time of one launch and its parts, in microseconds (see ``estimate``)."""

    us: float
    mma_us: float  # tensor-core (or FMA) time with wave quantization: waves x CTAs x tile time
    fixed_us: float  # exposed per-tile fixed cost
    l2_us: float  # operand tiles read by every program from L2
    dram_us: float  # each operand once from HBM (kernel_cost) + split partials
    floor_us: float  # the roofline floor (kernel_cost)
    programs: int
    waves: int


def _tile_work(kernel: str, grid: geometry.PatchGrid, cfg: KernelConfig, w: int, v: int, programs: int):
    """(programs, FLOPs per program, L2 bytes per program, most tiles one program touches, partial slots per
    tile) of one launch."""
    m, e, k = grid.batch * grid.num_patches, grid.embed_dim, grid.patch_dim
    if kernel == "forward":
        flops = 2 * cfg.block_m * cfg.block_n * k
        return (
            tiles(kernel, grid, cfg),
            flops,
            cfg.block_m * k * v + k * cfg.block_n * w + 2 * cfg.block_m * cfg.block_n * w,
            1,
            1,
        )
    if kernel == "grad_video":
        flops = 2 * cfg.block_m * cfg.block_n * e
        l2 = (cfg.block_m + cfg.block_n) * e * w + cfg.block_m * cfg.block_n * v
        return tiles(kernel, grid, cfg), flops, l2, 1, 1
    if kernel == "grad_weight":  # stream-K: equal runs of steps, each tile touched stores a partial
        plan = stream_k(tiles(kernel, grid, cfg), math.ceil(m / cfg.block_m), programs)
        flops = 2 * cfg.block_m * cfg.block_n * cfg.block_k * plan.steps_per_program
        per_step = cfg.block_m * cfg.block_n * w + cfg.block_m * cfg.block_k * v
        l2 = per_step * plan.steps_per_program + plan.segments * cfg.block_n * cfg.block_k * 4
        return plan.programs, flops, l2, plan.segments, plan.pieces
    raise ValueError(f"no tile model for {kernel!r}")


def estimate(
    kernel: str,
    grid: geometry.PatchGrid,
    cfg: KernelConfig,
    dtype: torch.dtype,
    video_dtype: Optional[torch.dtype] = None,
    device: Device = H100,
    kind: str = "16bit",
    programs: Optional[int] = None,
) -> Estimate:
    """Modeled time of one launch of ``kernel`` with ``cfg``:

    ``max(waves x CTAs x tile MMA time + waves x fixed / CTAs, L2 operand traffic, DRAM traffic)`` where
    waves = programs / (SMs x CTAs per SM) rounded up (a partial last wave costs a whole one), a tile's MMA time
    is its FLOPs at one SM's rate, and the fixed cost is ``TILE_OUTSIDE_LOOP_INSTRUCTIONS`` issued by 4
    schedulers plus ``PIPELINE_FILL_CYCLES``, paid per tile a program touches. grad_weight runs stream-K on
    ``programs`` programs (default: one wave of the resident slots) and adds the partials' reduction (a second
    launch reading every partial slot).
    """
    w, v = _size(dtype), _size(video_dtype or dtype)
    cost = kernel_cost(kernel, grid, dtype, video_dtype)
    floor = cost.floor_us(device.tflops(kind), device.hbm_tbps)
    if kernel == "grad_rows":
        return Estimate(floor, 0.0, 0.0, 0.0, floor, floor, 0, 0)
    ctas = max(1, cfg.ctas_per_sm)
    if programs is None:
        programs = device.sms * ctas
    programs, tile_flops, tile_l2, segments, pieces = _tile_work(kernel, grid, cfg, w, v, programs)
    waves = math.ceil(programs / (device.sms * ctas))
    sm_tflops = device.tflops(kind) / device.sms
    mma_us = waves * ctas * tile_flops / (sm_tflops * 1e6)
    fixed_cycles = TILE_OUTSIDE_LOOP_INSTRUCTIONS * cfg.num_warps / 4 + PIPELINE_FILL_CYCLES
    fixed_us = waves * segments * fixed_cycles / (device.clock_ghz * 1e3) / ctas
    l2_us = programs * tile_l2 / (device.l2_tbps * 1e6)
    dram_bytes = cost.bytes_total
    extra_us = 0.0
    if pieces > 1:
        partials = pieces * grid.embed_dim * grid.patch_dim * 4
        dram_bytes += partials  # written by the kernel
        extra_us = LAUNCH_US + (partials + grid.embed_dim * grid.patch_dim * (4 + w)) / (device.hbm_tbps * 1e6)
    dram_us = dram_bytes / (device.hbm_tbps * 1e6)
    us = max(mma_us + fixed_us, l2_us, dram_us) + extra_us
    return Estimate(us, mma_us, fixed_us, l2_us, dram_us, floor, programs, waves)
