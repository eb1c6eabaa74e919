"""Time every candidate config of the Triton kernels on this GPU for one shape, next to the roofline floor.

The heuristic in ``triton_tuning.py`` was written without a GPU; this is the tool to check and re-tune it:

    python -m lsvit.bench.triton_sweep --batch 32 --frames 16 --size 224 --dtype bf16 [--explore]

prints, per kernel and config, the median time (``triton.testing.do_bench``), the cost model's estimate
(``triton_tuning.estimate``), the floor from ``roofline_floor_us`` and which config the heuristic picks.
``--explore`` adds configs outside the tables
(bigger tiles that spill on paper, other stage counts) so a measured winner can be moved into a table (and then
passes the ahead-of-time spill test or is rejected there).
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch

from lsvit_kernels import geometry
from lsvit_kernels.backends import triton_patch_embed as backend
from lsvit_kernels.backends import triton_tuning as tuning
from lsvit_kernels.backends.triton_tuning import KernelConfig

C = KernelConfig
EXPLORE = {
    # one CTA per SM with 4 stages (the two-CTA table entry without its register cap), taller tiles
    "forward": (
        C(128, 128, 64, 8, 8, 4, 1),
        C(128, 256, 32, 8, 8, 4),
        C(256, 128, 64, 8, 8, 3),
        C(128, 128, 64, 4, 8, 3),
    ),
    "grad_weight": (C(128, 128, 128, 8, 8, 3), C(64, 256, 128, 8, 8, 3)),
    "grad_video": (C(128, 256, 64, 8, 8, 3), C(128, 128, 64, 8, 4, 4)),
}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def sweep(
    grid: geometry.PatchGrid,
    dtype: torch.dtype,
    video_dtype: Optional[torch.dtype] = None,
    explore: bool = False,
    kernels: tuple[str, ...] = ("forward", "grad_weight", "grad_video"),
) -> list[dict]:
    """One row per (kernel, config): ``{"kernel", "config", "us", "estimate_us", "floor_us", "picked"}``: measured
    against modeled time. Needs a CUDA GPU."""
    from triton.testing import do_bench

    video_dtype = video_dtype or dtype
    device = torch.device("cuda")
    g = grid
    shape = (g.batch, g.frames, g.channels, g.height, g.width)
    if video_dtype == torch.uint8:
        video = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    else:
        video = torch.randn(shape, device=device).to(video_dtype)
    weight = (torch.randn(g.embed_dim, g.channels, g.tubelet, g.patch_h, g.patch_w, device=device) * 0.02).to(dtype)
    bias = torch.randn(g.embed_dim, device=device).to(dtype)
    pos = torch.randn(g.tokens_per_step, g.embed_dim, device=device).to(dtype)
    cls = torch.randn(g.embed_dim, device=device).to(dtype) if g.cls_slots else None
    grad_tokens = torch.randn(g.output_shape, device=device).to(dtype)
    has_cls = cls is not None

    runs = {
        "forward": lambda cfg: backend.forward(video, weight, bias, pos, cls, config=cfg),
        "grad_weight": lambda cfg: backend.grad_weight(grad_tokens, video, weight, has_cls, config=cfg),
        "grad_video": lambda cfg: backend.grad_video(grad_tokens, video, weight, has_cls, config=cfg),
    }
    capability = torch.cuda.get_device_capability(device)
    kind = tuning.operand_kind(dtype, backend._dot_precision(dtype))
    model_device = tuning.device_for(capability, torch.cuda.get_device_properties(device).multi_processor_count)
    rows = []
    for kernel in kernels:
        if kernel == "grad_video" and video_dtype == torch.uint8:
            continue
        picked = backend._config(kernel, g, dtype, video_dtype, device)
        configs = list(tuning.candidate_configs(kernel, tuning.arch_of(capability), kind, video_dtype))
        configs += [c for c in EXPLORE.get(kernel, ()) if explore and c not in configs]
        floor = tuning.kernel_cost(kernel, g, dtype, video_dtype).floor_us(
            model_device.tflops(kind), model_device.hbm_tbps
        )
        for cfg in configs:
            programs = (
                tuning.best_programs(g, cfg, model_device, dtype, video_dtype, kind)
                if kernel == "grad_weight"
                else None
            )
            modeled = tuning.estimate(kernel, g, cfg, dtype, video_dtype, model_device, kind, programs).us
            try:
                ms = do_bench(lambda cfg=cfg, run=runs[kernel]: run(cfg), warmup=10, rep=50)
            except Exception as exc:  # a config over this GPU's shared memory fails to launch: report it
                rows.append({"kernel": kernel, "config": cfg, "us": None, "error": str(exc)[:120]})
                continue
            rows.append(
                {
                    "kernel": kernel,
                    "config": cfg,
                    "us": ms * 1e3,
                    "estimate_us": modeled,
                    "floor_us": floor,
                    "picked": cfg == picked,
                }
            )
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="clips per batch (B)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (T)")
    parser.add_argument("--size", type=int, default=224, help="frame height and width")
    parser.add_argument("--patch", type=int, default=16, help="patch height and width")
    parser.add_argument("--tubelet", type=int, default=2, help="frames per tubelet (t)")
    parser.add_argument("--embed-dim", type=int, default=768, help="E")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16", help="weight / compute dtype")
    parser.add_argument("--uint8", action="store_true", help="uint8 video (the decoders' output)")
    parser.add_argument("--explore", action="store_true", help="also time configs outside the tuning tables")
    args = parser.parse_args(argv)
    grid = geometry.patch_grid(
        (args.batch, args.frames, 3, args.size, args.size),
        (args.embed_dim, 3, args.tubelet, args.patch, args.patch),
        has_cls=True,
    )
    dtype = _DTYPES[args.dtype]
    rows = sweep(grid, dtype, torch.uint8 if args.uint8 else None, args.explore)
    print(f"{torch.cuda.get_device_name()}  {grid}  dtype={args.dtype} uint8={args.uint8}")
    for r in rows:
        c = r["config"]
        tile = f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages} g{c.group_m}"
        if r["us"] is None:
            print(f"{r['kernel']:12s} {tile:28s} failed: {r['error']}")
            continue
        mark = "  <- heuristic" if r["picked"] else ""
        ratio = r["us"] / r["floor_us"]
        print(
            f"{r['kernel']:12s} {tile:28s} {r['us']:9.1f} us  model {r['estimate_us']:7.1f} us  "
            f"floor {r['floor_us']:7.1f} us  x{ratio:4.2f}{mark}"
        )


if __name__ == "__main__":
    main()
