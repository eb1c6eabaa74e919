"""The static audit of the Triton kernels' compiled code (lsvit/bench/gpu_audit.py), no GPU needed.

Every variant the tuning can pick at the benchmark shapes is compiled for sm_90a and sm_80 in two subprocesses
(``python -m lsvit.bench.gpu_audit --json --part triton --shard i/2``: the test process interprets Triton, and
interpreted kernels cannot be compiled) and read back with ptxas / cuobjdump. Triton's cache and the audit's
ptxas/SASS cache (``~/.cache/lsvit/sass``) make reruns take seconds; a cold run compiles about 80 variants (~1.5 min
on 2 cores). The SASS-parsing helpers are tested on fixed text, so their rules are checked without compiling
anything. The same command's rows for the compiled library's CUDA kernels are tested in test_native_build.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsvit.bench import gpu_audit, sass

pytest.importorskip("triton")
from lsvit_kernels.backends import triton_tuning  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2


@pytest.fixture(scope="module")
def audited() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lsvit.bench.gpu_audit", "--json", "--part", "triton", "--shard", f"{i}/{SHARDS}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(SHARDS)
    ]
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode in (0, 1), f"audit crashed:\n{err[-4000:]}"  # 1: some variant failed (asserted below)
        rows += [json.loads(line) for line in out.splitlines() if line.strip()]
    return rows


def _one(rows, prefix: str) -> dict:
    found = [r for r in rows if r["variant"].startswith(prefix)]
    assert len(found) == 1, (prefix, [r["variant"] for r in found])
    return found[0]


def test_every_variant_passes_the_audit(audited):
    failing = {r["variant"]: gpu_audit.check(r) for r in audited if gpu_audit.check(r)}
    assert not failing, "audit failures:\n" + "\n".join(f"{k}: {v}" for k, v in failing.items())


def test_coverage_every_table_config_and_every_axis(audited):
    """Every config of the tables at the headline shape, and each axis of the benchmark space."""
    names = [r["variant"] for r in audited]
    for arch in (90, 80):
        for kernel in ("forward", "grad_weight", "grad_video"):
            for kind, dtypes in (("16bit", "bf16->bf16"), ("tf32", "fp32->fp32"), ("ieee", "fp32->fp32")):
                for cfg in triton_tuning.candidate_configs(kernel, arch, kind):
                    tile = f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}"
                    assert f"{kernel} sm_{arch} 3d-p16 {dtypes}/{kind} {tile}" in names
    seen = {(r["kernel"], r["arch"], r["shape"], r["video_dtype"], r["kind"], r["layout"], r["wide"]) for r in audited}
    for arch in (90, 80):
        for kernel in ("forward", "grad_weight"):
            for key in [
                (kernel, arch, "3d-p16", "u8", "16bit", "contiguous", False),
                (kernel, arch, "3d-p16", "fp16", "16bit", "contiguous", False),
                (kernel, arch, "3d-p16", "fp32", "tf32", "contiguous", False),
                (kernel, arch, "3d-p16", "fp32", "ieee", "contiguous", False),
                (kernel, arch, "3d-p16", "bf16", "16bit", "channels_last", False),
                (kernel, arch, "3d-p16", "u8", "16bit", "channels_last", False),
                (kernel, arch, "2d-p16", "bf16", "16bit", "contiguous", False),
                (kernel, arch, "2d-p14", "bf16", "16bit", "contiguous", False),
                (kernel, arch, "3d-p16", "bf16", "16bit", "contiguous", True),
            ]:
                assert key in seen, key
        assert ("grad_rows", arch, "3d-p16", "bf16", "16bit", "contiguous", False) in seen


def test_uint8_forward_has_no_advisory(audited):
    """C7515 (wgmma serialized by a register A operand) is gone: the converted video tile is the B operand."""
    for row in audited:
        if row["kernel"] == "forward" and row["video_dtype"] == "u8":
            assert row["advisories"] == [], row["variant"]
    row = _one(audited, "forward sm_90 3d-p16 u8->bf16/16bit 128x128x64 w8 s3")
    assert row["mma_opcode"].startswith("HGMMA") and row["issue_ratio"] <= gpu_audit.ISSUE_BOUNDS["uint8"]


def test_forward_and_grad_video_run_two_ctas_per_sm_on_sm90(audited):
    for kernel in ("forward", "grad_video"):
        row = _one(audited, f"{kernel} sm_90 3d-p16 bf16->bf16/16bit 128x128x64 w8 s3")
        assert row["ctas_per_sm"] == 2 and row["registers"] <= 128 and row["shared_bytes"] <= 112 * 1024
        assert row["loop_local"] == 0


def test_grad_weight_loop_is_short(audited):
    """Compile-time geometry: the loop recomputes token coordinates with multiply-high, not runtime division."""
    row = _one(audited, "grad_weight sm_90 3d-p16 bf16->bf16/16bit 64x128x128 w8 s3")
    assert row["loop_mma"] == 4 and row["loop_instructions"] <= 230  # 419 with runtime divisions


def test_uint8_video_copies_are_16_bytes_where_the_strides_allow(audited):
    """sm_80's grad_weight reads a uint8 video as int32 words (16-byte cp.async instead of 8, and a shorter loop:
    332 instructions per 32 HMMA before); exact float32 takes tiles with 16 bytes of video per thread."""
    rows = [r for r in audited if r["video_dtype"] == "u8" and r["video_load_bits"] == 128]
    assert len(rows) >= 20
    for row in rows:  # 128-bit copies only, but for the other operand where it is narrower (sm_90 tf32 grad)
        widths = row["loop_ldgsts_bits"]
        assert row["loop_ldg_bits"] == [] and max(widths) == 128, row["variant"]
        assert min(widths) == row["other_load_bits"], row["variant"]
    row = _one(audited, "grad_weight sm_80 3d-p16 u8->bf16/16bit 32x128x128 w8 s3")
    assert row["loop_mma"] == 32 and row["loop_instructions"] <= 260


def test_channels_last_and_p14_keep_vector_copies(audited):
    for arch in (90, 80):
        for kernel in ("forward", "grad_weight"):
            cl = [r for r in audited if r["layout"] == "channels_last" and r["kernel"] == kernel and r["arch"] == arch]
            assert cl and all(r["loop_ldg_bits"] == [] and r["loop_ldgsts_bits"][-1] == 128 for r in cl)
            p14 = [
                r for r in audited if r["shape"] == "2d-p14" and r["video_dtype"] == "bf16" and r["kernel"] == kernel
            ]
            assert p14 and all(r["loop_ldg_bits"] == [] and min(r["loop_ldgsts_bits"]) >= 32 for r in p14)


# ---------------------------------------------------------------------------------------------------------------
# The parsing helpers and the rules, on fixed inputs (no compile)

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64] ;
        /*0020*/              @P0 LDG.E.U16 R5, desc[UR4][R6.64] ;
        /*0030*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24, gsb0 ;
        /*0040*/                   STL [R1], R5 ;
        /*0050*/              @P1 CALL.REL.NOINC 0x80 ;
        /*0060*/                   CALL.REL 0xa0 ;
        /*0070*/              @!P2 BRA 0x10 ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA 0x90;
        /*00a0*/                   RET.REL.NODEC R20 0x0 ;
"""


