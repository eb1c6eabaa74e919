"""Measured forward latency of the LSViT model with 2D patches vs 3D tubelets (``lsvit.model``).

A small configuration on CPU so it fits the suite's time budget (E=192, depth 4, 112 px), the full ViT-B shape
on GPU.
"""

from __future__ import annotations

import traceback
from typing import Optional

import torch

from lsvit.config import ModelConfig
from lsvit.model import LSViTForAction

from .harness import TimingConfig, summarize, time_calls

CPU_CONFIG = {"image_size": 112, "embed_dim": 192, "depth": 4, "num_heads": 3, "num_classes": 400}
GPU_CONFIG = {"image_size": 224, "embed_dim": 768, "depth": 12, "num_heads": 12, "num_classes": 400}
QUICK_CONFIG = {"image_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 10}


def model_variants(num_frames: int) -> list[tuple[str, dict]]:
    return [
        ("2D", {"use_3d_patch_embed": False}),
        ("3D t=2", {"use_3d_patch_embed": True, "tubelet_size": 2}),
        ("3D t=4", {"use_3d_patch_embed": True, "tubelet_size": 4}),
    ]


def measure_model(device: torch.device, quick: bool = False, cfg: Optional[TimingConfig] = None) -> dict:
    """Forward latency (eval, no grad) of 2D vs 3D LSViT on one clip shape."""
    base = QUICK_CONFIG if quick else (GPU_CONFIG if device.type == "cuda" else CPU_CONFIG)
    frames = 4 if quick else 16
    batch = 1 if device.type == "cpu" else 8
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = cfg or TimingConfig(warmup=1, repeats=5, budget_s=4.0, measure_memory=False)
    result: dict = {
        "config": {**base, "num_frames": frames},
        "batch": batch,
        "dtype": str(dtype).replace("torch.", ""),
        "variants": [],
    }
    video = torch.randn(
        batch, frames, 3, base["image_size"], base["image_size"], generator=torch.Generator().manual_seed(0)
    ).to(device=device, dtype=dtype)
    for name, extra in model_variants(frames):
        if quick and extra.get("tubelet_size", 1) > 2:
            continue
        row: dict = {"variant": name}
        try:
            config = ModelConfig(**base, num_frames=frames, drop_path_rate=0.0, **extra)
            model = LSViTForAction(config, num_frames=frames).to(device=device, dtype=dtype).eval()
            with torch.no_grad():
                logits = model(video)
                row["backend"] = getattr(model, "patch_embed_backend", None)
                row["tokens_per_clip"] = int(
                    (frames // config.tubelet_size if config.use_3d_patch_embed else frames)
                    * (base["image_size"] // config.patch_size) ** 2
                )
                row["logits_shape"] = list(logits.shape)
                samples = time_calls(lambda i, model=model: model(video), 1, device, cfg)
            row.update(status="ok", samples_ms=samples, **summarize(samples))
        except Exception as exc:  # noqa: BLE001
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=3))
        result["variants"].append(row)
    return result
