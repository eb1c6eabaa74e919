"""First run on a GPU, one command: ``python -m lsvit.bench.gpu_validate`` (``make gpu-validate``).

1. runs the GPU test subset (``pytest -m gpu tests``) and records every outcome (JUnit XML + log);
2. times every Triton config of the tuning tables (and a few outside them) at the headline shape, bf16 and
   uint8 video, next to the cost model's estimate and the roofline floor (``triton_sweep``): measured against
   modeled time, the check of every estimate in docs/triton.md;
3. runs the GPU benchmark suite (the default GPU grid + the headline cases);
4. writes one report, ``gpu_report/report.json`` + ``gpu_report/report.md``, with the headline first: bf16, B=32,
   T=16, 224 px, E=768, tubelet 2, forward and forward + backward, ours vs eager conv, F.linear,
   ``torch.compile``, the GEMM floor, the roofline of this run's measured ceilings and, when the Triton backend
   exposes one (``triton_tuning.roofline_floor_us``), its own bytes-and-FLOPs roofline.

Extra arguments after ``--`` go to the suite, e.g. ``python -m lsvit.bench.gpu_validate -- --full``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

from . import suite
from .cases import Case
from .report import best_ours, render_markdown

ROOT = Path(__file__).resolve().parents[2]


def run_gpu_tests(out_dir: Path, extra: Sequence[str] = ()) -> dict:
    """``pytest -m gpu tests`` in a subprocess; counts and failures from its JUnit XML."""
    xml_path = out_dir / "gpu_tests.xml"
    log_path = out_dir / "gpu_tests.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-rfE", f"--junitxml={xml_path}", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log_path.write_text(proc.stdout + proc.stderr)
    result: dict = {
        "command": " ".join(cmd),
        "returncode": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "log": str(log_path),
        "tail": (proc.stdout + proc.stderr)[-3000:],
    }
    if not xml_path.exists():
        result["error"] = "pytest wrote no JUnit XML (see the log)"
        return result
    suites = ET.parse(xml_path).getroot()
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for ts in suites.iter("testsuite"):
        for key in counts:
            counts[key] += int(ts.get(key, 0))
        for tc in ts.iter("testcase"):
            for tag in ("failure", "error"):
                node = tc.find(tag)
                if node is not None:
                    failed.append(
                        {
                            "test": f"{tc.get('classname')}::{tc.get('name')}",
                            "kind": tag,
                            "message": (node.get("message") or "")[:500],
                        }
                    )
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    result.update(counts=counts, failed=failed)
    return result


def run_triton_sweep() -> dict:
    """Every Triton config at the headline shape (B=32, T=16, 224, tubelet 2, E=768), bf16 and uint8 video:
    measured time, modeled time and floor per config (``lsvit.bench.triton_sweep``)."""
    try:
        from lsvit.bench import triton_sweep
        from lsvit_kernels import geometry
    except ImportError as exc:
        return {"error": f"triton sweep unavailable: {exc}"}
    grid = geometry.patch_grid((32, 16, 3, 224, 224), (768, 3, 2, 16, 16), has_cls=True)
    rows = []
    for video_dtype in (None, torch.uint8):
        try:
            found = triton_sweep.sweep(grid, torch.bfloat16, video_dtype, explore=True)
        except Exception as exc:  # noqa: BLE001  (report what failed, keep the rest of the run)
            return {"error": f"{type(exc).__name__}: {exc}", "rows": rows}
        for r in found:
            c = r["config"]
            rows.append(
                {
                    "kernel": r["kernel"],
                    "video": "uint8" if video_dtype is not None else "bf16",
                    "config": f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages} g{c.group_m}",
                    "us": r.get("us"),
                    "estimate_us": r.get("estimate_us"),
                    "floor_us": r.get("floor_us"),
                    "picked": r.get("picked", False),
                    "error": r.get("error"),
                }
            )
    return {"rows": rows}


def render_sweep(sweep: dict) -> list[str]:
    lines = ["", "## Triton configs: measured vs modeled (bf16, B=32, T=16, 224 px, E=768, tubelet 2)", ""]
    if sweep.get("error"):
        lines.append(f"Sweep stopped: {sweep['error']}")
    lines += [
        "| kernel | video | config | measured us | modeled us | floor us | measured / modeled | picked |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sweep.get("rows", []):
        if r["us"] is None:
            lines.append(f"| {r['kernel']} | {r['video']} | {r['config']} | failed: {r['error']} | | | | |")
            continue
        ratio = r["us"] / r["estimate_us"] if r["estimate_us"] else None
        lines.append(
            f"| {r['kernel']} | {r['video']} | {r['config']} | {r['us']:.1f} | {_f(r['estimate_us'])} "
            f"| {_f(r['floor_us'])} | {_f(ratio, 'x')} | {'yes' if r['picked'] else ''} |"
        )
    return lines


def triton_roofline(case: Case, ceilings: dict) -> Optional[dict]:
    """The Triton backend's own roofline floor for ``case`` in ms, if it exposes one; None otherwise."""
    try:
        tuning = importlib.import_module("lsvit_kernels.backends.triton_tuning")
    except ImportError:
        return None
    floor_us = getattr(tuning, "roofline_floor_us", None)
    if floor_us is None:
        return None
    kernels = ["forward"] + (["grad_weight", "grad_rows"] if case.mode == "fwdbwd" else [])  # no video grad
    grid, dtype = case.grid(), case.torch_dtype
    video_dtype = torch.uint8 if case.uint8_input else None
    out: dict = {"kernels": kernels}
    try:
        out["spec_ms"] = sum(floor_us(grid, dtype, k, video_dtype) for k in kernels) / 1e3
        gemm = ceilings.get("gemm_gflops", {}).get(case.dtype)
        copy = ceilings.get("copy_gbytes_s")
        if gemm and copy:
            out["measured_ceilings_ms"] = (
                sum(floor_us(grid, dtype, k, video_dtype, tflops=gemm / 1e3, tbps=copy / 1e3) for k in kernels) / 1e3
            )
    except Exception as exc:  # noqa: BLE001  (the model's signature may change: report, do not crash)
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def headline(results: dict) -> list[dict]:
    """One row per headline case: every contestant's median and our best's ratios."""
    rows = []
    for entry in results["cases"]:
        if "headline" not in entry["case"]["tags"]:
            continue
        case = Case(**{k: entry["case"][k] for k in Case.__dataclass_fields__ if k != "tags"})
        medians = {r["contestant"]: r.get("median_ms") for r in entry["results"]}
        best = best_ours(entry)
        row = {
            "case": entry["case"]["label"],
            "medians_ms": medians,
            "status": {r["contestant"]: r["status"] for r in entry["results"]},
            "best_ours": best["contestant"] if best else None,
            "best_ours_ms": best["median_ms"] if best else None,
            "roofline_measured_ms": entry.get("roofline_ms"),
            "triton_roofline": triton_roofline(case, results.get("ceilings") or {}),
        }
        if best:
            row["speedup"] = dict(entry["speedups"][best["contestant"]])
            if row["roofline_measured_ms"]:
                row["frac_of_roofline_measured"] = row["roofline_measured_ms"] / best["median_ms"]
            tr = row["triton_roofline"] or {}
            if tr.get("spec_ms"):
                row["frac_of_triton_roofline_spec"] = tr["spec_ms"] / best["median_ms"]
        rows.append(row)
    return rows


