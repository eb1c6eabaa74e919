"""Static audit of the GPU kernels' compiled code, no GPU needed: ``python -m lsvit.bench.gpu_audit``.

Every variant the tuning can pick at the benchmark shapes (``triton_aot.variants``) is compiled for sm_90a and
sm_80 exactly as the launch wrapper would launch it, assembled with the wheel's ``ptxas -v`` and read back with
``cuobjdump -sass`` (``lsvit/bench/sass.py``). Per variant the audit reports and ``check`` asserts:

- no ptxas performance advisory (e.g. C7515, wgmma serialized);
- no local-memory traffic (STL/LDL) and no slow-path call (CALL) inside the main loop (the loop with the MMAs);
  spills after the loop (epilogue) are reported, not failed;
- global loads in the main loop as wide as the strides allow: the video tile's widest legal access
  (``video_load_bits``: 128 bits when its contiguous runs start 16-byte aligned), as a cp.async (LDGSTS) when
  that is at least 4 bytes; no plain LDG left in a pipelined loop;
- issue pressure: the main loop's instructions per MMA, as ``issue_ratio`` = issue cycles of one loop iteration
  (warps x instructions / 4 schedulers) over its tensor-core cycles (FLOPs / the SM's FLOPs per clock); at most
  the bound of its class (``ISSUE_BOUNDS``);
- CTAs per SM from registers and shared memory at least the config's documented ``ctas_per_sm`` (what the cost
  model assumes).

Then the cost model's estimate per benchmark shape (``triton_tuning.estimate``, an estimate, not a measurement)
next to the roofline floor. Last, the compiled library's CUDA kernels (``lsvit/bench/cuda_audit.py``), one row per
kernel and architecture with the same columns where they apply; a library built without them gets one line
saying so. ``--json`` prints one JSON object per variant and kernel instead (the tests read those), ``--part``
audits one half.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Optional

from . import cuda_audit, sass

# Issue bounds: the main loop's issue cycles per tensor-core cycle (1.0 = issue-bound). The base bound leaves 10%
# of the issue slots free; the other classes pay for work the data forces into the loop, and take the largest
# bound that applies:
ISSUE_BOUNDS = {
    "base": 0.9,
    "wide": 1.4,  # int64 offsets: every address add is two instructions
    "uint8": 1.6,  # a uint8 video: I2F + PRMT per pixel converted to the 16-bit operand in the loop
    "narrow": 2.2,  # operand runs narrower than 16 bytes (P=14 rows start 2-element aligned; tf32 MN-major
    #                 operands copied 4 bytes at a time): 4-8x the copy instructions of 16-byte runs
    "ieee": 1.4,  # exact float32: the FFMAs are themselves the issue slots; >= 70% of the loop is FFMA
}

# Dense FLOPs per clock per SM: H100 989 TFLOP/s bf16 / (132 SMs x 1.83 GHz) = 4096; A100 312 / (108 x 1.41) = 2048.
FLOPS_PER_CLOCK = {
    90: {"16bit": 4096, "tf32": 2048, "ieee": 256},
    80: {"16bit": 2048, "tf32": 1024, "ieee": 128},
}
_BITS = {"bf16": 16, "fp16": 16, "fp32": 32, "u8": 8}


def _pow2(n: int) -> int:
    """Largest power of two dividing ``n`` (n > 0)."""
    return n & -n


def video_load_bits(variant) -> Optional[int]:
    """Widest legal access (bits, <= 128) to the video tile in ``variant``'s main loop; None when the loop does not
    read the video (grad_video reads grad and weight; grad_rows reads grad only).

    A run of contiguous pixels (``pw`` in (c, dt, dh, dw) order, ``pw C`` in channels-last order) starts at
    multiples of the gcd of the run length and the video's strides, so a vector access may be at most that many
    elements (a power of two)."""
    if variant.kernel not in ("forward", "grad_weight"):
        return None
    g = variant.grid()
    if variant.layout == "channels_last":
        run, strides = g.patch_w * g.channels, (g.width * g.channels, g.height * g.width * g.channels)
    else:
        run, strides = g.patch_w, (g.width, g.height * g.width)
    elements = _pow2(math.gcd(run, *strides))
    return min(128, elements * _BITS[variant.video_dtype])


def other_load_bits(variant) -> int:
    """Widest legal access to the loop's other operand: the (E, K) weight rows or the grad_tokens rows."""
    g = variant.grid()
    bits = _BITS[variant.dtype]
    row = g.patch_dim if variant.kernel in ("forward", "grad_video") else g.embed_dim
    widest = min(128, _pow2(row) * bits)
    if variant.kernel == "grad_video":
        widest = min(widest, _pow2(g.embed_dim) * bits)
    if variant.kind == "tf32" and variant.arch == 90 and variant.kernel in ("grad_weight", "grad_video"):
        # tf32 wgmma takes K-major operands only: grad_weight's G^T and grad_video's weight tile are MN-major in
        # memory, so they are transposed on the way to shared memory, one 4-byte element per copy
        widest = 32
    return widest