def test_sass_loop_and_its_instruction_mix():
    ins = sass.parse_sass(SASS)
    assert [i.base for i in ins][:4] == ["MOV", "LDGSTS", "LDG", "HGMMA"]
    assert sass.loops(ins) == [(1, 7)]  # the trailing `BRA self` is not a loop
    loop = sass.main_loop(ins)
    assert loop.instructions == 7 and loop.mma == 1 and loop.mma_opcode.startswith("HGMMA.64x128x16")
    assert loop.local == 1  # the STL
    assert loop.calls == 1  # CALL.REL to 0xa0 (a subroutine); the NOINC call to just past the loop is its exit
    assert loop.widths("LDGSTS") == {128: 1} and loop.widths("LDG") == {16: 1}
    assert sass.outside_loop(ins, "MOV") == 1


def test_ptxas_log_parsing():
    log = (
        "ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized\n"
        "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
        "    8 bytes stack frame, 48 bytes spill stores, 40 bytes spill loads\n"
        "ptxas info    : Used 128 registers, used 1 barriers\n"
    )
    report = sass.parse_ptxas_log(log)
    assert report.registers == 128 and report.stack_bytes == 8
    assert report.spill_store_bytes == 48 and report.spill_load_bytes == 40
    assert len(report.advisories) == 1 and "C7515" in report.advisories[0]


