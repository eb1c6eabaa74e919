"""The compiled library's CUDA kernels in the static audit (no GPU): ``python -m lsvit.bench.gpu_audit`` prints them
after the Triton variants.

Every kernel of every architecture in ``lsvit_kernels/_C*.so`` is read with ``cuobjdump`` (``lsvit/bench/sass.py``:
SASS and resource usage) and becomes one row: registers, shared memory, CTAs per SM at its launch shape, the
main loop (the loop with the most HMMA, else FFMA) with its instructions per MMA, LDSM and global loads by width,
local memory and calls in any loop. ``check`` holds the rules a row must meet (the design in docs/native.md):

- no stack or local memory anywhere, no STL/LDL and no subroutine CALL (64-bit division) in any loop;
- ``patch_embed_mma_kernel``: per 32-deep K step 32 HMMA.16816 and 12 LDSM, one barrier, the weight copied with
  16-byte cp.async (LDGSTS.128), the video as its read plan allows (LDGSTS.128 for 8-element 16-bit chunks), no
  I2F for uint8 video read at least 2 bytes at a time, instructions per HMMA under ``LOOP_BOUND``;
- ``patch_embed_fma_kernel``: 256 FFMA per step, at most ``FMA_BOUND`` instructions per FFMA;
- CTAs per SM from registers and shared memory at least ``CTAS_PER_SM`` (what ``__launch_bounds__`` asks).

ptxas advisories do not apply here: the library's cubins come from nvcc, whose ptxas messages are in the build
log; the table shows ``-``.
"""

from __future__ import annotations

import re
from typing import Optional

from . import sass

# Launch shapes (csrc/cuda/patch_embed_cuda.cu): threads per block, dynamic shared bytes. The mma kernel: 256
# threads, 3 stages of (128 + 128) rows x 40 16-bit elements.
LAUNCH = {"patch_embed_mma_kernel": (256, 3 * (128 + 128) * 40 * 2), "patch_embed_fma_kernel": (256, 0)}
# Per 32-deep K step a warp (64 x 32 outputs) issues 32 HMMA.16816 and 12 LDSM.x4 (2 x (4 A + 2 B)), one barrier.
MMA_PER_STEP, LDSM_PER_STEP = 32, 12
# Main-loop instructions per HMMA, at most (measured on sm_80 / sm_90, docs/native.md), by (video, vector width):
# 16-bit video copied with cp.async in 16 / 4 bytes or staged element by element; uint8 staged and converted.
LOOP_BOUND = {
    ("16-bit", 8): 3.6,
    ("16-bit", 2): 6.5,
    ("16-bit", 1): 8.5,
    ("uint8", 8): 5.0,
    ("uint8", 2): 7.5,
    ("uint8", 1): 10.5,
}
# The fp32 kernel: per 16-deep step 16 x 16 FFMA per thread.
FMA_PER_STEP, FMA_BOUND = 256, 3.0
# CTAs per SM at least: two mma blocks, one for a uint8 video read byte by byte (launch-bounded to one block: its
# registers may land anywhere up to 255); the fp32 kernel four.
CTAS_PER_SM = {"mma": 2, "mma uint8 x1": 1, "fma": 4}

_TYPES = {"__nv_bfloat16": "bf16", "__half": "fp16", "float": "fp32", "unsigned char": "u8"}
_VIDEO_BITS = {"bf16": 16, "fp16": 16, "fp32": 32, "u8": 8}


def library() -> tuple[Optional[str], str]:
    """Path of the built library with CUDA kernels, or None and one line saying why there is none."""
    from lsvit_kernels.backends import native

    if not native._has_ext():
        return None, f"CUDA kernels: not audited: {native._load_error}"
    if not native._has_cuda_kernels():
        return None, (
            "CUDA kernels: not audited: the compiled library was built without its CUDA part (no nvcc, or "
            "LSVIT_SKIP_CUDA=1); rebuild it with a CUDA toolkit (CUDA_HOME) to audit them"
        )
    return native._ext.__file__, ""


