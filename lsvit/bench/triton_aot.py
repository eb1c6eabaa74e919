"""Ahead-of-time compile of the Triton kernels exactly as the launch wrappers would launch them, without a GPU.

A ``Variant`` names one compiled kernel: kernel, architecture, benchmark shape, dtypes, video layout and block
config. ``launch_of`` builds the wrapper's own ``Launch`` on ``meta`` tensors (so the geometry constexprs, the
k order, the weight permutation and every flag are the wrapper's), and ``compile_variant`` turns it into
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` with the argument specialization Triton's
launcher applies (integers equal to 1 become constants, multiples of 16 and tensor pointers are marked
16-divisible). ``lsvit.bench.gpu_audit`` reads the result with ptxas / cuobjdump.

``TRITON_INTERPRET`` must be unset: interpreted kernels cannot be compiled (tests run this in a subprocess).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lsvit_kernels import geometry
from lsvit_kernels.backends import triton_kernels as kernels
from lsvit_kernels.backends import triton_patch_embed as backend
from lsvit_kernels.backends import triton_tuning as tuning

ARCHS = (90, 80)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "u8": torch.uint8}
_TRITON_TYPE = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.uint8: "*u8"}

# The benchmark shapes the audit compiles for (batch only changes run-time arguments): the headline 3D clip,
# a ViT-B/16 image batch and a ViT-L/14 (DINOv2) image batch.
SHAPES = {
    "3d-p16": ((32, 16, 3, 224, 224), (768, 3, 2, 16, 16)),
    "2d-p16": ((32, 1, 3, 224, 224), (768, 3, 16, 16)),
    "2d-p14": ((32, 1, 3, 224, 224), (1024, 3, 14, 14)),
}
LAYOUTS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class Variant:
    kernel: str  # one of tuning.KERNELS
    arch: int  # 80 or 90
    shape: str  # key of SHAPES
    video_dtype: str  # key of DTYPES
    dtype: str  # weight / compute dtype
    kind: str  # "16bit", "tf32" or "ieee" (tuning.operand_kind)
    layout: str  # "contiguous" (B, T, C, H, W) or "channels_last" (B, T, H, W, C) in memory
    config: tuning.KernelConfig
    wide: bool = False  # compile the int64-offset path

    @property
    def name(self) -> str:
        c = self.config
        tile = f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages}"
        flags = (" cl" if self.layout == "channels_last" else "") + (" i64" if self.wide else "")
        return f"{self.kernel} sm_{self.arch} {self.shape} {self.video_dtype}->{self.dtype}/{self.kind}{flags} {tile}"

    def grid(self) -> geometry.PatchGrid:
        video, weight = SHAPES[self.shape]
        return geometry.patch_grid(video, weight, has_cls=True)


def _meta(shape, dtype: torch.dtype, layout: str = "contiguous") -> torch.Tensor:
    if layout == "channels_last":  # (B, T, C, H, W) viewed from (B, T, H, W, C) memory
        b, t, c, h, w = shape
        return torch.empty((b, t, h, w, c), dtype=dtype, device="meta").permute(0, 1, 4, 2, 3)
    return torch.empty(shape, dtype=dtype, device="meta")


def launch_of(variant: Variant) -> backend.Launch:
    """The wrapper's launch for ``variant``, on ``meta`` tensors (every flag that adds work on: bias, per-token
    pos, CLS slot; the worst case for registers)."""
    grid = variant.grid()
    video_shape, weight_shape = SHAPES[variant.shape]
    dtype, video_dtype = DTYPES[variant.dtype], DTYPES[variant.video_dtype]
    video = _meta((grid.batch, grid.frames, grid.channels, grid.height, grid.width), video_dtype, variant.layout)
    weight = _meta(weight_shape, dtype)
    tokens = _meta(grid.output_shape, dtype)
    cfg = variant.config
    precision = {"16bit": "highest", "tf32": "high", "ieee": "highest"}[variant.kind]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        if variant.kernel == "forward":
            pos = _meta((grid.steps * grid.tokens_per_step, grid.embed_dim), dtype)
            bias, cls = _meta((grid.embed_dim,), dtype), _meta((grid.embed_dim,), dtype)
            launch = backend.forward_launch(video, weight, bias, pos, cls, tokens, cfg)
        elif variant.kernel == "grad_weight":
            device = tuning.H100 if variant.arch == 90 else tuning.A100
            programs = tuning.best_programs(grid, cfg, device, dtype, video_dtype, variant.kind)
            launch, _ = backend.grad_weight_launch(tokens, video, weight, True, cfg, programs)
        elif variant.kernel == "grad_video":
            launch = backend.grad_video_launch(tokens, weight, video, True, cfg)
        else:
            rows = grid.tokens_per_step
            launch = backend.grad_rows_launch(tokens, grid.batch * grid.steps, rows, cfg, splits=4)
    finally:
        torch.set_float32_matmul_precision(previous)
    if variant.wide:
        launch.meta["WIDE"] = True
    return launch


def source(launch: backend.Launch) -> ASTSource:
    """``launch`` as Triton's launcher would specialize it."""
    fn = getattr(kernels, launch.kernel)
    signature, constexprs, attrs = {}, dict(launch.meta), {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = launch.args[name]
        if isinstance(value, torch.Tensor):
            signature[name] = _TRITON_TYPE[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # allocations are 16-byte aligned
        elif value == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def compile_variant(variant: Variant):
    """The compiled kernel (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata.shared``) of ``variant``."""
    launch = launch_of(variant)
    return triton.compile(source(launch), target=GPUTarget("cuda", variant.arch, 32), options=variant.config.launch())


# Nominal devices of the two architectures, for the configs the heuristic picks at the benchmark shapes.
NOMINAL = {90: tuning.H100, 80: tuning.A100}


def picked(kernel: str, arch: int, shape: str, dtype: str, video_dtype: str, kind: str) -> tuning.KernelConfig:
    video_shape, weight_shape = SHAPES[shape]
    grid = geometry.patch_grid(video_shape, weight_shape, has_cls=True)
    device = NOMINAL[arch]
    precision = "tf32" if kind == "tf32" else "ieee"
    return tuning.pick_config(
        kernel,
        grid,
        DTYPES[dtype],
        DTYPES[video_dtype],
        (arch // 10, 0),
        device.sms,
        tuning.SMEM_LIMIT[arch],
        precision,
    )


def variants(full_tables: bool = True) -> list[Variant]:
    """Everything the tuning can pick at the benchmark shapes, for sm_90 and sm_80.

    - headline 3D shape, contiguous video: every config of the tables (16-bit with bf16 and uint8 video, tf32
      with float32 video; exact float32 has one config);
    - the config the heuristic picks at each benchmark shape for: fp16, tf32 and exact float32 (float32 and
      uint8 videos), channels-last videos (bf16 and uint8), 2D P=16 and P=14; the int64-offset path;
    - grad_rows (one config; it reads grad_tokens only).
    grad_video has no uint8 variant (no gradient for integer videos) and writes a contiguous gradient.
    """
    out: list[Variant] = []

    def add(kernel, arch, shape, video_dtype, dtype, kind, layout="contiguous", cfg=None, wide=False):
        if kernel == "grad_video" and (video_dtype == "u8" or layout == "channels_last"):
            return
        cfg = cfg or picked(kernel, arch, shape, dtype, video_dtype, kind)
        v = Variant(kernel, arch, shape, video_dtype, dtype, kind, layout, cfg, wide)
        if v not in out:
            out.append(v)

    for arch in ARCHS:
        for kernel in ("forward", "grad_weight", "grad_video"):
            for video_dtype in ("bf16", "u8"):
                table = tuning.candidate_configs(kernel, arch, "16bit")
                for cfg in table if full_tables else table[:1]:
                    add(kernel, arch, "3d-p16", video_dtype, "bf16", "16bit", cfg=cfg)
            table = tuning.candidate_configs(kernel, arch, "tf32")
            for cfg in table if full_tables else table[:1]:
                add(kernel, arch, "3d-p16", "fp32", "fp32", "tf32", cfg=cfg)
            add(kernel, arch, "3d-p16", "fp16", "fp16", "16bit")
            for kind in ("tf32", "ieee"):
                add(kernel, arch, "3d-p16", "fp32", "fp32", kind)
                add(kernel, arch, "3d-p16", "u8", "fp32", kind)
            for video_dtype in ("bf16", "u8"):
                add(kernel, arch, "3d-p16", video_dtype, "bf16", "16bit", layout="channels_last")
            for shape in ("2d-p16", "2d-p14"):
                add(kernel, arch, shape, "bf16", "bf16", "16bit")
            add(kernel, arch, "2d-p14", "u8", "bf16", "16bit")
            add(kernel, arch, "3d-p16", "bf16", "bf16", "16bit", wide=True)
        add(
            "grad_rows",
            arch,
            "3d-p16",
            "bf16",
            "bf16",
            "16bit",
            cfg=tuning.candidate_configs("grad_rows", arch, "16bit")[0],
        )
    return out
