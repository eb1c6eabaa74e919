"""Every Triton kernel config the heuristic can pick compiles for sm_80 and sm_90 without a GPU, uses tensor cores,
does not spill, and fits the device's shared memory.

The compiles run in two subprocesses (``python -m lsvit_kernels.backends.triton_aot --shard i/2``) because this
test session interprets Triton (conftest sets TRITON_INTERPRET=1 without a GPU) and interpreted kernels cannot be
compiled. Triton's on-disk cache makes repeated runs fast; a cold run compiles about 70 variants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
from lsvit_kernels.backends import triton_tuning  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lsvit_kernels.backends.triton_aot", "--shard", f"{i}/{SHARDS}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(SHARDS)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"AOT compile failed:\n{err[-4000:]}"
        results += [json.loads(line) for line in out.splitlines() if line.strip()]
    return results


def _key(kernel, arch, kind, cfg: dict):
    return (kernel, arch, kind, tuple(sorted(cfg.items())))


def test_every_pickable_config_was_compiled(compiled):
    """Coverage: each (kernel, arch, operand kind, config) of the tuning tables is among the compiled variants."""
    done = {_key(r["kernel"], r["arch"], r["kind"], r["config"]) for r in compiled}
    kinds = ("16bit", "tf32", "ieee")
    for kernel in triton_tuning.KERNELS:
        for arch in (80, 90):
            for kind in kinds if kernel != "grad_rows" else ("16bit", "tf32"):
                for cfg in triton_tuning.candidate_configs(kernel, arch, kind):
                    assert _key(kernel, arch, kind, cfg.__dict__) in done, (kernel, arch, kind, cfg)


def _where(r: dict) -> str:
    return f"{r['kernel']} sm_{r['arch']} {r['video_dtype']}->{r['dtype']} wide={r['wide']} {r['config']}"


def test_no_spills_and_shared_memory_fits(compiled):
    spills = [f"{_where(r)}: LOCAL={r['LOCAL']} STACK={r['STACK']}" for r in compiled if r["LOCAL"] or r["STACK"]]
    assert not spills, "register spills:\n" + "\n".join(spills)
    too_big = [f"{_where(r)}: {r['shared']} B" for r in compiled if r["shared"] > triton_tuning.SMEM_LIMIT[r["arch"]]]
    assert not too_big, "shared memory over the device limit:\n" + "\n".join(too_big)
    assert all(r["REG"] <= 255 for r in compiled)


def test_tensor_core_instructions(compiled):
    """16-bit and tf32 dots use mma (sm_80) / wgmma (sm_90); exact float32 uses FMA by design (no tensor cores)."""
    for r in compiled:
        where = _where(r)
        if r["kernel"] == "grad_rows" or r["kind"] == "ieee":
            assert not r["wgmma"] and not r["mma"], where
        elif r["arch"] == 90:
            assert r["wgmma"], f"no wgmma in {where}"
        else:
            assert r["mma"], f"no mma.sync in {where}"


def test_compile_time_is_reported(compiled):
    """Keeps the compile cost visible (seconds per variant; cached runs are fast)."""
    total = sum(r["seconds"] for r in compiled)
    print(f"\n{len(compiled)} variants compiled in {total:.1f} s of compile time")
    assert len(compiled) >= 60
