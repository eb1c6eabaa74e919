"""Ahead-of-time compile of every Triton kernel config the heuristic can pick, for sm_80 and sm_90, without a GPU.

For each (kernel, architecture, config, operand dtypes) it compiles the ``@triton.jit`` kernel with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` and reports what the hardware would see:
tensor-core instructions in the PTX (``mma``; ``wgmma`` on sm_90), registers / spills / stack from
``cuobjdump --dump-resource-usage`` (shipped in the Triton wheel), and shared memory.

Run ``python -m lsvit_kernels.backends.triton_aot`` (TRITON_INTERPRET must be unset: interpreted kernels cannot
be compiled); it prints one JSON object per compiled variant. ``tests/kernels/test_triton_aot.py`` runs it in a
subprocess and asserts on the results.

Variants compiled: fp16 and bf16 produce the same tiles, registers and shared memory (two-byte operands, the
same MMA shapes), so the 16-bit tables are compiled for bf16 with a bf16 video and with a uint8 video (one-byte
loads, in-register cast); float32 for its video and for a uint8 video. Every flag that adds work (bias,
per-token pos, CLS slot) is on: the worst case for registers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import triton_kernels as kernels
from . import triton_tuning as tuning

ARCHS = (80, 90)
_TRITON_TYPE = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32", "u8": "*u8"}

# Per kernel: the pointer arguments and which operand each one holds ("video", "weight", "out32" = float32).
_POINTERS = {
    "forward": {
        "video_ptr": "video",
        "weight_ptr": "weight",
        "bias_ptr": "weight",
        "pos_ptr": "weight",
        "cls_ptr": "weight",
        "out_ptr": "weight",
    },
    "grad_weight": {"grad_ptr": "weight", "video_ptr": "video", "partial_ptr": "fp32"},
    "grad_video": {"grad_ptr": "weight", "weight_ptr": "weight", "grad_video_ptr": "video"},
    "grad_rows": {"grad_ptr": "weight", "partial_ptr": "fp32"},
}
_FUNCTIONS = {
    "forward": "patch_embed_fwd_kernel",
    "grad_weight": "patch_embed_grad_weight_kernel",
    "grad_video": "patch_embed_grad_video_kernel",
    "grad_rows": "patch_embed_grad_rows_kernel",
}
# (video, weight) dtypes compiled per operand kind (module docstring).
_DTYPES = {"16bit": (("bf16", "bf16"), ("u8", "bf16")), "tf32": (("fp32", "fp32"), ("u8", "fp32"))}
_DTYPES["ieee"] = _DTYPES["tf32"]
# Integer arguments that are multiples of 16 for the reference shape (B=32, T=16, 224x224, 2x16x16, E=768),
# as the launcher's specialization would mark them; stride_w == 1 becomes a constant there too.
_DIVISIBLE = {"embed_dim", "patch_dim", "num_tokens", "stride_b", "stride_t", "stride_c", "stride_h", "rows"}


def variants() -> list[tuple[str, int, str, tuple[str, str], tuning.KernelConfig, bool]]:
    """(kernel, arch, operand kind, (video dtype, weight dtype), config, wide) of everything the heuristic can pick.

    Every config is compiled with int32 offsets (``wide=False``, any video under 2^31 elements); the first
    (largest) config of each table also with int64 offsets, the path for larger videos.
    """
    out = []
    for kernel in tuning.KERNELS:
        for arch in ARCHS:
            for kind in ("16bit", "tf32", "ieee"):
                pairs = _DTYPES[kind]
                if kernel == "grad_video":  # only float videos have a gradient
                    pairs = tuple(p for p in pairs if p[0] != "u8")
                if kernel == "grad_rows":  # reads grad_tokens only: one variant per element size
                    pairs = pairs[:1] if kind != "ieee" else ()
                configs = tuning.candidate_configs(kernel, arch, kind)
                for pair in pairs:
                    for cfg in configs:
                        out.append((kernel, arch, kind, pair, cfg, False))
                if pairs and kernel != "grad_rows":
                    out.append((kernel, arch, kind, pairs[0], configs[0], True))
    return out


def _source(kernel: str, kind: str, dtypes: tuple[str, str], cfg: tuning.KernelConfig, wide: bool = False) -> ASTSource:
    fn = getattr(kernels, _FUNCTIONS[kernel])
    video, weight = dtypes
    roles = {"video": video, "weight": weight, "fp32": "fp32"}
    if kernel == "grad_rows":
        constexprs = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n}
    else:
        constexprs = {
            "PATCH_T": 2,
            "PATCH_H": 16,
            "PATCH_W": 16,
            "CLS_SLOTS": 1,
            "WIDE": wide,
            "DOT_PRECISION": "ieee" if kind == "ieee" else "tf32",
            "INTERPRET_BF16": False,
            "stride_w": 1,
            **cfg.meta(),
        }
        if kernel == "forward":
            constexprs.update(HAS_BIAS=True, HAS_POS=True, POS_PER_TOKEN=True)
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _POINTERS[kernel]:
            signature[name] = _TRITON_TYPE[roles[_POINTERS[kernel][name]]]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name in _DIVISIBLE:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def cuobjdump() -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the (single) kernel in ``cubin``, from ``cuobjdump --dump-resource-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [cuobjdump(), "--dump-resource-usage", f.name], check=True, capture_output=True, text=True
        ).stdout
    usage = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}
    if not {"REG", "STACK", "SHARED", "LOCAL"} <= usage.keys():
        raise RuntimeError(f"unexpected cuobjdump output:\n{text}")
    return usage


def compile_variant(
    kernel: str, arch: int, kind: str, dtypes: tuple[str, str], cfg: tuning.KernelConfig, wide: bool = False
) -> dict:
    start = time.perf_counter()
    compiled = triton.compile(
        _source(kernel, kind, dtypes, cfg, wide), target=GPUTarget("cuda", arch, 32), options=cfg.launch()
    )
    ptx = compiled.asm["ptx"]
    usage = resource_usage(compiled.asm["cubin"])
    return {
        "kernel": kernel,
        "arch": arch,
        "kind": kind,
        "video_dtype": dtypes[0],
        "dtype": dtypes[1],
        "config": cfg.__dict__,
        "wide": wide,
        "mma": bool(re.search(r"\bmma\.sync", ptx)),
        "wgmma": "wgmma.mma_async" in ptx,
        "shared": compiled.metadata.shared + usage["SHARED"],  # dynamic + static
        **usage,
        "seconds": round(time.perf_counter() - start, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th variant starting at I (parallel runs)")
    args = parser.parse_args(argv)
    index, count = (int(x) for x in args.shard.split("/"))
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled ahead of time")
    for variant in variants()[index::count]:
        print(json.dumps(compile_variant(*variant)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
