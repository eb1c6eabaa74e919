"""Render the suite's JSON as Markdown: ``python -m lsvit.bench.report bench_out/results.json``.

Every number in the tables comes from the JSON; nothing is typed by hand. The suite prints the same Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .machine import busy_warning

BASELINES = ("conv", "linear", "compile")


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _num(value: Optional[float], digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _ratio(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _contestant_order(results: dict) -> list[str]:
    names: list[str] = []
    for entry in results["cases"]:
        for record in entry["results"]:
            if record["contestant"] not in names:
                names.append(record["contestant"])
    return names


def best_ours(entry: dict) -> Optional[dict]:
    ours = [r for r in entry["results"] if r["kind"] == "ours" and r["status"] == "ok"]
    return min(ours, key=lambda r: r["median_ms"]) if ours else None


def _cell(record: Optional[dict]) -> str:
    if record is None:
        return "-"
    if record["status"] == "ok":
        return _ms(record["median_ms"])
    return "FAILED" if record["status"] == "failed" else "skip"


def machine_lines(results: dict) -> list[str]:
    m = results["machine"]
    s = results["settings"]
    device = m.get("gpu_name") or f"{m['cpu_model']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads)"
    load = m.get("load_average")
    lines = [
        f"Device: **{s['device']}** — {device}. torch {m['torch']}, triton {m.get('triton')}, "
        f"python {m['python']}, commit `{(m.get('git_commit') or 'unknown')[:10]}`"
        f"{' (dirty)' if m.get('git_dirty') else ''}, {m['timestamp_utc']}.",
        f"Backends of ours here: {', '.join(results.get('backends') or ['none'])}. "
        f"Timing: {s['warmup']} warm-up calls, up to {s['repeats']} timed calls (at least {s['min_repeats']}, "
        f"{s['budget_s']} s budget per contestant), cycling {s['input_sets']} input sets; median of the samples.",
    ]
    if load:
        end = (results.get("load_average_end") or [None])[0]
        lines.append(f"Load average at start: {load[0]:.2f} (1 min); at end: {_num(end, 2)}.")
        warning = busy_warning([load[0], end], m.get("cpu_count"))
        if warning:
            lines.append(f"**{warning[0].upper()}{warning[1:]}.**")
    c = results.get("ceilings") or {}
    if c:
        gemm = ", ".join(f"{k} {_num(v, 0)}" for k, v in c.get("gemm_gflops", {}).items())
        lines.append(
            f"Ceilings measured in this run: GEMM {c['gemm_n']}^3 GFLOP/s: {gemm}; "
            f"copy {_num(c.get('copy_gbytes_s'), 1)} GB/s."
        )
    return lines


def summary_table(results: dict) -> list[str]:
    names = _contestant_order(results)
    ours_names = [n for n in names if n.startswith("ours:")]
    others = [n for n in names if not n.startswith("ours:")]
    header = ["case"] + [f"{n} ms" for n in others] + ["roofline ms"] + [f"{n} ms" for n in ours_names]
    header += [f"best ours vs {b}" for b in BASELINES]
    rows = []
    for entry in results["cases"]:
        by_name = {r["contestant"]: r for r in entry["results"]}
        best = best_ours(entry)
        row = [entry["case"]["label"]] + [_cell(by_name.get(n)) for n in others]
        row += [_ms(entry.get("roofline_ms"))] + [_cell(by_name.get(n)) for n in ours_names]
        for base in BASELINES:
            ratio = (entry.get("speedups") or {}).get(best["contestant"], {}).get(base) if best else None
            row.append(_ratio(ratio))
        rows.append(row)
    return _table(header, rows)


PLAIN = ("conv", "linear", "compile")  # plain PyTorch: what users write today
FLOOR = "gemm floor"


def auto_dispatch_rows(results: dict) -> list[dict]:
    """Per case: the backend automatic dispatch picks, its median, the best plain-PyTorch contestant's and the GEMM
    floor's, and auto / best-plain as a speedup (None where a number is missing)."""
    rows = []
    for entry in results["cases"]:
        by_name = {r["contestant"]: r for r in entry["results"] if r["status"] == "ok"}
        auto = entry.get("auto_backend")
        engine = entry.get("auto_engine")
        auto_rec = by_name.get(f"ours:{auto}") if auto else None
        plain = [by_name[n] for n in PLAIN if n in by_name]
        best_plain = min(plain, key=lambda r: r["median_ms"]) if plain else None
        floor = by_name.get(FLOOR)
        speedup = best_plain["median_ms"] / auto_rec["median_ms"] if auto_rec and best_plain else None
        rows.append(
            {
                "label": entry["case"]["label"],
                "auto": auto,
                "auto_label": f"{auto} ({engine} GEMM)" if auto and engine else auto,
                "auto_ms": auto_rec["median_ms"] if auto_rec else None,
                "best_plain": best_plain["contestant"] if best_plain else None,
                "best_plain_ms": best_plain["median_ms"] if best_plain else None,
                "floor_ms": floor["median_ms"] if floor else None,
                "speedup": speedup,
            }
        )
    return rows


