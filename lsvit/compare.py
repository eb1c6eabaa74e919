"""2D vs 3D patch embedding, side by side: ``lsvit compare [--num_frames 16 --image_size 224 ...]``.

Builds one sample clip (a synthetic motion video, or ``--video``), then for 2D patching and 3D patching with each
``--tubelets`` size runs (a) the patch embedding alone and (b) the whole LSViTForAction, and prints a table of
token counts, output shapes, parameter counts and forward latency (median and interquartile range of
``--repeats`` timed runs after ``--warmup`` untimed ones), with the reduction of each 3D variant relative to 2D.
Same machine, same process, same clip: the numbers are comparable with each other, not with other machines. A
warning line follows the table when the machine was busy (load average at or above one per core) or the spread
exceeds a quarter of the median, the rule of ``lsvit-bench`` (lsvit/bench/machine.py).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lsvit.bench.machine import busy_warning, load_average
from lsvit.config import ModelConfig
from lsvit.data import ClipTransform, decode_frames, default_resize_size, frames_to_rgb, segment_indices
from lsvit.errors import UserError, run_guarded
from lsvit.options import add_dashed, add_model_arguments, build_config, command_parser, model_overrides
from lsvit.synth import render_video
from lsvit_kernels import FusedPatchConv2d, FusedPatchConv3d, token_counts


def build_parser() -> argparse.ArgumentParser:
    return command_parser("lsvit compare", __doc__, add_compare_arguments)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    add_dashed(parser, "tubelets", type=int, nargs="+", default=[2, 4], help="3D tubelet sizes to compare with 2D")
    add_dashed(parser, "batch_size", type=int, default=1, help="clips per forward pass")
    add_dashed(parser, "repeats", type=int, default=5, help="timed forward passes per variant (median reported)")
    add_dashed(parser, "warmup", type=int, default=2, help="untimed forward passes first")
    add_dashed(parser, "video", default=None, help="a video file for the sample clip (default: a synthetic one)")
    add_dashed(parser, "device", default=None, help="cpu or cuda (default: cuda if available)")
    add_dashed(parser, "dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model dtype")
    add_dashed(parser, "skip_model", action="store_true", help="patch embeddings only (no whole-model rows)")
    add_dashed(parser, "json", default=None, help="also write the table as JSON to this file")
    model = parser.add_argument_group("model (ModelConfig; flags override APPCONFIG__* env, which overrides code)")
    add_model_arguments(model, [f for f in _model_fields() if f not in ("use_3d_patch_embed", "tubelet_size")])


def _model_fields() -> list[str]:
    return list(ModelConfig.model_fields)


def sample_clip(config, num_frames: int, batch: int, video: Optional[str]) -> torch.Tensor:
    """Normalized ``(B, T, C, H, W)`` float32: the same clip repeated ``batch`` times."""
    transform = ClipTransform(config.image_size, default_resize_size(config.image_size), train=False)
    if video:
        frames = decode_frames(Path(video))
        pixels = frames_to_rgb([frames[i] for i in segment_indices(len(frames), num_frames, None)])
    else:
        size = default_resize_size(config.image_size)
        size += size % 2
        pixels = render_video("rotate_cw", np.random.default_rng(0), size, num_frames)
    clip = transform(pixels, None)[:, : config.in_channels]
    return clip.unsqueeze(0).expand(batch, *clip.shape).contiguous()


def latency_ms(run: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median and spread of ``repeats`` timed calls after ``warmup`` untimed ones (lsvit.bench.harness.summarize)."""
    from lsvit.bench.harness import summarize

    def synced():
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    for _ in range(warmup):
        synced()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        synced()
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