def _f(v: Optional[float], unit: str = "") -> str:
    return "-" if v is None else f"{v:.3f}{unit}"


def render(report: dict) -> str:
    lines = ["# lsvit GPU validation", ""]
    tests = report.get("tests")
    if tests:
        if "counts" in tests:
            c = tests["counts"]
            lines.append(
                f"GPU tests (`{tests['command']}`): {c['passed']} passed, {c['failures']} failed, "
                f"{c['errors']} errors, {c['skipped']} skipped in {tests['wall_s']:.0f} s."
            )
            lines += [f"- FAILED {f['test']}: {f['message'][:200]}" for f in tests["failed"]]
        else:
            lines.append(f"GPU tests: {tests.get('error')} (return code {tests['returncode']}).")
    lines += ["", "## Headline: bf16, B=32, T=16, 224 px, E=768, tubelet 2", ""]
    header = [
        "case",
        "best ours",
        "ours ms",
        "conv ms",
        "linear ms",
        "compile ms",
        "gemm floor ms",
        "roofline (measured) ms",
        "triton roofline (spec) ms",
        "vs conv",
        "vs compile",
        "% of roofline",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report.get("headline", []):
        m, s, tr = row["medians_ms"], row.get("speedup", {}), row.get("triton_roofline") or {}
        lines.append(
            "| "
            + " | ".join(
                [
                    row["case"],
                    str(row["best_ours"]),
                    _f(row["best_ours_ms"]),
                    _f(m.get("conv")),
                    _f(m.get("linear")),
                    _f(m.get("compile")),
                    _f(m.get("gemm floor")),
                    _f(row.get("roofline_measured_ms")),
                    _f(tr.get("spec_ms")),
                    _f(s.get("conv"), "x"),
                    _f(s.get("compile"), "x"),
                    "-"
                    if row.get("frac_of_roofline_measured") is None
                    else f"{100 * row['frac_of_roofline_measured']:.0f}%",
                ]
            )
            + " |"
        )
    if report.get("sweep"):
        lines += render_sweep(report["sweep"])
    if report.get("bench"):
        lines += ["", render_markdown(report["bench"]).replace("# lsvit benchmark", "## Benchmark suite", 1)]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    suite_extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, suite_extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m lsvit.bench.gpu_validate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_report"), help="report folder (default gpu_report/)")
    parser.add_argument("--device", default="cuda", help="CUDA device (default cuda); 'cpu' only rehearses the run")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    parser.add_argument("--skip-sweep", action="store_true", help="do not time every Triton config")
    parser.add_argument("--skip-bench", action="store_true", help="do not run the benchmark suite")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_validate: torch sees no CUDA device (torch.cuda.is_available() is False). Run it on a machine "
            "with an NVIDIA GPU and a CUDA build of torch, or pass --device cpu to rehearse.",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"schema": 1, "device": args.device}
    if not args.skip_tests:
        print("gpu_validate: running pytest -m gpu ...", file=sys.stderr)
        report["tests"] = run_gpu_tests(args.out)
    if not args.skip_sweep and args.device.startswith("cuda"):
        print("gpu_validate: timing every Triton config against the cost model ...", file=sys.stderr)
        report["sweep"] = run_triton_sweep()
    if not args.skip_bench:
        print("gpu_validate: running the benchmark suite ...", file=sys.stderr)
        bench_args = suite.build_parser().parse_args(
            ["--device", args.device, "--headline", "--out", str(args.out / "bench"), *suite_extra]
        )
        bench = suite.run_suite(bench_args)
        suite.write_outputs(bench, bench_args.out, plots=not bench_args.no_plots)
        report["bench"] = bench
        report["headline"] = headline(bench)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    markdown = render(report)
    (args.out / "report.md").write_text(markdown)
    sys.stdout.write(markdown)
    print(f"\ngpu_validate: wrote {args.out / 'report.json'} and {args.out / 'report.md'}", file=sys.stderr)
    tests_ok = "tests" not in report or report["tests"].get("returncode") in (0, 5)  # 5: nothing collected
    return 0 if tests_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
