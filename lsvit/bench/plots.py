"""PNG plots of a results dict (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report import best_ours  # noqa: E402

COLORS = {"conv": "#7f7f7f", "linear": "#1f77b4", "compile": "#9467bd", "gemm floor": "#bcbd22"}
OURS_COLORS = ["#d62728", "#ff7f0e", "#2ca02c", "#8c564b", "#e377c2"]


def _save(fig, path: Path) -> bool:
    """Lay out, write and release a figure; True (a plot was written)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _color(name: str, ours_names: list[str]) -> str:
    if name in COLORS:
        return COLORS[name]
    return OURS_COLORS[ours_names.index(name) % len(OURS_COLORS)] if name in ours_names else "#17becf"


def _finish_grouped_bars(
    fig, ax, path: Path, labels: list[str], bar: float, xlabel: str, title: str, fontsize: int = 7
) -> bool:
    """Case labels centred on each group of horizontal bars (``bar`` high each), first case on top; save."""
    ax.set_yticks([i + 0.4 - bar / 2 for i in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=fontsize)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _ran(entries: list[dict], keep) -> list[str]:
    """Contestant names, in first-seen order, with at least one record that passes ``keep``."""
    names: list[str] = []
    for e in entries:
        names += [r["contestant"] for r in e["results"] if keep(r) and r["contestant"] not in names]
    return names


def latency_plot(results: dict, mode: str, path: Path) -> bool:
    """Horizontal grouped bars: median ms per case and contestant, IQR as error bars. False if no case."""
    entries = [e for e in results["cases"] if e["case"]["mode"] == mode]
    if not entries:
        return False
    names = _ran(entries, lambda r: r["status"] == "ok")
    ours_names = [n for n in names if n.startswith("ours:")]
    height = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(entries) * max(len(names), 1) * 0.35 + 1))
    for j, name in enumerate(names):
        ys, xs, lo, hi = [], [], [], []
        for i, e in enumerate(entries):
            r = next((r for r in e["results"] if r["contestant"] == name and r["status"] == "ok"), None)
            if r is None:
                continue
            ys.append(i + j * height)
            xs.append(r["median_ms"])
            lo.append(r["median_ms"] - r["q1_ms"])
            hi.append(r["q3_ms"] - r["median_ms"])
        ax.barh(ys, xs, height=height, xerr=[lo, hi], label=name, color=_color(name, ours_names), capsize=2)
    ax.set_xscale("log")
    labels = [e["case"]["label"].replace(f" {mode}", "") for e in entries]
    title = (
        f"Patch embedding latency, {'forward' if mode == 'fwd' else 'forward + backward'} "
        f"({results['settings']['device']})"
    )
    return _finish_grouped_bars(fig, ax, path, labels, height, "median ms per call (log scale; bars: IQR)", title, 8)


def speedup_plot(results: dict, path: Path) -> bool:
    """Best of ours vs each baseline per case (> 1: ours faster)."""
    entries = [e for e in results["cases"] if best_ours(e)]
    if not entries:
        return False
    baselines = [
        b
        for b in ("conv", "linear", "compile", "gemm floor")
        if any(b in (e.get("speedups") or {}).get(best_ours(e)["contestant"], {}) for e in entries)
    ]
    if not baselines:
        return False
    width = 0.8 / len(baselines)
    fig, ax = plt.subplots(figsize=(12, 1 + 0.35 * len(entries) * len(baselines) * 0.5 + 1))
    for j, base in enumerate(baselines):
        ys, xs = [], []
        for i, e in enumerate(entries):
            ratio = e["speedups"][best_ours(e)["contestant"]].get(base)
            if ratio is not None:
                ys.append(i + j * width)
                xs.append(ratio)
        ax.barh(ys, xs, height=width, label=f"vs {base}", color=COLORS[base])
    ax.axvline(1.0, color="black", linewidth=0.8)
    labels = [f"{e['case']['label']} [{best_ours(e)['contestant']}]" for e in entries]
    xlabel = "speedup = baseline median / best-of-ours median (> 1: ours faster)"
    return _finish_grouped_bars(fig, ax, path, labels, width, xlabel, "Speedup of our best backend per case")


