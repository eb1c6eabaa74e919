"""What the patch-embedding backend is worth inside the model: one LSViT training step and one ViT-B forward.

- ``train``: one optimizer step (forward, cross-entropy, backward, AdamW) of LSViTForAction on a batch of the
  synthetic-set configuration of docs/training.md (16 clips of 16 frames, 64 px, patch 8, E=192, depth 4,
  3 heads, 8 classes, 3D tubelet 2), random pixels;
- ``vitb``: the forward pass `lsvit compare --image_size 224` times for its whole-model rows: LSViTForAction
  with the ViT-B defaults (224 px, patch 16, E=768, depth 12), one clip of 16 frames, 2D and 3D t=2, eval.

Prints one JSON line: per item the median, IQR and minimum wall time in ms, the minimum process CPU time (all
threads), and the patch backend the op picked. The
backend is whatever automatic dispatch picks (``--backend`` forces one), so running this script under two builds
of the compiled library, alternately, measures what a user of each build gets (docs/performance.md):

    python -m lsvit.bench.model_step [--threads 2] [--repeats 5] [--items train,vitb2d,vitb3d]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

TRAIN_CONFIG = {
    "image_size": 64,
    "patch_size": 8,
    "embed_dim": 192,
    "depth": 4,
    "num_heads": 3,
    "num_classes": 8,
    "use_3d_patch_embed": True,
    "tubelet_size": 2,
}
TRAIN_BATCH, FRAMES = 16, 16


def _timed(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    samples, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else (samples[0],) * 3
    # CPU time of all threads: on a machine shared with other jobs it moves far less than the wall time
    return {"median_ms": statistics.median(samples), "iqr_ms": q3 - q1, "min_ms": min(samples), "min_cpu_ms": min(cpu)}


def _model(config: dict, backend: str | None):
    from lsvit.config import ModelConfig
    from lsvit.model import LSViTForAction

    torch.manual_seed(0)
    cfg = ModelConfig(**config, num_frames=FRAMES, drop_path_rate=0.0, kernel_backend=backend)
    return LSViTForAction(cfg, num_frames=FRAMES)


def train_step(backend: str | None, warmup: int, repeats: int) -> dict:
    import lsvit_kernels as lk

    model = _model(TRAIN_CONFIG, backend).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    size = TRAIN_CONFIG["image_size"]
    clips = torch.randn(TRAIN_BATCH, FRAMES, 3, size, size, generator=gen)
    labels = torch.randint(0, TRAIN_CONFIG["num_classes"], (TRAIN_BATCH,), generator=gen)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(clips), labels).backward()
        optimizer.step()

    result = _timed(step, warmup, repeats)
    return {**result, "backend": lk.last_backend()}


def vitb_forward(tubelet: int, backend: str | None, warmup: int, repeats: int) -> dict:
    import lsvit_kernels as lk

    extra = {"use_3d_patch_embed": tubelet > 1, "tubelet_size": max(tubelet, 2)}
    model = _model({"num_classes": 400, **extra}, backend).eval()
    clip = torch.randn(1, FRAMES, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        result = _timed(lambda: model(clip), warmup, repeats)
    return {**result, "backend": lk.last_backend()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per item")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--items", default="train,vitb2d,vitb3d", help="comma-separated: train, vitb2d, vitb3d")
    parser.add_argument("--backend", default=None, help="patch-embedding backend (default: automatic)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"threads": args.threads}
    for item in args.items.split(","):
        if item == "train":
            out[item] = train_step(args.backend, args.warmup, args.repeats)
        elif item in ("vitb2d", "vitb3d"):
            out[item] = vitb_forward(1 if item == "vitb2d" else 2, args.backend, args.warmup, args.repeats)
        else:
            parser.error(f"unknown item {item!r}; use train, vitb2d, vitb3d")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