def test_ctas_per_sm():
    # 8 warps x 128 registers = 32 K registers: two CTAs; 96 KB + 1 KB reserved each: two fit 228 KB
    assert sass.ctas_per_sm(128, 96 * 1024, 8, 90)["ctas"] == 2
    assert sass.ctas_per_sm(129, 96 * 1024, 8, 90)["ctas"] == 1  # 136 per thread after rounding: one CTA
    assert sass.ctas_per_sm(100, 132 * 1024, 8, 90)["ctas"] == 1  # shared memory limits
    assert sass.ctas_per_sm(64, 4096, 4, 80)["ctas"] == 8  # registers: 64 x 128 threads = 8 K per CTA


def test_check_flags_each_rule():
    good = {
        "variant": "forward x",
        "kernel": "forward",
        "arch": 90,
        "shape": "3d-p16",
        "video_dtype": "bf16",
        "kind": "16bit",
        "wide": False,
        "advisories": [],
        "loop_local": 0,
        "loop_calls": 0,
        "ctas_per_sm": 2,
        "ctas_documented": 2,
        "loop_ldg_bits": [],
        "loop_ldgsts_bits": [128],
        "other_load_bits": 128,
        "video_load_bits": 128,
        "issue_ratio": 0.5,
        "per_mma": 30.0,
    }
    assert gpu_audit.check(good) == []
    for change in (
        {"advisories": ["(C7515) Potential Performance Loss"]},
        {"loop_local": 2},
        {"loop_calls": 1},
        {"ctas_per_sm": 1},
        {"loop_ldg_bits": [16]},
        {"loop_ldgsts_bits": [32]},
        {"issue_ratio": 1.2},
    ):
        assert gpu_audit.check({**good, **change}), change


def test_video_load_bits_follow_the_strides():
    from lsvit.bench import triton_aot

    def bits(shape, video_dtype, layout="contiguous"):
        cfg = triton_tuning.candidate_configs("forward", 90, "16bit")[0]
        return gpu_audit.video_load_bits(
            triton_aot.Variant("forward", 90, shape, video_dtype, "bf16", "16bit", layout, cfg)
        )

    assert bits("3d-p16", "bf16") == 128 and bits("3d-p16", "u8") == 128
    assert bits("3d-p16", "bf16", "channels_last") == 128  # runs of 48 pixels, 16-aligned
    assert bits("2d-p14", "bf16") == 32 and bits("2d-p14", "u8") == 16  # rows start at 14 gx: 2-aligned


def test_sass_of_a_binary_with_several_kernels():
    """A library's fatbinary (the compiled extension) holds several kernels per architecture."""
    text = (
        "\tcode for sm_80\n\t\tFunction : kernel_a\n" + SASS + "\t\tFunction : kernel_b\n"
        "        /*0000*/                   EXIT ;\n\tcode for sm_90\n\t\tFunction : kernel_a\n" + SASS
    )
    found = sass.parse_sass_functions(text)
    assert set(found) == {("sm_80", "kernel_a"), ("sm_80", "kernel_b"), ("sm_90", "kernel_a")}
    assert [i.base for i in found[("sm_80", "kernel_b")]] == ["EXIT"]
    assert sass.main_loop(found[("sm_90", "kernel_a")]).mma == 1


def test_command_without_cuda_kernels_says_so_and_prints_the_triton_part():
    """One Triton variant (compiled by the audit above, so cached) with the library's CUDA part hidden."""
    code = (
        "from lsvit_kernels.backends import native; native._has_cuda_kernels = lambda: False; "
        "from lsvit.bench import gpu_audit; raise SystemExit(gpu_audit.main(['--filter', 'grad_rows sm_90']))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert sum("CUDA kernels" in line for line in lines) == 1, proc.stdout
    assert "CUDA kernels: not audited" in lines[-1] and "built without its CUDA part" in lines[-1]
    assert any(line.startswith("| grad_rows sm_90 ") and line.endswith("| ok |") for line in lines), proc.stdout
    assert any("estimate / floor" in line for line in lines)
