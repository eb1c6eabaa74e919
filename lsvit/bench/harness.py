"""One harness for every case and contestant: check against float64, then warm up, time, measure memory.

Timing: ``warmup`` untimed calls, then ``repeats`` timed calls cycling through the case's input sets (so a video
is not re-read from a warm cache). GPU: one pair of CUDA events around each call, synchronized once at the end.
CPU: ``time.perf_counter`` around each call. Statistics: median, quartiles (IQR), min, max; every raw sample is
kept. A per-contestant time budget stops the repeats early on slow cases (at least ``min_repeats``).

Peak memory: the bytes allocated during one call above what was allocated before it (the output included, the
inputs and parameters excluded). GPU: ``torch.cuda.max_memory_allocated`` delta. CPU: the running sum of the
allocation and free events of PyTorch's CPU allocator recorded by ``torch.profiler`` (``profile_memory=True``),
in time order; its maximum is the peak.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

from .cases import Case
from .contestants import CaseInputs, Contestant, ContestantSkipped, Outputs

# Largest error allowed, as max |out - ref| / RMS(ref), per output tensor. fp32 allows TF32 (cuDNN's default for
# convolutions on GPU); 16-bit types allow rounding of the output and the fp32-accumulated sums.
TOLERANCE = {"float32": 1e-2, "float16": 2e-2, "bfloat16": 6e-2}


@dataclass
class TimingConfig:
    warmup: int = 2
    repeats: int = 10
    min_repeats: int = 3
    budget_s: float = 3.0  # per contestant and case: stop repeating after this much timed work
    measure_memory: bool = True


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / RMS(ref), in float64; inf on shape mismatch or non-finite output."""
    if out is None or out.numel() != ref.numel():
        return math.inf
    diff = (out.detach().double().reshape(ref.shape) - ref).abs().max().item()
    scale = ref.pow(2).mean().sqrt().item() or 1.0
    return diff / scale if math.isfinite(diff) else math.inf


