"""Triton backend of ``smif_patch_embed``: SMIF computed in the gather of the patch-embedding implicit GEMM.

One program computes a (BLOCK_M patch tokens) x (BLOCK_N embedding columns) tile as ``triton_kernels``'
patch-embedding forward does, except what it gathers: for each element ``(token, k)`` of a K tile it reads the
same pixel in every channel and in every frame within the SMIF window (clipped at the clip's ends), normalizes
each value (``v * scale_c + shift_c``), and forms ``X'`` (tile of the ``W`` GEMM) and ``S`` (tile of the ``W_m``
GEMM) in float32 registers (float64 for float64). No ``(B, T, 2C, H, W)`` tensor and no concatenated weight.
The reads repeat ``C (2r + 1)`` times per element, from L1/L2 (a tile's pixels and their neighbours: a few KB).

Registered like ``triton_patch_embed``: CUDA tensors, and CPU tensors only under ``TRITON_INTERPRET=1`` (tests).
Fixed tiles (32 x 32 x 32 in the interpreter, 64 x 128 x 32 on a GPU); no tuning table yet.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import geometry
from . import smif_reference
from .triton_patch_embed import INTERPRET, _device_guard, _dot_precision, unavailable_reason

try:
    import triton
    import triton.language as tl

    from .triton_kernels import store_tokens, tubelet_offset
except Exception:  # triton_patch_embed.unavailable_reason says why
    triton = None

__all__ = ["forward", "unavailable_reason", "DEVICES"]

DEVICES = ("cuda", "cpu") if INTERPRET else ("cuda",)

if triton is not None:

    @triton.jit
    def smif_neighbour(video_ptr, at, shift_t, valid, x, scale, shift, d, s, SIGN: tl.constexpr):
        """Adds one neighbour frame's |difference| to ``d`` and its signed (later minus earlier) one to ``s``."""
        xj = tl.load(video_ptr + (at + shift_t), mask=valid, other=0).to(x.dtype) * scale + shift
        diff = tl.where(valid, xj - x, 0.0)
        return d + tl.abs(diff), s + SIGN * diff

    @triton.jit
    def smif_patch_embed_fwd_kernel(
        # pointers
        video_ptr,  # logical (B, T, C, H, W), any strides; the weight's dtype or uint8
        weight_ptr,  # (E, K) contiguous, K in (c, dt, dh, dw) order: projects X'
        motion_weight_ptr,  # (E, K) contiguous: projects S; a dummy without HAS_MOTION
        bias_ptr,  # (E,) or a dummy
        pos_ptr,  # (S + N, E) or (T' (S + N), E), or a dummy
        cls_ptr,  # (E,) or a dummy
        out_ptr,  # (B, T', S + N, E) contiguous
        threshold_ptr,  # (C,) float32 softplus(theta)
        fuse_weight_ptr,  # (C, 2C) float32
        fuse_bias_ptr,  # (C,) float32
        gate_ptr,  # (C,) float32
        scale_ptr,  # (C,) float32: x = v * scale + shift
        shift_ptr,
        # sizes
        num_tokens,
        embed_dim,
        # video strides (elements), logical (B, T, C, H, W)
        stride_b,
        stride_t,
        stride_c,
        stride_h,
        stride_w,
        # geometry, compile-time
        FRAMES: tl.constexpr,
        RADIUS: tl.constexpr,
        CHANNELS: tl.constexpr,
        GRID_H: tl.constexpr,
        GRID_W: tl.constexpr,
        STEPS: tl.constexpr,
        PATCH_T: tl.constexpr,
        PATCH_H: tl.constexpr,
        PATCH_W: tl.constexpr,
        HAS_MOTION: tl.constexpr,
        CLS_SLOTS: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_POS: tl.constexpr,
        POS_PER_TOKEN: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        INTERPRET_BF16: tl.constexpr,
        ACC: tl.constexpr,  # float64 for float64 weights, else float32: SMIF's arithmetic and the accumulator
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """Tokens of one tile: X' and S gathered and formed per element, two dots, bias/pos/CLS epilogue."""
        NUM_SPATIAL: tl.constexpr = GRID_H * GRID_W
        PATCH_DIM: tl.constexpr = CHANNELS * PATCH_T * PATCH_H * PATCH_W
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_mask = offs_m < num_tokens
        n_mask = offs_n < embed_dim
        token = tl.where(m_mask, offs_m, 0)
        origin = tubelet_offset(
            token, stride_b, stride_t, stride_h, stride_w, GRID_H, GRID_W, STEPS, PATCH_T, PATCH_H, PATCH_W, True
        )  # (BLOCK_M,) int64
        step = (token // NUM_SPATIAL) % STEPS
        compute_dtype = tl.float32 if INTERPRET_BF16 else weight_ptr.dtype.element_ty
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for k0 in range(0, PATCH_DIM, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < PATCH_DIM
            dw = offs_k % PATCH_W
            row = offs_k // PATCH_W
            dh = row % PATCH_H
            dt = (row // PATCH_H) % PATCH_T
            channel = tl.where(k_mask, row // (PATCH_H * PATCH_T), 0)  # the output channel o of X'[o], S[o]
            pixel = dt.to(tl.int64) * stride_t + dh.to(tl.int64) * stride_h + dw.to(tl.int64) * stride_w
            at = origin[:, None] + pixel[None, :]  # (BLOCK_M, BLOCK_K), channel 0
            frame = step[:, None] * PATCH_T + dt[None, :]
            first = tl.maximum(frame - RADIUS, 0)
            last = tl.minimum(frame + RADIUS, FRAMES - 1)
            inv_count = 1.0 / tl.maximum(last - first, 1).to(ACC)
            mask = m_mask[:, None] & k_mask[None, :]
            fused = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
            fused += tl.load(fuse_bias_ptr + channel, mask=k_mask, other=0.0)[None, :]
            x_own = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
            s_own = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
            for c in tl.static_range(CHANNELS):
                scale = tl.load(scale_ptr + c)
                shift = tl.load(shift_ptr + c)
                at_c = at + c * stride_c
                x = tl.load(video_ptr + at_c, mask=mask, other=0).to(ACC) * scale + shift
                d = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
                s = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
                for k in tl.static_range(1, RADIUS + 1):
                    later = mask & (frame + k <= FRAMES - 1)
                    earlier = mask & (frame - k >= 0)
                    d, s = smif_neighbour(video_ptr, at_c, k * stride_t, later, x, scale, shift, d, s, 1.0)
                    d, s = smif_neighbour(video_ptr, at_c, -k * stride_t, earlier, x, scale, shift, d, s, -1.0)
                motion = tl.maximum(d * inv_count - tl.load(threshold_ptr + c), 0.0)  # M of channel c
                w_x = tl.load(fuse_weight_ptr + channel * (2 * CHANNELS) + c, mask=k_mask, other=0.0)
                w_m = tl.load(fuse_weight_ptr + channel * (2 * CHANNELS) + CHANNELS + c, mask=k_mask, other=0.0)
                fused += w_x[None, :] * x + w_m[None, :] * motion
                own = (channel == c)[None, :]
                x_own = tl.where(own, x, x_own)
                s_own = tl.where(own, s * inv_count, s_own)
            gate = tl.load(gate_ptr + channel, mask=k_mask, other=0.0)
            frames_tile = tl.where(mask, x_own + gate[None, :] * fused, 0.0)  # X'
            w = tl.load(
                weight_ptr + (offs_n[None, :] * PATCH_DIM + offs_k[:, None]),
                mask=k_mask[:, None] & n_mask[None, :],
                other=0.0,
            )  # (BLOCK_K, BLOCK_N) = W^T tile
            acc = tl.dot(frames_tile.to(compute_dtype), w.to(compute_dtype), acc, input_precision=DOT_PRECISION)
            if HAS_MOTION:
                w_m_tile = tl.load(
                    motion_weight_ptr + (offs_n[None, :] * PATCH_DIM + offs_k[:, None]),
                    mask=k_mask[:, None] & n_mask[None, :],
                    other=0.0,
                )
                motion_tile = tl.where(mask, s_own, 0.0)  # S
                acc = tl.dot(
                    motion_tile.to(compute_dtype), w_m_tile.to(compute_dtype), acc, input_precision=DOT_PRECISION
                )

        # the patch-embedding forward's epilogue (int64 rows)
        store_tokens(
            acc, token, m_mask, offs_n, n_mask, out_ptr, bias_ptr, pos_ptr, cls_ptr, embed_dim,
            NUM_SPATIAL, STEPS, CLS_SLOTS, HAS_BIAS, HAS_POS, POS_PER_TOKEN, True, INTERPRET_BF16,
        )  # fmt: skip


def forward(call: smif_reference.SmifCall) -> Tensor:
    video, weight, motion_weight, bias, pos_embed, cls_token = call[:6]
    radius = call.radius
    grid = geometry.grid_of(video.shape, weight.shape, cls_token is not None)
    if grid.num_patches * grid.batch >= 2**31:
        raise ValueError(f"{grid.num_patches * grid.batch} patch tokens: the Triton kernel indexes tokens in int32")
    params = smif_reference.kernel_parameters(call)
    out = torch.empty(grid.output_shape, dtype=weight.dtype, device=video.device)
    # GPU: wide column tiles, since every column tile forms its X' and S tiles again (E / BLOCK_N times)
    blocks = (32, 32, 32) if video.device.type != "cuda" else (64, 128, 32)
    dummy = weight
    launch_grid = (triton.cdiv(grid.batch * grid.num_patches, blocks[0]), triton.cdiv(grid.embed_dim, blocks[1]))
    pos_per_token = pos_embed is not None and grid.pos_is_per_token(pos_embed.shape[0])
    with _device_guard(video.device):
        smif_patch_embed_fwd_kernel[launch_grid](
            video,
            weight.reshape(grid.embed_dim, -1),
            dummy if motion_weight is None else motion_weight.reshape(grid.embed_dim, -1),
            dummy if bias is None else bias,
            dummy if pos_embed is None else pos_embed,
            dummy if cls_token is None else cls_token,
            out,
            *params,
            grid.batch * grid.num_patches,
            grid.embed_dim,
            *video.stride(),
            FRAMES=grid.frames,
            RADIUS=radius,
            CHANNELS=grid.channels,
            GRID_H=grid.grid_h,
            GRID_W=grid.grid_w,
            STEPS=grid.steps,
            PATCH_T=grid.tubelet,
            PATCH_H=grid.patch_h,
            PATCH_W=grid.patch_w,
            HAS_MOTION=motion_weight is not None,
            CLS_SLOTS=grid.cls_slots,
            HAS_BIAS=bias is not None,
            HAS_POS=pos_embed is not None,
            POS_PER_TOKEN=pos_per_token,
            DOT_PRECISION=_dot_precision(weight.dtype),
            INTERPRET_BF16=INTERPRET and weight.dtype == torch.bfloat16,
            ACC=tl.float64 if weight.dtype == torch.float64 else tl.float32,
            BLOCK_M=blocks[0],
            BLOCK_N=blocks[1],
            BLOCK_K=blocks[2],
        )
    return out


def compile_for_gpu(arch: int = 90, dtype: torch.dtype = torch.bfloat16, video_dtype: Optional[torch.dtype] = None):
    """The forward kernel compiled ahead of time for ``sm_{arch}`` at the benchmark's 3D shape (ViT-B, 2 x 16 x 16
    tubelets, window 5, CLS, per-token pos), without a GPU; ``TRITON_INTERPRET`` must be unset. For the static
    check in tests/kernels/test_smif_embed.py: the cubin assembles and the PTX uses no local memory."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.uint8: "*u8"}
    video_type = names[video_dtype or dtype]
    pointers = {"video_ptr": video_type, "threshold_ptr": "*fp32", "fuse_weight_ptr": "*fp32"}
    pointers |= {"fuse_bias_ptr": "*fp32", "gate_ptr": "*fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32"}
    for name in ("weight_ptr", "motion_weight_ptr", "bias_ptr", "pos_ptr", "cls_ptr", "out_ptr"):
        pointers[name] = names[dtype]
    constexprs = {"FRAMES": 16, "RADIUS": 2, "CHANNELS": 3, "GRID_H": 14, "GRID_W": 14, "STEPS": 8, "PATCH_T": 2}
    constexprs |= {"PATCH_H": 16, "PATCH_W": 16, "HAS_MOTION": True, "CLS_SLOTS": 1, "HAS_BIAS": True}
    constexprs |= {
        "HAS_POS": True,
        "POS_PER_TOKEN": True,
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }
    constexprs |= {"INTERPRET_BF16": False, "ACC": tl.float32, "BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}
    fn = smif_patch_embed_fwd_kernel
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name], attrs[(i,)] = pointers[name], [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4, "num_stages": 2})