def memory_plot(results: dict, path: Path) -> bool:
    """Peak extra memory per call, per contestant, per case."""
    entries = [e for e in results["cases"] if any(r.get("peak_bytes") is not None for r in e["results"])]
    if not entries:
        return False
    names = _ran(entries, lambda r: r.get("peak_bytes") is not None)
    ours_names = [n for n in names if n.startswith("ours:")]
    height = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(entries) * len(names) * 0.35 + 1))
    for j, name in enumerate(names):
        ys, xs = [], []
        for i, e in enumerate(entries):
            r = next((r for r in e["results"] if r["contestant"] == name and r.get("peak_bytes") is not None), None)
            if r is not None:
                ys.append(i + j * height)
                xs.append(r["peak_bytes"] / 2**20)
        ax.barh(ys, xs, height=height, label=name, color=_color(name, ours_names))
    labels = [e["case"]["label"] for e in entries]
    xlabel = "peak MiB allocated during one call (output included)"
    return _finish_grouped_bars(fig, ax, path, labels, height, xlabel, "Peak memory per call")


def patch_count_plot(results: dict, path: Path) -> bool:
    """Tokens per clip against frames (left); attention query-key pairs at the largest size, per step vs full clip
    (right). Colour: tubelet; line style: frame size."""
    rows = results.get("patch_counts") or []
    if not rows:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = sorted({r["size"] for r in rows})
    styles = dict(zip(reversed(sizes), ["-", "--", ":", "-."], strict=False))  # largest size: solid
    colors = {1: "#d62728", 2: "#1f77b4", 4: "#2ca02c", 8: "#9467bd"}
    frames_all = sorted({r["frames"] for r in rows})
    for size in sizes:
        for tub in sorted({r["tubelet"] for r in rows}):
            sel = sorted((r for r in rows if r["size"] == size and r["tubelet"] == tub), key=lambda r: r["frames"])
            if not sel:
                continue
            frames = [r["frames"] for r in sel]
            color = colors.get(tub, "#7f7f7f")
            label = f"{sel[0]['kind']}, {size} px"
            left.plot(frames, [r["tokens_per_clip"] for r in sel], styles[size], marker="o", color=color, label=label)
            if size != sizes[-1]:
                continue
            for key, style, marker, scope in (
                ("attn_pairs_per_step_sum", "-", "o", "per step"),
                ("attn_pairs_full_clip", ":", "x", "full clip"),
            ):
                right.plot(
                    frames, [r[key] for r in sel], style, marker=marker, color=color, label=f"{sel[0]['kind']}, {scope}"
                )
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(frames_all)
        ax.set_xticklabels([str(f) for f in frames_all])
        ax.set_xlabel("frames per clip")
        ax.legend(fontsize=7)
    left.set_ylabel("patch tokens per clip")
    left.set_title("Tokens per clip: 2D patches vs tubelets (P=16)")
    right.set_ylabel("query-key pairs per attention layer")
    right.set_title(f"Attention cost at {sizes[-1]} px: per time step vs full clip")
    return _save(fig, path)


def model_plot(results: dict, path: Path) -> bool:
    model = results.get("model") or {}
    variants = [v for v in model.get("variants", []) if v.get("status") == "ok"]
    if not variants:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [v["variant"] for v in variants]
    ax.bar(
        xs,
        [v["median_ms"] for v in variants],
        yerr=[[v["median_ms"] - v["q1_ms"] for v in variants], [v["q3_ms"] - v["median_ms"] for v in variants]],
        color=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"][: len(variants)],
        capsize=3,
    )
    for x, v in zip(xs, variants, strict=True):
        ax.annotate(f"{v.get('tokens_per_clip', 0):,} tok", (x, v["median_ms"]), ha="center", va="bottom", fontsize=8)
    cfg = model["config"]
    ax.set_ylabel("median ms per forward")
    ax.set_title(
        f"LSViT forward, {cfg['num_frames']}x{cfg['image_size']}px, E={cfg['embed_dim']}, depth {cfg['depth']}",
        fontsize=9,
    )
    return _save(fig, path)


def write_plots(results: dict, out_dir: Path) -> list[str]:
    """Write every plot that has data; returns the file names written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        ("latency_fwd.png", lambda p: latency_plot(results, "fwd", p)),
        ("latency_fwdbwd.png", lambda p: latency_plot(results, "fwdbwd", p)),
        ("speedup.png", lambda p: speedup_plot(results, p)),
        ("memory.png", lambda p: memory_plot(results, p)),
        ("patch_counts.png", lambda p: patch_count_plot(results, p)),
        ("model_latency.png", lambda p: model_plot(results, p)),
    ]
    return [name for name, job in jobs if job(out_dir / name)]