def auto_dispatch_table(results: dict) -> list[str]:
    rows = auto_dispatch_rows(results)
    if not any(r["auto"] for r in rows):
        return []
    header = ["case", "auto picks", "auto ms", "best plain", "best plain ms", "gemm floor ms", "auto / floor"]
    header += ["speedup vs best plain"]
    table = []
    for r in rows:
        over_floor = r["auto_ms"] / r["floor_ms"] if r["auto_ms"] and r["floor_ms"] else None
        table.append(
            [
                r["label"],
                r["auto_label"] or "-",
                _ms(r["auto_ms"]),
                r["best_plain"] or "-",
                _ms(r["best_plain_ms"]),
                _ms(r["floor_ms"]),
                _ratio(over_floor),
                _ratio(r["speedup"]),
            ]
        )
    lines = _table(header, table)
    speedups = [r["speedup"] for r in rows if r["speedup"] is not None]
    if speedups:
        lines += [
            "",
            f"Automatic dispatch vs the best plain-PyTorch contestant ({', '.join(PLAIN)}): median "
            f"{_ratio(statistics.median(speedups))}, worst {_ratio(min(speedups))}, over {len(speedups)} cases.",
        ]
    return lines


def _speedups(ratios: Optional[dict]) -> str:
    if not ratios:
        return ""
    return " / ".join(_ratio(ratios.get(base)) for base in BASELINES)


def detail_table(results: dict) -> list[str]:
    header = [
        "case",
        "contestant",
        "median ms",
        "IQR ms",
        "min ms",
        "max ms",
        "n",
        "GFLOP/s",
        "% GEMM peak",
        "GB/s",
        "% copy peak",
        "peak MiB",
        "max err",
        "compile s",
        "speedup vs conv / linear / compile",
    ]
    rows = []
    for entry in results["cases"]:
        for r in entry["results"]:
            if r["status"] != "ok":
                continue
            errors = r.get("errors") or {}
            peak = r.get("peak_bytes")
            rows.append(
                [
                    entry["case"]["label"],
                    r["contestant"],
                    _ms(r["median_ms"]),
                    _ms(r["iqr_ms"]),
                    _ms(r["min_ms"]),
                    _ms(r["max_ms"]),
                    str(r["n"]),
                    _num(r.get("gflops")),
                    _pct(r.get("frac_gemm_peak")),
                    _num(r.get("gbytes_s")),
                    _pct(r.get("frac_copy_peak")),
                    "-" if peak is None else _num(peak / 2**20),
                    f"{max(errors.values()):.1e}" if errors else "-",
                    "-" if r.get("compile_s") is None else _num(r["compile_s"], 1),
                    _speedups((entry.get("speedups") or {}).get(r["contestant"])),
                ]
            )
    return _table(header, rows)


def not_run_lines(results: dict) -> list[str]:
    lines = []
    reasons: dict[tuple[str, str, str], list[str]] = {}
    for entry in results["cases"]:
        for r in entry["results"]:
            if r["status"] != "ok":
                reasons.setdefault((r["contestant"], r["status"], r.get("reason", "")), []).append(
                    entry["case"]["label"]
                )
    for (name, status, reason), labels in reasons.items():
        where = labels[0] if len(labels) == 1 else f"{len(labels)} cases"
        lines.append(f"- **{name}** {status.upper()} ({where}): {reason}")
    return lines


