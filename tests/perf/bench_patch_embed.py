"""pytest-benchmark suite for the core cases, run on demand (not part of ``pytest``):
``pytest tests/perf/bench_patch_embed.py``.

Each test checks the contestant against the float64 reference first (a wrong result fails the test instead of
being timed), then lets pytest-benchmark time it, cycling the input sets. Compare runs with
``pytest tests/perf/bench_patch_embed.py --benchmark-autosave`` and ``pytest-benchmark compare``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import lsvit_kernels as lk
from lsvit.bench.cases import Case
from lsvit.bench.contestants import ContestantSkipped, baseline_contestants, make_inputs, make_ours
from lsvit.bench.harness import check

CPU_CASES = [
    Case(1, 8, 112, 1),
    Case(1, 8, 112, 2),
    Case(2, 16, 224, 2),
    Case(1, 8, 112, 2, mode="fwdbwd"),
]
GPU_CASES = [Case(32, 16, 224, t, dtype="bfloat16") for t in (1, 2, 4)] + [
    Case(32, 16, 224, 2, dtype="bfloat16", mode="fwdbwd"),
    Case(32, 16, 224, 2, dtype="bfloat16", uint8_input=True),
]
# Contestants by name; ours:<backend> for every registered backend (skipped at run time where unavailable).
NAMES = [c.name for c in baseline_contestants()] + [f"ours:{b}" for b in lk.backend_names()]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _contestant(name: str):
    if name.startswith("ours:"):
        return make_ours(name.split(":", 1)[1])
    return next(c for c in baseline_contestants() if c.name == name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("index", range(max(len(CPU_CASES), len(GPU_CASES))))
def test_patch_embed(benchmark, index, name):
    device = _device()
    case_list = GPU_CASES if device.type == "cuda" else CPU_CASES
    if index >= len(case_list):
        pytest.skip(f"only {len(case_list)} core cases on {device.type}")
    case = case_list[index]
    inputs = make_inputs(case, device)
    try:
        prepared = _contestant(name).prepare(inputs)
    except ContestantSkipped as exc:
        pytest.skip(str(exc))
    expected = prepared.expected(0) if prepared.expected else inputs.expected(0)
    ok, errors, reason = check(prepared.result(0), expected, case.dtype)
    assert ok, f"{name} on {case.label}: {reason}"
    benchmark.group = case.label
    benchmark.extra_info.update(case=case.to_dict(), errors=errors, compile_s=prepared.compile_s)
    counter = itertools.count()

    def call():
        prepared.step(next(counter) % inputs.sets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.pedantic(call, rounds=10 if device.type == "cpu" else 50, warmup_rounds=2, iterations=1)