def audit_variant(variant) -> dict:
    """Compile ``variant`` and read its code (module docstring); one flat dict."""
    from lsvit.bench import triton_aot

    start = time.perf_counter()
    compiled = triton_aot.compile_variant(variant)
    report = sass.ptxas_compile(compiled.asm["ptx"], "sm_90a" if variant.arch == 90 else "sm_80")
    instructions = sass.disassemble(report.cubin)
    loop = sass.main_loop(instructions)
    cfg = variant.config
    shared = compiled.metadata.shared
    occupancy = sass.ctas_per_sm(report.registers, shared, cfg.num_warps, variant.arch)
    row = {
        "variant": variant.name,
        "kernel": variant.kernel,
        "arch": variant.arch,
        "shape": variant.shape,
        "video_dtype": variant.video_dtype,
        "dtype": variant.dtype,
        "kind": variant.kind,
        "layout": variant.layout,
        "wide": variant.wide,
        "config": f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}",
        "registers": report.registers,
        "spill_bytes": report.spill_store_bytes + report.spill_load_bytes,
        "stack_bytes": report.stack_bytes,
        "shared_bytes": shared,
        "ctas_per_sm": occupancy["ctas"],
        "ctas_documented": cfg.ctas_per_sm,
        "advisories": list(report.advisories),
        "epilogue_local": sass.outside_loop(instructions, "STL") + sass.outside_loop(instructions, "LDL"),
        "video_load_bits": video_load_bits(variant),
        "other_load_bits": other_load_bits(variant),
        "seconds": 0.0,
    }
    if loop is None:
        row.update(loop_instructions=0, loop_mma=0, per_mma=None, issue_ratio=None, loop_local=0, loop_calls=0)
    else:
        ldg, ldgsts = loop.widths("LDG"), loop.widths("LDGSTS")
        row.update(
            loop_instructions=loop.instructions,
            loop_mma=loop.mma,
            mma_opcode=loop.mma_opcode,
            per_mma=round(loop.per_mma, 1) if loop.mma else None,
            loop_local=loop.local,
            loop_calls=loop.calls,
            loop_ldg_bits=sorted(ldg),
            loop_ldgsts_bits=sorted(ldgsts),
        )
        if variant.kernel != "grad_rows" and loop.mma:
            flops = 2 * cfg.block_m * cfg.block_n * cfg.block_k
            tensor_cycles = flops / FLOPS_PER_CLOCK[variant.arch][variant.kind]
            row["issue_ratio"] = round(cfg.num_warps * loop.instructions / 4 / tensor_cycles, 2)
        else:
            row["issue_ratio"] = None
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def issue_bound(row: dict) -> float:
    """The largest ``ISSUE_BOUNDS`` entry whose class ``row`` belongs to."""
    classes = ["base"]
    if row["wide"]:
        classes.append("wide")
    if row["video_dtype"] == "u8":
        classes.append("uint8")
    if min(row["other_load_bits"], row["video_load_bits"] or 128) < 128:
        classes.append("narrow")
    if row["kind"] == "ieee":
        classes.append("ieee")
    return max(ISSUE_BOUNDS[c] for c in classes)


