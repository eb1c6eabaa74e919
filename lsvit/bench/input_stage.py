"""LSViT's input stage, current path vs fused, eager and under torch.compile, in one run.

``unfused``: SMIF's PyTorch passes (neighbour differences, threshold, channel matmul, gate, signed differences),
``cat`` into a (B, T, 2C, H, W) clip and the patch-embedding op (``LSViTForAction.fused_input_stage = False``).
``fused``: ``lsvit_kernels.smif_patch_embed``, the model's default. Each is timed

- ``input stage``: ``model.tokens(clip)`` (eval, no grad), float clip; ``fused uint8``: the uint8 clip with
  mean/std, normalized inside the op (the unfused path must first normalize it into a float copy, as
  ``lsvit.data.to_model_input`` does: its uint8 row includes that pass);
- ``forward``: the whole model (eval, no grad);
- ``input stage train``: ``model.tokens(clip)`` forward and backward (train mode, gradients to every parameter of
  the stage, none to the clip, as in training): the only part of a training step that differs between the paths;
- ``train step``: forward, cross-entropy, backward, AdamW step;

eager and compiled (``torch.compile(model.tokens)`` / ``torch.compile(model)``, default inductor backend; the
first calls compile and are not timed). CPU: one clip of 16 frames at 224 px, E=384, depth 4 (the shape the input
stage was measured on before it was fused); GPU: 8 clips, ViT-B width, bf16.

    python -m lsvit.bench.input_stage [--threads 2] [--repeats 7] [--no-compile] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F

from .harness import TimingConfig, summarize, time_calls

CPU_CONFIG = {"image_size": 224, "embed_dim": 384, "depth": 4, "num_heads": 6, "num_classes": 400}
GPU_CONFIG = {"image_size": 224, "embed_dim": 768, "depth": 12, "num_heads": 12, "num_classes": 400}
QUICK_CONFIG = {"image_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 10}
VARIANTS = (("2D", {"use_3d_patch_embed": False}), ("3D t=2", {"use_3d_patch_embed": True, "tubelet_size": 2}))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _model(base: dict, extra: dict, frames: int, device: torch.device, fused: bool):
    from lsvit.config import ModelConfig
    from lsvit.model import LSViTForAction

    torch.manual_seed(0)
    model = LSViTForAction(ModelConfig(**base, num_frames=frames, drop_path_rate=0.0, **extra), num_frames=frames)
    model.fused_input_stage = fused
    return model.to(device)


def _time(step, device: torch.device, cfg: TimingConfig) -> dict:
    try:
        samples = time_calls(lambda i: step(), 1, device, cfg)
        return {"status": "ok", **summarize(samples)}
    except Exception as exc:  # noqa: BLE001  (a failed row is reported, the run goes on)
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(3)}


def _rows_for(base, extra, frames, batch, device, dtype, compiled: bool, cfg: TimingConfig, report) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    size = base["image_size"]
    pixels = torch.randint(0, 256, (batch, frames, 3, size, size), generator=gen, dtype=torch.uint8).to(device)
    shape = (1, 1, 3, 1, 1)
    mean, std = (torch.tensor(v, device=device).view(shape) for v in (MEAN, STD))
    clip = ((pixels.float() / 255 - mean) / std).to(dtype)
    labels = torch.randint(0, base["num_classes"], (batch,), generator=gen).to(device)
    rows = []
    for path in ("unfused", "fused"):
        model = _model(base, extra, frames, device, fused=path == "fused").to(dtype)
        tokens = torch.compile(model.tokens) if compiled else model.tokens
        forward = torch.compile(model) if compiled else model
        mode = "compiled" if compiled else "eager"

        def uint8_tokens(tokens=tokens, path=path):
            if path == "fused":
                return tokens(pixels, MEAN, STD)
            return tokens(((pixels.float() / 255 - mean) / std).to(dtype))  # to_model_input's pass first

        model.eval()
        timed = {
            "input stage": lambda tokens=tokens: tokens(clip),
            "input stage uint8": uint8_tokens,
            "forward": lambda forward=forward: forward(clip),
        }
        with torch.no_grad():
            for item, step in timed.items():
                rows.append(report({"item": item, "path": path, "mode": mode, **_time(step, device, cfg)}))
        model.train()

        def stage_train_step(tokens=tokens, model=model):
            model.zero_grad(set_to_none=True)
            tokens(clip).float().sum().backward()

        rows.append(
            report({"item": "input stage train", "path": path, "mode": mode, **_time(stage_train_step, device, cfg)})
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train_model = torch.compile(model) if compiled else model

        def train_step(train_model=train_model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(train_model(clip).float(), labels).backward()
            optimizer.step()

        rows.append(report({"item": "train step", "path": path, "mode": mode, **_time(train_step, device, cfg)}))
    return rows


def measure_input_stage(
    device: torch.device,
    quick: bool = False,
    compile_on: bool = True,
    cfg: Optional[TimingConfig] = None,
    progress: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Rows of (variant, item, path, mode) medians; see the module docstring. ``progress`` sees each row."""
    base = QUICK_CONFIG if quick else (GPU_CONFIG if device.type == "cuda" else CPU_CONFIG)
    frames = 4 if quick else 16
    batch = 8 if device.type == "cuda" and not quick else 1
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = cfg or TimingConfig(warmup=2, repeats=7, budget_s=6.0, measure_memory=False)
    result = {
        "config": {**base, "num_frames": frames},
        "batch": batch,
        "dtype": str(dtype).replace("torch.", ""),
        "compiled": compile_on,
        "rows": [],
    }
    for variant, extra in VARIANTS:

        def report(row, variant=variant):
            row = {"variant": variant, **row}
            if progress is not None:
                progress(row)
            return row

        for compiled in (False, True) if compile_on else (False,):
            result["rows"] += _rows_for(base, extra, frames, batch, device, dtype, compiled, cfg, report)
    return result