def _timed(row: dict[str, Any], part: str, run: Callable[[], Any], device: torch.device, args) -> None:
    stats = latency_ms(run, device, args.warmup, args.repeats)
    row[f"{part}_ms"], row[f"{part}_iqr_ms"] = stats["median_ms"], stats["iqr_ms"]


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    from lsvit.model import LSViTForAction

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    base = build_config(model_overrides(args, [f for f in _model_fields() if hasattr(args, f)]))
    num_frames = base.num_frames or 16
    for tubelet in args.tubelets:
        if num_frames % tubelet:
            raise UserError(f"num_frames={num_frames} is not divisible by tubelet {tubelet}")
    clip = sample_clip(base, num_frames, args.batch_size, args.video).to(device, dtype)
    load_start = load_average()
    rows = []
    for tubelet in [1, *args.tubelets]:
        three_d = tubelet > 1
        config = ModelConfig(
            **{**base.model_dump(), "use_3d_patch_embed": three_d, "tubelet_size": tubelet if three_d else 2}
        )
        p = config.patch_size
        embed = (
            FusedPatchConv3d(config.in_channels, config.embed_dim, (tubelet, p, p), backend=config.kernel_backend)
            if three_d
            else FusedPatchConv2d(config.in_channels, config.embed_dim, p, backend=config.kernel_backend)
        )
        embed = embed.to(device, dtype).eval()
        row: dict[str, Any] = {
            "variant": f"3D t={tubelet}" if three_d else "2D",
            "tokens": token_counts(num_frames, config.image_size, patch_size=config.patch_size, tubelet_size=tubelet),
        }
        with torch.no_grad():
            tokens = embed.tokens(clip, layout="BTCHW")
            row["embed_shape"] = list(tokens.shape)
            row["embed_params"] = parameter_count(embed)
            _timed(row, "embed", lambda embed=embed: embed.tokens(clip, layout="BTCHW"), device, args)
            if not args.skip_model:
                torch.manual_seed(0)
                model = LSViTForAction(config, num_frames=num_frames).to(device, dtype).eval()
                row["model_shape"] = list(model(clip).shape)
                row["model_params"] = parameter_count(model)
                _timed(row, "model", lambda model=model: model(clip), device, args)
                del model
        rows.append(row)
    baseline = rows[0]
    for row in rows:
        row["token_reduction_pct"] = 100.0 * (1 - row["tokens"] / baseline["tokens"])
        row["embed_ms_reduction_pct"] = 100.0 * (1 - row["embed_ms"] / baseline["embed_ms"])
        if "model_ms" in row:
            row["model_ms_reduction_pct"] = 100.0 * (1 - row["model_ms"] / baseline["model_ms"])
    print_table(rows, base, num_frames, clip, device, args)
    spreads = [
        row[f"{part}_iqr_ms"] / row[f"{part}_ms"] for row in rows for part in ("embed", "model") if f"{part}_ms" in row
    ]
    warning = busy_warning([load_start, load_average()], spreads=spreads)
    if warning:
        print(warning)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": base.model_dump(), "rows": rows}, indent=2))
    return rows


def print_table(rows, config, num_frames, clip, device, args) -> None:
    print(
        f"clip {list(clip.shape)} {args.dtype} on {device}; patch {config.patch_size}, embed_dim {config.embed_dim}, "
        f"depth {config.depth}; median (interquartile range) of {args.repeats} after {args.warmup} warm-up"
    )
    header = ["variant", "tokens", "tokens -%", "embed out", "embed params", "embed ms (IQR)", "embed ms -%"]
    if "model_ms" in rows[0]:
        header += ["model out", "model params", "model ms (IQR)", "model ms -%"]
    lines = [header]
    for row in rows:
        line = [
            row["variant"],
            f"{row['tokens']:,}",
            f"{row['token_reduction_pct']:.1f}",
            "x".join(map(str, row["embed_shape"])),
            f"{row['embed_params']:,}",
            f"{row['embed_ms']:.2f} ({row['embed_iqr_ms']:.2f})",
            f"{row['embed_ms_reduction_pct']:.1f}",
        ]
        if "model_ms" in row:
            line += [
                "x".join(map(str, row["model_shape"])),
                f"{row['model_params']:,}",
                f"{row['model_ms']:.2f} ({row['model_iqr_ms']:.2f})",
                f"{row['model_ms_reduction_pct']:.1f}",
            ]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def run(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    """Parse ``argv`` and run; returns the results (for tests and notebooks)."""
    return compare(build_parser().parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point: errors print one line (``--debug``: the traceback); returns None (exit 0)."""
    run_guarded(compare, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