def check(row: dict) -> list[str]:
    """What is wrong with one audited variant (empty when it passes)."""
    problems = []
    if row["advisories"]:
        problems.append(f"ptxas advisories: {row['advisories']}")
    if row.get("loop_local"):
        problems.append(f"{row['loop_local']} local-memory (STL/LDL) instructions in the main loop")
    if row.get("loop_calls"):
        problems.append(f"{row['loop_calls']} CALL instructions in the main loop")
    if row["ctas_per_sm"] < row["ctas_documented"]:
        problems.append(f"{row['ctas_per_sm']} CTAs per SM, documented at least {row['ctas_documented']}")
    if row["kernel"] == "grad_rows":
        if row.get("loop_ldg_bits") != [128]:
            problems.append(f"row sums load {row.get('loop_ldg_bits')} bits, not only 128-bit vectors")
        return problems
    ldg, ldgsts = row.get("loop_ldg_bits", []), row.get("loop_ldgsts_bits", [])
    want = min(row["other_load_bits"], row["video_load_bits"] or 128)
    narrowest = min(ldg + ldgsts) if ldg or ldgsts else 0
    if narrowest < want:
        problems.append(f"main-loop global loads of {narrowest} bits where the strides allow {want}")
    if ldg and want >= 32:
        problems.append(f"plain LDG ({ldg} bits) in the pipelined main loop; cp.async is legal there")
    bound = issue_bound(row)
    if row["issue_ratio"] is None or row["issue_ratio"] > bound:
        problems.append(f"issue ratio {row['issue_ratio']} over {bound} ({row['per_mma']} instructions per MMA)")
    return problems


def estimates() -> list[dict]:
    """The cost model at each benchmark shape on a nominal H100, bf16 (and uint8 video for the forward)."""
    import torch

    from lsvit.bench import triton_aot
    from lsvit_kernels.backends import triton_tuning as tuning

    rows = []
    for shape in triton_aot.SHAPES:
        for kernel, video_dtype in (
            ("forward", "bf16"),
            ("forward", "u8"),
            ("grad_weight", "bf16"),
            ("grad_video", "bf16"),
        ):
            cfg = triton_aot.picked(kernel, 90, shape, "bf16", video_dtype, "16bit")
            grid = triton_aot.Variant(kernel, 90, shape, video_dtype, "bf16", "16bit", "contiguous", cfg).grid()
            vdt = triton_aot.DTYPES[video_dtype]
            programs = (
                tuning.best_programs(grid, cfg, tuning.H100, torch.bfloat16, vdt) if kernel == "grad_weight" else None
            )
            est = tuning.estimate(kernel, grid, cfg, torch.bfloat16, vdt, tuning.H100, "16bit", programs)
            slots = tuning.H100.sms * cfg.ctas_per_sm
            rows.append(
                {
                    "shape": shape,
                    "kernel": kernel,
                    "video_dtype": video_dtype,
                    "config": f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}",
                    "programs": est.programs,
                    "slots": slots,
                    "waves": est.waves,
                    "estimate_us": round(est.us, 1),
                    "mma_us": round(est.mma_us, 1),
                    "fixed_us": round(est.fixed_us, 1),
                    "l2_us": round(est.l2_us, 1),
                    "dram_us": round(est.dram_us, 1),
                    "floor_us": round(est.floor_us, 1),
                }
            )
    return rows


