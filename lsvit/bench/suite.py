"""``lsvit-bench``: the benchmark suite. Markdown table on stdout; results.json, results.md and PNG plots in --out.

Every contestant (see lsvit/bench/contestants.py) is checked against a float64 reference before it is timed, on
the same inputs; a wrong one is marked FAILED and not timed. The default case list fits about five minutes on a
2-core CPU; ``--full`` runs the full grid; axis flags build a custom grid (see lsvit/bench/cases.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

import lsvit_kernels as lk
from lsvit.errors import UserError, add_debug_argument, run_guarded
from lsvit_kernels import registry

from . import cases as cases_mod
from .contestants import Contestant, default_contestants, make_inputs
from .harness import (
    TimingConfig,
    add_rates,
    add_speedups,
    best_ceilings,
    measure_ceilings,
    roofline_ms,
    run_contestant,
)
from .input_stage import measure_input_stage
from .machine import machine_info
from .model_latency import measure_model
from .patch_counts import patch_count_rows
from .report import render_markdown


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(",", " ").split()]


def _strs(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]  # commas only: "gemm floor" is one name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lsvit-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default: bench_out/)")
    sel = p.add_argument_group("cases (any of these builds a grid: the cross product of the given values)")
    sel.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test); no torch.compile")
    sel.add_argument("--full", action="store_true", help="the full grid of every axis (long)")
    sel.add_argument(
        "--headline",
        action="store_true",
        help="add the headline GPU cases: bf16 B=32 T=16 224 px E=768 tubelet 2, fwd and fwdbwd",
    )
    sel.add_argument("--sizes", type=_ints, help="frame sizes in pixels, e.g. '112,224'")
    sel.add_argument("--frames", type=_ints, help="frames per clip, e.g. '8,16,32'")
    sel.add_argument("--tubelets", type=_ints, help="tubelet lengths (1 = 2D patches), e.g. '1,2,4'")
    sel.add_argument("--batch", type=_ints, help="batch sizes, e.g. '1,2,8'")
    sel.add_argument("--embed-dim", type=_ints, help="embedding widths E, e.g. '192,768'")
    sel.add_argument("--dtype", type=_strs, help="compute dtypes: float32, bfloat16, float16")
    sel.add_argument("--mode", type=_strs, help="fwd (forward), fwdbwd (forward + backward), or both")
    sel.add_argument(
        "--input",
        type=_strs,
        dest="inputs",
        help="video input: float (the compute dtype) and/or uint8 (raw pixels, normalization folded)",
    )
    run = p.add_argument_group("measurement")
    run.add_argument("--repeats", type=int, default=None, help="timed calls per contestant (default 10; GPU 50)")
    run.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2; GPU 5)")
    run.add_argument(
        "--min-repeats", type=int, default=None, help="timed calls even past the budget (default 3; 2 with --quick)"
    )
    run.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed calls per contestant and case before stopping early (default 2)",
    )
    run.add_argument("--input-sets", type=int, default=3, help="input videos cycled through (default 3)")
    run.add_argument(
        "--contestants", type=_strs, help="only these contestants, e.g. 'conv,linear,ours:cpu' (default: all)"
    )
    run.add_argument("--no-compile", action="store_true", help="skip the torch.compile contestant")
    run.add_argument("--compile", action="store_true", help="run torch.compile even with --quick")
    run.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    run.add_argument("--no-model", action="store_true", help="skip the LSViT model latency section")
    run.add_argument(
        "--no-input-stage", action="store_true", help="skip LSViT's input stage: unfused vs fused, eager vs compiled"
    )
    run.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(p)
    return p


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return device


def select_cases(args: argparse.Namespace, device: torch.device) -> list[cases_mod.Case]:
    uint8 = None
    if args.inputs:
        unknown = set(args.inputs) - {"float", "uint8"}
        if unknown:
            raise UserError(f"--input {sorted(unknown)} is unknown; use float and/or uint8")
        uint8 = [v == "uint8" for v in args.inputs]
    for mode in args.mode or []:
        if mode not in cases_mod.MODES:
            raise UserError(f"--mode {mode!r} is unknown; use fwd and/or fwdbwd")
    try:
        return cases_mod.select_cases(
            device.type,
            quick=args.quick,
            full=args.full,
            sizes=args.sizes,
            frames=args.frames,
            tubelets=args.tubelets,
            batches=args.batch,
            embed_dims=args.embed_dim,
            dtypes=args.dtype,
            modes=args.mode,
            uint8=uint8,
            headline=args.headline,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def timing_config(args: argparse.Namespace, device: torch.device) -> TimingConfig:
    gpu = device.type == "cuda"
    return TimingConfig(
        warmup=args.warmup if args.warmup is not None else (5 if gpu else (1 if args.quick else 2)),
        repeats=args.repeats if args.repeats is not None else (50 if gpu else (5 if args.quick else 10)),
        min_repeats=args.min_repeats if args.min_repeats is not None else (2 if args.quick else 3),
        budget_s=args.budget if args.budget is not None else (0.5 if args.quick else 2.0),
        measure_memory=not args.no_memory,
    )


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)


def run_suite(
    args: argparse.Namespace,
    extra_contestants: Sequence[Contestant] = (),
) -> dict:
    """Run every selected case and contestant; returns the results dict (what results.json holds)."""
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # CUDA events and the memory counters use the current device
    case_list = select_cases(args, device)
    cfg = timing_config(args, device)
    compile_on = not args.no_compile and (not args.quick or args.compile)
    skip_reason = "skipped in --quick mode (compile time dominates; pass --compile)" if args.quick else ""
    contestants = default_contestants(device.type, compile_on, skip_reason) + list(extra_contestants)
    if args.contestants:
        unknown = set(args.contestants) - {c.name for c in contestants}
        if unknown:
            raise UserError(f"--contestants {sorted(unknown)} not known here; have {[c.name for c in contestants]}")
        contestants = [c for c in contestants if c.name in args.contestants]

    results: dict = {
        "schema": 1,
        "machine": machine_info(device),
        "settings": {
            "device": str(device),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "warmup": cfg.warmup,
            "repeats": cfg.repeats,
            "min_repeats": cfg.min_repeats,
            "budget_s": cfg.budget_s,
            "input_sets": args.input_sets,
            "quick": args.quick,
            "seed": args.seed,
            "memory_measure": (
                "CUDA max_memory_allocated delta over one call"
                if device.type == "cuda"
                else "torch.profiler(profile_memory=True) CPU allocator events: peak of the running sum over one call"
            ),
            "error_metric": "max |out - ref| / RMS(ref) vs the float64 reference, per output tensor",
        },
        "backends": lk.available_backends(device.type),
        "contestants": [{"name": c.name, "kind": c.kind, "description": c.description} for c in contestants],
        "cases": [],
    }
    dtypes = sorted({c.dtype for c in case_list})
    ceilings_start = measure_ceilings(device, dtypes, quick=args.quick)

    bar = _progress(len(case_list) * len(contestants), not args.no_progress)
    for case in case_list:
        inputs = make_inputs(case, device, sets=args.input_sets, seed=args.seed)
        records = []
        for contestant in contestants:
            if bar is not None:
                bar.set_description(f"{case.label} | {contestant.name}"[:70])
            records.append(run_contestant(contestant, inputs, cfg))
            if bar is not None:
                bar.update(1)
        results["cases"].append(
            {
                "case": case.to_dict(),
                "results": records,
                "speedups": add_speedups(records),
                # what lk.patch_embed(...) without backend= runs for this case here
                "auto_backend": (auto := registry.resolve(device.type, None, case.torch_dtype).name),
                "auto_engine": cpu_gemm_engine(
                    auto, case.torch_dtype, case.batch * case.grid().num_patches, case.mode == "fwdbwd"
                ),
            }
        )
        del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if bar is not None:
        bar.close()

    # Ceilings again at the end: other work on the machine can depress one measurement; keep the best of both.
    ceilings = best_ceilings(ceilings_start, measure_ceilings(device, dtypes, quick=args.quick))
    results["ceilings"] = ceilings
    for entry in results["cases"]:
        case = cases_mod.Case(**{k: entry["case"][k] for k in cases_mod.Case.__dataclass_fields__ if k != "tags"})
        entry["roofline_ms"] = roofline_ms(case, ceilings)
        for record in entry["results"]:
            add_rates(record, case, ceilings)

    results["patch_counts"] = patch_count_rows()
    results["model"] = None if args.no_model else measure_model(device, quick=args.quick)
    results["input_stage"] = (
        None if args.no_input_stage else measure_input_stage(device, quick=args.quick, compile_on=compile_on)
    )
    results["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["elapsed_s"] = time.perf_counter() - started
    return results


def write_outputs(results: dict, out_dir: Path, plots: bool = True) -> str:
    """Write results.json, results.md and the plots; returns the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    markdown = render_markdown(results)
    (out_dir / "results.md").write_text(markdown)
    if plots:
        from .plots import write_plots

        results["plots"] = write_plots(results, out_dir)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return markdown


def cpu_gemm_engine(backend: str, dtype: torch.dtype, tokens: int, backward: bool) -> Optional[str]:
    """The GEMM engine the compiled CPU kernel runs for a call of this dtype over this many patch tokens at the
    current thread count (docs/native.md, "CPU GEMM engine"), "<forward's> + <grad_weight's> grad_weight" when
    a backward runs on another one; None when the backend is another one or the library does not say."""
    if backend != "cpu":
        return None
    try:
        forward = str(torch.ops.lsvit_cpu.fused_engine(dtype, tokens))
        weight_grad = str(torch.ops.lsvit_cpu.fused_engine(dtype, tokens, True)) if backward else forward
        return forward if weight_grad == forward else f"{forward} + {weight_grad} grad_weight"
    except (AttributeError, RuntimeError):
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point: errors print one line (``--debug``: the traceback)."""
    return run_guarded(_run_and_write, build_parser().parse_args(argv))


def _run_and_write(args: argparse.Namespace) -> int:
    results = run_suite(args)
    markdown = write_outputs(results, args.out, plots=not args.no_plots)
    sys.stdout.write(markdown)
    written = ["results.json", "results.md"] + results.get("plots", [])
    print(f"\nWrote {', '.join(str(args.out / n) for n in written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