def patch_count_lines(results: dict) -> list[str]:
    rows_in = results.get("patch_counts") or []
    if not rows_in:
        return []
    tubelets = sorted({r["tubelet"] for r in rows_in})
    keys = sorted({(r["size"], r["frames"]) for r in rows_in})
    by = {(r["size"], r["frames"], r["tubelet"]): r for r in rows_in}
    kind = {t: "2D" if t == 1 else f"3D t={t}" for t in tubelets}
    header = ["pixels", "frames"] + [f"{kind[t]} tokens" for t in tubelets]
    header += [f"{kind[t]} attn per step" for t in tubelets] + [f"{kind[t]} attn full clip" for t in tubelets]
    rows = []
    for size, frames in keys:
        cells = [str(size), str(frames)]
        for field in ("tokens_per_clip", "attn_pairs_per_step_sum", "attn_pairs_full_clip"):
            for t in tubelets:
                r = by.get((size, frames, t))
                cells.append(_num(r[field], 0) if r else "-")
        rows.append(cells)
    return [
        "Patch tokens per clip (P=16, no CLS) and the attention cost they imply, in query-key pairs per layer: "
        "*per step* = T' (1 + N)^2 (attention within each time step, LSViT), *full clip* = (1 + T' N)^2 "
        "(one joint sequence).",
        "",
        *_table(header, rows),
    ]


def model_lines(results: dict) -> list[str]:
    model = results.get("model")
    if not model:
        return ["Not measured in this run."]
    cfg = model["config"]
    lines = [
        f"LSViTForAction forward (eval, no grad), batch {model['batch']}, {model['dtype']}, "
        f"{cfg['num_frames']} frames of {cfg['image_size']} px, E={cfg['embed_dim']}, depth {cfg['depth']}, "
        f"{cfg['num_heads']} heads.",
        "",
    ]
    rows = []
    base = next((v for v in model["variants"] if v["variant"] == "2D" and v["status"] == "ok"), None)
    for v in model["variants"]:
        if v["status"] != "ok":
            rows.append([v["variant"], "-", "FAILED", "-", "-", "-", v.get("reason", "")[:120]])
            continue
        speed = base["median_ms"] / v["median_ms"] if base else None
        rows.append(
            [
                v["variant"],
                _num(v.get("tokens_per_clip"), 0),
                _ms(v["median_ms"]),
                _ms(v["iqr_ms"]),
                _ratio(speed),
                str(v.get("backend")),
                "",
            ]
        )
    return lines + _table(
        ["variant", "tokens/clip", "median ms", "IQR ms", "speedup vs 2D", "patch backend", "note"], rows
    )


SECTIONS = ("machine", "summary", "details", "patch-counts", "model", "input-stage")


def render_markdown(results: dict, sections: Sequence[str] = SECTIONS) -> str:
    """The report, or only the named sections (e.g. ``("summary",)`` for a README table)."""
    lines: list[str] = []
    if "machine" in sections:
        lines += ["# lsvit benchmark", ""] + machine_lines(results) + [""]
    if "summary" in sections:
        lines += ["## Latency: median ms per call (lower is better); speedup = baseline / best of ours", ""]
        lines += summary_table(results)
        auto = auto_dispatch_table(results)
        if auto:
            lines += ["", "### Automatic dispatch: the backend `patch_embed` picks without `backend=`", ""] + auto
        not_run = not_run_lines(results)
        if not_run:
            lines += ["", "Not timed:", ""] + not_run
        lines += [""]
    if "details" in sections:
        lines += ["## Details", ""] + detail_table(results) + [""]
    if "patch-counts" in sections:
        lines += ["## Patch counts", ""] + patch_count_lines(results) + [""]
    if "model" in sections:
        lines += ["## LSViT model: 2D vs 3D", ""] + model_lines(results) + [""]
    if "input-stage" in sections:
        from .input_stage import input_stage_lines

        lines += ["## LSViT input stage: SMIF + patch embedding, unfused vs fused", ""]
        lines += input_stage_lines(results) + [""]
    if "machine" in sections and results.get("elapsed_s") is not None:
        lines += [f"Suite wall time: {results['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsvit.bench.report", description=__doc__)
    parser.add_argument("results", type=Path, help="results.json written by lsvit-bench")
    parser.add_argument("-o", "--output", type=Path, help="write the Markdown here instead of stdout")
    parser.add_argument(
        "--sections",
        type=lambda text: [v for v in text.replace(",", " ").split()],
        default=list(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all), e.g. 'summary' for a README table",
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    markdown = render_markdown(json.loads(args.results.read_text()), args.sections)
    if args.output:
        args.output.write_text(markdown)
    else:
        sys.stdout.write(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
