"""The harness's pieces: error metric, tolerance check, statistics, case selection."""

from __future__ import annotations

import math

import pytest
import torch

from lsvit.bench import cases, harness


def test_relative_error_and_check():
    ref = torch.randn(64, 32, dtype=torch.float64)
    assert harness.relative_error(ref.float(), ref) < 1e-6
    assert harness.relative_error(ref.float() + 1, ref) > 0.5
    assert harness.relative_error(torch.full((64, 32), float("nan")), ref) == math.inf
    assert harness.relative_error(torch.zeros(3), ref) == math.inf
    ok, errors, _ = harness.check({"tokens": ref.bfloat16()}, {"tokens": ref}, "bfloat16")
    assert ok and errors["tokens"] < harness.TOLERANCE["bfloat16"]
    ok, _, reason = harness.check({"tokens": (ref * 1.05).float()}, {"tokens": ref}, "bfloat16")  # 5% off
    assert not ok and "tokens error" in reason
    ok, _, reason = harness.check({}, {"tokens": ref}, "float32")
    assert not ok and "missing" in reason


def test_summarize():
    stats = harness.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats["median_ms"] == 3.0 and stats["min_ms"] == 1.0 and stats["max_ms"] == 5.0
    assert stats["q1_ms"] == 2.0 and stats["q3_ms"] == 4.0 and stats["n"] == 5


def test_time_calls_respects_budget_and_cycles_inputs():
    seen = []
    cfg = harness.TimingConfig(warmup=2, repeats=7, min_repeats=3, budget_s=100)
    samples = harness.time_calls(seen.append, 3, torch.device("cpu"), cfg)
    assert len(samples) == 7 and seen == [0, 1, 0, 1, 2, 0, 1, 2, 0]
    cfg = harness.TimingConfig(warmup=0, repeats=50, min_repeats=3, budget_s=0.0)
    assert len(harness.time_calls(lambda i: None, 3, torch.device("cpu"), cfg)) == 3


def test_case_selection():
    default = cases.select_cases("cpu")
    assert {c.tubelet for c in default} == {1, 2, 4} and {c.mode for c in default} == {"fwd", "fwdbwd"}
    grid = cases.select_cases("cpu", tubelets=[1, 2], frames=[8, 12], dtypes=["bfloat16"])
    assert all(c.dtype == "bfloat16" and c.size == 224 for c in grid)
    assert {(c.frames, c.tubelet) for c in grid} == {(8, 1), (8, 2), (12, 1), (12, 2)}
    assert len(cases.select_cases("cuda", full=True)) > len(cases.select_cases("cuda"))
    headline = [c for c in cases.select_cases("cpu", headline=True) if "headline" in c.tags]
    assert {(c.batch, c.frames, c.size, c.tubelet, c.dtype) for c in headline} == {(32, 16, 224, 2, "bfloat16")}
    with pytest.raises(ValueError, match="not benchmarked"):
        cases.select_cases("cpu", dtypes=["float8"])
    with pytest.raises(ValueError, match="no benchmark case"):
        cases.select_cases("cpu", frames=[3], tubelets=[2])


def test_case_flops_and_bytes():
    case = cases.Case(2, 16, 224, 2)
    assert case.flops() == 2 * 2 * 1568 * 1536 * 768
    assert cases.Case(2, 16, 224, 2, mode="fwdbwd").flops() == 2 * case.flops()
    assert cases.Case(2, 16, 224, 2, uint8_input=True).min_bytes() < case.min_bytes()