def check(outputs: Outputs, expected: Outputs, dtype: str) -> tuple[bool, dict[str, float], str]:
    """Compare each expected tensor; returns (ok, errors by name, reason when not ok)."""
    errors = {}
    for name, ref in expected.items():
        if name not in outputs or outputs[name] is None:
            return False, errors, f"{name} missing from the contestant's outputs"
        errors[name] = relative_error(outputs[name], ref)
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE[dtype]}
    if bad:
        worst = max(bad, key=bad.get)
        return False, errors, f"{worst} error {bad[worst]:.3g} > tolerance {TOLERANCE[dtype]:g} (max|d|/rms vs float64)"
    return True, errors, ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(step: Callable[[int], object], sets: int, device: torch.device, cfg: TimingConfig) -> list[float]:
    """Milliseconds per call, one sample per timed call."""
    for i in range(cfg.warmup):
        step(i % sets)
    _sync(device)
    if device.type == "cuda":
        events = []
        spent = time.perf_counter()
        for r in range(cfg.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(r % sets)
            end.record()
            events.append((start, end))
            if r + 1 >= cfg.min_repeats and time.perf_counter() - spent > cfg.budget_s:
                torch.cuda.synchronize(device)  # the clock above ran ahead of the queued work
                if time.perf_counter() - spent > cfg.budget_s:
                    break
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in events]
    samples = []
    for r in range(cfg.repeats):
        start = time.perf_counter()
        step(r % sets)
        samples.append((time.perf_counter() - start) * 1e3)
        if r + 1 >= cfg.min_repeats and sum(samples) / 1e3 > cfg.budget_s:
            break
    return samples


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ log lines (kineto writes to fd 2) so the progress bar stays readable."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def peak_memory_bytes(step: Callable[[int], object], device: torch.device) -> Optional[int]:
    """Bytes allocated during one call above the level before it (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = step(0)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del result
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = step(0)
            del result
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for e in events:
        if e.device_type() == torch.autograd.DeviceType.CPU:
            level += e.nbytes()
            peak = max(peak, level)
    return int(peak)


def summarize(samples: list[float]) -> dict:
    if not samples:
        return {}
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median_ms": statistics.median(ordered),
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "n": len(ordered),
    }


def run_contestant(contestant: Contestant, inputs: CaseInputs, cfg: TimingConfig) -> dict:
    """Check, then time one contestant on one case. Never raises: failures and skips are recorded."""
    case: Case = inputs.case
    record: dict = {"contestant": contestant.name, "kind": contestant.kind, "status": "ok", "samples_ms": []}
    try:
        prepared = contestant.prepare(inputs)
    except ContestantSkipped as exc:
        return {**record, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001
        return {
            **record,
            "status": "failed",
            "reason": f"setup raised {type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=4),
        }
    record["compile_s"] = prepared.compile_s
    if prepared.notes:
        record["notes"] = prepared.notes
    try:
        outputs = prepared.result(0)
        _sync(inputs.device)
        expected = prepared.expected(0) if prepared.expected else inputs.expected(0)
        ok, errors, reason = check(outputs, expected, case.dtype)
        del outputs
    except Exception as exc:  # noqa: BLE001
        return {
            **record,
            "status": "failed",
            "reason": f"raised {type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=4),
        }
    record["errors"] = errors
    record["tolerance"] = TOLERANCE[case.dtype]
    if not ok:
        return {**record, "status": "failed", "reason": f"wrong result: {reason}"}
    try:
        samples = time_calls(prepared.step, inputs.sets, inputs.device, cfg)
        record["samples_ms"] = samples
        record.update(summarize(samples))
        if cfg.measure_memory:
            record["peak_bytes"] = peak_memory_bytes(prepared.step, inputs.device)
    except Exception as exc:  # noqa: BLE001
        return {
            **record,
            "status": "failed",
            "reason": f"raised while timing {type(exc).__name__}: {exc}",
            "samples_ms": [],
            "traceback": traceback.format_exc(limit=4),
        }
    return record


def add_rates(record: dict, case: Case, ceilings: dict) -> None:
    """Achieved GFLOP/s and GB/s (useful FLOPs and minimal bytes of the case) and their fraction of the ceilings."""
    if record.get("status") != "ok":
        return
    seconds = record["median_ms"] / 1e3
    record["gflops"] = case.flops() / seconds / 1e9
    record["gbytes_s"] = case.min_bytes() / seconds / 1e9
    gemm = ceilings.get("gemm_gflops", {}).get(case.dtype)
    copy = ceilings.get("copy_gbytes_s")
    if gemm:
        record["frac_gemm_peak"] = record["gflops"] / gemm
    if copy:
        record["frac_copy_peak"] = record["gbytes_s"] / copy


def roofline_ms(case: Case, ceilings: dict) -> Optional[float]:
    """The case's floor from this run's ceilings: max(FLOPs / GEMM rate, minimal bytes / copy rate)."""
    gemm = ceilings.get("gemm_gflops", {}).get(case.dtype)
    copy = ceilings.get("copy_gbytes_s")
    if not gemm or not copy:
        return None
    return max(case.flops() / (gemm * 1e9), case.min_bytes() / (copy * 1e9)) * 1e3


def measure_ceilings(device: torch.device, dtypes: list[str], quick: bool = False) -> dict:
    """The machine's ceilings in this run: a large square GEMM per dtype (GFLOP/s) and a device copy (GB/s).

    Each is the fastest of a few calls (a ceiling is the best the machine does, not its typical call).
    """
    from .cases import DTYPES

    on_gpu = device.type == "cuda"
    n = (8192 if on_gpu else 2048) if not quick else 256
    copy_numel = ((1 << 28) if on_gpu else (1 << 25)) if not quick else (1 << 20)  # 1 GiB / 128 MiB fp32
    cfg = TimingConfig(warmup=1 if not on_gpu else 3, repeats=5 if not on_gpu else 20, budget_s=2.0)
    out: dict = {"gemm_n": n, "gemm_gflops": {}, "gemm_ms": {}}
    for name in dtypes:
        a = torch.randn(n, n, device=device).to(DTYPES[name])
        b = torch.randn(n, n, device=device).to(DTYPES[name])
        samples = time_calls(lambda i, a=a, b=b: torch.mm(a, b), 1, device, cfg)
        ms = min(samples)  # a ceiling: the best the machine did
        out["gemm_ms"][name] = ms
        out["gemm_gflops"][name] = 2 * n**3 / (ms / 1e3) / 1e9
        del a, b
    src = torch.randn(copy_numel, device=device)
    dst = torch.empty_like(src)
    samples = time_calls(lambda i: dst.copy_(src), 1, device, cfg)
    ms = min(samples)
    out["copy_bytes"] = 2 * src.numel() * src.element_size()  # read + write
    out["copy_ms"] = ms
    out["copy_gbytes_s"] = out["copy_bytes"] / (ms / 1e3) / 1e9
    out["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32 if on_gpu else None
    out["tf32_cudnn"] = torch.backends.cudnn.allow_tf32 if on_gpu else None
    return out


def best_ceilings(first: dict, second: dict) -> dict:
    """The higher GEMM rate per dtype and the higher copy rate of two measurements; both kept under ``runs``."""
    best = dict(first)
    best["gemm_gflops"] = {k: max(v, second["gemm_gflops"].get(k, 0.0)) for k, v in first["gemm_gflops"].items()}
    best["gemm_ms"] = {k: min(v, second["gemm_ms"].get(k, v)) for k, v in first["gemm_ms"].items()}
    if second["copy_gbytes_s"] > first["copy_gbytes_s"]:
        best.update(copy_ms=second["copy_ms"], copy_gbytes_s=second["copy_gbytes_s"])
    best["runs"] = [first, second]
    return best


def add_speedups(records: list[dict]) -> dict:
    """Baseline median / ours median for every (ours, baseline) pair that both ran: > 1 means ours is faster."""
    medians = {r["contestant"]: r["median_ms"] for r in records if r.get("status") == "ok"}
    kinds = {r["contestant"]: r["kind"] for r in records}
    speedups: dict = {}
    for ours, ours_ms in medians.items():
        if kinds[ours] != "ours":
            continue
        speedups[ours] = {base: base_ms / ours_ms for base, base_ms in medians.items() if kinds[base] != "ours"}
    return speedups