def _ms(row: Optional[dict]) -> str:
    return f"{row['median_ms']:.1f}" if row and row.get("status") == "ok" else "-"


def input_stage_lines(results: dict) -> list[str]:
    """Markdown: per variant and item, the four medians and the fused speedups over eager and compiled unfused."""
    stage = results.get("input_stage")
    if not stage:
        return ["Not measured in this run."]
    cfg = stage["config"]
    lines = [
        f"LSViTForAction, batch {stage['batch']}, {stage['dtype']}, {cfg['num_frames']} frames of "
        f"{cfg['image_size']} px, E={cfg['embed_dim']}, depth {cfg['depth']}: median ms; *unfused* = SMIF in "
        "PyTorch + cat + patch op, *fused* = `smif_patch_embed` (lsvit/bench/input_stage.py).",
        "",
    ]
    index = {(r["variant"], r["item"], r["path"], r["mode"]): r for r in stage["rows"]}
    header = ["variant", "item", "unfused eager", "unfused compiled", "fused eager", "fused compiled"]
    header += ["fused eager vs unfused eager", "fused eager vs unfused compiled"]
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in stage["rows"]):
        for item in dict.fromkeys(r["item"] for r in stage["rows"]):
            cells = [index.get((variant, item, p, m)) for p in ("unfused", "fused") for m in ("eager", "compiled")]
            fused_eager = cells[2]

            def ratio(base, fused_eager=fused_eager):
                ok = base and fused_eager and base.get("status") == "ok" and fused_eager.get("status") == "ok"
                return f"{base['median_ms'] / fused_eager['median_ms']:.2f}x" if ok else "-"

            rows.append([variant, item, *(_ms(c) for c in cells), ratio(cells[0]), ratio(cells[1])])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + table + ["| " + " | ".join(r) + " |" for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (compiled: the first compiles)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the JSON rows after the table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TimingConfig(warmup=args.warmup, repeats=args.repeats, budget_s=60.0, measure_memory=False)

    def progress(row):
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), file=sys.stderr, flush=True)

    result = measure_input_stage(torch.device(args.device), args.quick, not args.no_compile, cfg, progress)
    print("\n".join(input_stage_lines({"input_stage": result})))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