def render(rows: list[dict], model: list[dict]) -> str:
    head = (
        "| variant | regs | smem KB | CTAs/SM | loop instr | MMA | instr/MMA | issue ratio | loads bits (legal) "
        "| local in loop | calls in loop | epilogue spill B | advisories | verdict |"
    )
    lines = ["Triton kernels, compiled here for sm_90a and sm_80 (ptxas -v, cuobjdump):", "", head, "|" + "---|" * 14]
    for r in rows:
        loads = sorted(set(r.get("loop_ldg_bits", []) + r.get("loop_ldgsts_bits", [])))
        legal = min(r["other_load_bits"], r["video_load_bits"] or 128)
        problems = check(r)
        lines.append(
            f"| {r['variant']} | {r['registers']} | {r['shared_bytes'] // 1024} | {r['ctas_per_sm']} "
            f"| {r['loop_instructions']} | {r['loop_mma']} | {r['per_mma']} | {r['issue_ratio']} "
            f"| {','.join(map(str, loads)) or '-'} ({legal}) | {r.get('loop_local', 0)} | {r.get('loop_calls', 0)} "
            f"| {r['spill_bytes']} | {len(r['advisories'])} | {'ok' if not problems else '; '.join(problems)} |"
        )
    lines += [
        "",
        "Cost model on a nominal H100 (ESTIMATES, not measurements; `triton_tuning.estimate`), bf16 weight:",
        "",
        "| shape | kernel | video | config | programs / slots | waves | estimate us | MMA us | fixed us | L2 us "
        "| DRAM us | floor us | estimate / floor |",
        "|" + "---|" * 13,
    ]
    for m in model:
        lines.append(
            f"| {m['shape']} | {m['kernel']} | {m['video_dtype']} | {m['config']} | {m['programs']} / {m['slots']} "
            f"| {m['waves']} | {m['estimate_us']} | {m['mma_us']} | {m['fixed_us']} | {m['l2_us']} | {m['dram_us']} "
            f"| {m['floor_us']} | {m['estimate_us'] / m['floor_us']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsvit.bench.gpu_audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per variant / kernel instead of tables")
    parser.add_argument("--part", choices=("all", "triton", "cuda"), default="all", help="audit only these kernels")
    parser.add_argument("--shard", default="0/1", help="I/N: audit every N-th Triton variant starting at I")
    parser.add_argument("--filter", default="", help="only variants and kernels whose name contains this text")
    parser.add_argument("--headline-only", action="store_true", help="only the first config of each 16-bit table")
    args = parser.parse_args(argv)
    failed, audited = False, False
    if args.part in ("all", "triton"):
        rows = triton_part(args)
        if rows is not None:
            audited, failed = True, any(check(r) for r in rows)
    if args.part in ("all", "cuda"):
        rows = cuda_part(args)
        if rows is not None:
            audited, failed = True, failed or any(cuda_audit.check(r) for r in rows)
    return 2 if not audited else int(failed)


def triton_part(args) -> Optional[list[dict]]:
    """Audit and print the Triton variants; None (and one line why) when they cannot be compiled here."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("Triton kernels: not audited: unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
        return None
    try:
        from lsvit.bench import triton_aot
    except ImportError as exc:
        print(f"Triton kernels: not audited: needs triton ({exc}); install it with `pip install triton`")
        return None
    index, count = (int(x) for x in args.shard.split("/"))
    chosen = [v for v in triton_aot.variants(full_tables=not args.headline_only) if args.filter in v.name]
    rows = []
    for variant in chosen[index::count]:
        row = audit_variant(variant)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        sys.stdout.write(render(rows, estimates()) + "\n")
    return rows


def cuda_part(args) -> Optional[list[dict]]:
    """Audit and print the compiled library's CUDA kernels; None (and one line why) when it has none."""
    path, why = cuda_audit.library()
    if path is None:
        print(why)
        return None
    try:
        rows = [r for r in cuda_audit.audit(path) if args.filter in r["kernel"]]
    except FileNotFoundError as exc:  # no cuobjdump
        print(f"CUDA kernels: not audited: {exc}")
        return None
    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
    else:
        sys.stdout.write(cuda_audit.render(rows, path))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
