"""Cost per training step of each fine-tuning feature, measured side by side in one process.

    python -m lsvit.bench.finetune_costs [--rounds 5] [--steps 10] [--threads 1]

The docs' synthetic model (64x64 clips, patch 8, embed 96, depth 4, 4 heads, T=8, 2D patching, batch 16) on CPU:
median ms per optimizer step over ``rounds`` rounds, the variants interleaved within each round so machine load
hits them alike. Also: ms per clip of the training transforms on a decoded clip, and the checkpoint checksum's
throughput. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from lsvit import LSViTForAction
from lsvit.augment import VideoAugment
from lsvit.checkpoint import payload_digest
from lsvit.config import ModelConfig
from lsvit.data import ClipTransform, decode_frames, frames_to_rgb
from lsvit.finetune import ClipMixup, enable_grad_checkpointing, soft_cross_entropy
from lsvit.optim import param_groups
from lsvit.synth import make_dataset

CONFIG = dict(image_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=4, num_frames=8, smif_window=3,
              drop_path_rate=0.1, num_classes=8)  # fmt: skip


def make_step(variant: str):
    torch.manual_seed(0)
    model = LSViTForAction(ModelConfig(**CONFIG))
    if variant == "grad checkpointing":
        enable_grad_checkpointing(model)
    layer_decay = 0.75 if variant == "layer decay 0.75" else 1.0
    optimizer = torch.optim.AdamW(param_groups(model, 0.05, layer_decay), lr=1e-3)
    ema = None
    if variant == "EMA":
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=0.9999, use_warmup=True)
    flags = SimpleNamespace(mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, label_smoothing=0.1)
    mixup = ClipMixup(flags, 8) if variant == "mixup + cutmix" else None
    video, labels = torch.randn(16, 8, 3, 64, 64), torch.randint(0, 8, (16,))

    def step(count: int = [0]) -> None:
        x, y = video, labels
        if mixup is not None:
            x, targets = mixup(x, y)
            loss = soft_cross_entropy(model(x), targets)
        else:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        count[0] += 1
        if ema is not None:
            ema.update(model, step=count[0])

    return step


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = ["baseline", "mixup + cutmix", "EMA", "layer decay 0.75", "grad checkpointing"]
    steps = {name: make_step(name) for name in variants}
    for step in steps.values():  # warm-up
        step()
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            results[name].append(median_ms(steps[name], args.steps))
    base = statistics.median(results["baseline"])
    print("| training step (batch 16) | ms | vs baseline |\n|---|---|---|")
    for name in variants:
        ms = statistics.median(results[name])
        print(f"| {name} | {ms:.1f} | {100 * (ms / base - 1):+.1f}% |")

    with tempfile.TemporaryDirectory() as folder:
        root = make_dataset(folder, classes=("left",), train_per_class=1, val_per_class=0, size=64, frames=16,
                            seed=0, progress=False)  # fmt: skip
        frames = frames_to_rgb(decode_frames(next((root / "train").rglob("*.mp4")))[:8])
    transforms = {
        "resize + random crop + flip (default)": ClipTransform(64, 74, train=True, horizontal_flip=True),
        "random-resized crop": VideoAugment(64, 74, True, rrc_scale=(0.08, 1.0)),
        "random-resized crop + RandAugment 4 7": VideoAugment(64, 74, True, rrc_scale=(0.08, 1.0), randaugment=(4, 7)),
    }
    print("\n| transform, one 8-frame 64x64 clip | ms per clip |\n|---|---|")
    for name, transform in transforms.items():
        rng = np.random.default_rng(0)
        ms = statistics.median(median_ms(lambda t=transform, r=rng: t(frames, r), 20) for _ in range(args.rounds))
        print(f"| {name} | {ms:.2f} |")

    from timm.models.vision_transformer import VisionTransformer

    vit_b = VisionTransformer(embed_dim=768, depth=12, num_heads=12).state_dict()
    megabytes = sum(t.numel() * t.element_size() for t in vit_b.values()) / 2**20
    ms = median_ms(lambda: payload_digest({"model": vit_b}), 3)
    print(f"\ncheckpoint checksum (SHA-256) of ViT-B/16 weights, {megabytes:.0f} MiB: {ms:.0f} ms "
          f"({megabytes / ms * 1000:.0f} MiB/s)")  # fmt: skip


if __name__ == "__main__":
    main()