def short_name(kernel: sass.KernelCode) -> str:
    """``patch_embed_mma_kernel<bf16, u8, 8>``: no namespaces, no arguments, short type names."""
    name = re.sub(r"^void |lsvit::cuda::\(anonymous namespace\)::", "", kernel.name)
    name = re.sub(r"\(.*\)$", "", name)
    for long, short in _TYPES.items():
        name = name.replace(long, short)
    return name


def instantiation(kernel: sass.KernelCode) -> tuple[str, str, str, int]:
    """(family, weight dtype, video dtype, elements per video copy): ``("mma", "bf16", "u8", 8)``,
    ``("fma", "fp32", "u8", 0)``; ``("index", "", "", 0)`` for the gather / scatter / table / CLS kernels."""
    name = short_name(kernel)
    if found := re.match(r"patch_embed_mma_kernel<(\w+), (\w+), (\d+)>", name):
        return "mma", found.group(1), found.group(2), int(found.group(3))
    if found := re.match(r"patch_embed_fma_kernel<(\w+)>", name):
        return "fma", "fp32", found.group(1), 0
    return "index", "", "", 0


def video_class(video: str) -> str:
    return "uint8" if video == "u8" else "16-bit"


def audit_kernel(kernel: sass.KernelCode) -> dict:
    """One flat row for ``kernel`` (module docstring)."""
    family, dtype, video, vec = instantiation(kernel)
    every_loop = sass.all_loops(kernel.instructions)
    loop = sass.main_loop(kernel.instructions)
    row = {
        "arch": kernel.arch,
        "kernel": short_name(kernel),
        "family": family,
        "dtype": dtype,
        "video_dtype": video,
        "vec": vec,
        "registers": kernel.registers,
        "stack_bytes": kernel.stack_bytes,
        "local_bytes": kernel.local_bytes,
        "shared_bytes": kernel.launch_shared(),
        "ctas_per_sm": None,
        "ctas_documented": None,
        "video_load_bits": vec * _VIDEO_BITS[video] if video else None,
        "loops_local": sum(lp.local for lp in every_loop),
        "loops_calls": sum(lp.calls for lp in every_loop),
        "loop_instructions": 0,
        "loop_mma": 0,
        "mma_opcode": "",
        "per_mma": None,
        "bound": None,
        "loads": {},
        "ldsm": 0,
        "barriers": 0,
        "i2f": 0,
        "advisories": None,
    }
    launch = next((shape for name, shape in LAUNCH.items() if row["kernel"].startswith(name)), None)
    if launch is not None:
        threads, dynamic = launch
        row["shared_bytes"] = kernel.launch_shared(dynamic)
        row["ctas_per_sm"] = sass.ctas_per_sm(kernel.registers, row["shared_bytes"], threads // 32, kernel.sm)["ctas"]
        key = "mma uint8 x1" if (family, video, vec) == ("mma", "u8", 1) else family
        row["ctas_documented"] = CTAS_PER_SM[key]
    if family == "mma":
        row["bound"] = LOOP_BOUND[(video_class(video), vec)]
    elif family == "fma":
        row["bound"] = FMA_BOUND
    if loop is not None:
        row.update(
            loop_instructions=loop.instructions,
            loop_mma=loop.mma,
            mma_opcode=loop.mma_opcode,
            per_mma=round(loop.per_mma, 2) if loop.mma else None,
            loads={op: loop.widths(op) for op in ("LDGSTS", "LDG") if loop.count(op)},
            ldsm=loop.count("LDSM"),
            barriers=loop.count("BAR"),
            i2f=loop.count("I2F"),
        )
    return row


def audit(path: str) -> list[dict]:
    """Every kernel of every architecture in the library at ``path``, sorted by architecture and name."""
    rows = [audit_kernel(k) for k in sass.read_library(path)]
    return sorted(rows, key=lambda r: (r["arch"], r["family"] == "index", r["kernel"]))


def wide_copies(row: dict) -> int:
    """16-byte cp.async (LDGSTS.128) per thread and step the design asks for: the weight's 2 rows, and 2 more
    when the video is copied asynchronously in 8-element 16-bit chunks."""
    async_video = row["video_dtype"] == row["dtype"] and row["vec"] >= 2
    return 4 if async_video and row["vec"] == 8 else 2


def check(row: dict) -> list[str]:
    """What is wrong with one audited kernel (empty when it passes)."""
    problems = []
    if row["stack_bytes"] or row["local_bytes"]:
        problems.append(f"stack {row['stack_bytes']} B, local memory {row['local_bytes']} B (spills)")
    if row["loops_local"]:
        problems.append(f"{row['loops_local']} local-memory (STL/LDL) instructions in loops")
    if row["loops_calls"]:
        problems.append(f"{row['loops_calls']} CALL instructions (slow paths) in loops")
    if row["ctas_documented"] is not None and row["ctas_per_sm"] < row["ctas_documented"]:
        problems.append(f"{row['ctas_per_sm']} CTAs per SM, documented at least {row['ctas_documented']}")
    if row["family"] == "index":
        return problems
    want_mma = MMA_PER_STEP if row["family"] == "mma" else FMA_PER_STEP
    if row["loop_mma"] != want_mma:
        problems.append(f"{row['loop_mma']} {row['mma_opcode'] or 'MMA'} in the main loop, designed {want_mma}")
    if row["per_mma"] is None or row["per_mma"] > row["bound"]:
        problems.append(f"{row['per_mma']} instructions per MMA over {row['bound']}")
    if row["family"] == "mma":
        if row["ldsm"] != LDSM_PER_STEP or row["barriers"] != 1:
            problems.append(f"{row['ldsm']} LDSM and {row['barriers']} barriers per step, designed 12 and 1")
        wide = row["loads"].get("LDGSTS", {}).get(128, 0)
        if wide != wide_copies(row):
            problems.append(f"{wide} LDGSTS.128 per step, designed {wide_copies(row)}")
        if row["video_dtype"] == "u8" and row["vec"] >= 2 and row["i2f"]:
            problems.append(f"{row['i2f']} I2F in the loop: bytes are converted with PRMT + FADD / HADD2")
    return problems


def _loads(row: dict) -> str:
    """``LDGSTS 128x4, LDG 32x1``: the main loop's global loads by bits per access."""
    return ", ".join(
        f"{op} " + " ".join(f"{bits}x{n}" for bits, n in sorted(widths.items(), reverse=True))
        for op, widths in row["loads"].items()
    )


def render(rows: list[dict], path: str) -> str:
    lines = [
        f"CUDA kernels of the compiled library ({path}; cuobjdump; no ptxas advisories: see the build log):",
        "",
        "| arch | kernel | regs | smem KB | CTAs/SM | loop instr | MMA | instr/MMA (bound) | LDSM | loop loads "
        "(bits x n) | video chunk bits | local in loops | calls in loops | advisories | verdict |",
        "|" + "---|" * 15,
    ]
    for r in rows:
        problems = check(r)
        bound = f" ({r['bound']})" if r["bound"] is not None else ""
        mma = f"{r['loop_mma']} {r['mma_opcode'].split('.')[0]}" if r["loop_mma"] else "-"
        lines.append(
            f"| {r['arch']} | {r['kernel']} | {r['registers']} | {r['shared_bytes'] / 1024:.0f} "
            f"| {r['ctas_per_sm'] if r['ctas_per_sm'] is not None else '-'} | {r['loop_instructions'] or '-'} "
            f"| {mma} | {r['per_mma'] if r['per_mma'] is not None else '-'}{bound} | {r['ldsm'] or '-'} "
            f"| {_loads(r) or '-'} | {r['video_load_bits'] or '-'} | {r['loops_local']} | {r['loops_calls']} | - "
            f"| {'ok' if not problems else '; '.join(problems)} |"
        )
    return "\n".join(lines) + "\n"
