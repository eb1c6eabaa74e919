"""Training throughput with 1 and 2 processes on this machine, measured side by side in one run.

    python -m lsvit.bench.train_scaling [--rounds 2] [--epochs 3] [--per_class 32]

Runs ``lsvit train`` end to end (decoding in the training process, ``--num_workers 0``) on a synthetic dataset
without a validation split, so an epoch's ``epoch_seconds`` is training only: one process with 1 and with 2 torch
threads, and ``torchrun --standalone --nproc_per_node 2`` (1 thread each) with DDP and with ``--fsdp``; always the
same global batch, so every configuration takes the same optimizer steps. The configurations alternate within
each round so machine load hits them alike. The first epoch (start-up, first-touch allocation) is left out;
samples/s = clips / seconds of the other epochs, step time = seconds / optimizer steps. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lsvit.bench.machine import load_average
from lsvit.synth import make_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
# The docs' synthetic model: 64x64 clips, patch 8, embed 96, depth 4, 4 heads, T=8, 3D tubelet 2.
MODEL = [
    "--image_size", "64", "--patch_size", "8", "--embed_dim", "96", "--depth", "4", "--num_heads", "4",
    "--num_frames", "8", "--use_3d_patch_embed", "--tubelet_size", "2", "--drop_path_rate", "0",
]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def configurations(global_batch: int) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (launcher, extra flags)."""
    one = [sys.executable]
    half = str(global_batch // 2)
    return {
        "1 process, 1 thread": (one, ["--threads", "1", "--batch_size", str(global_batch)]),
        "1 process, 2 threads": (one, ["--threads", "2", "--batch_size", str(global_batch)]),
        "2 processes DDP, 1 thread each": (TORCHRUN, ["--threads", "1", "--batch_size", half]),
        "2 processes FSDP, 1 thread each": (TORCHRUN, ["--threads", "1", "--batch_size", half, "--fsdp"]),
    }


def run_once(
    launcher: list[str], extra: list[str], root: Path, out: Path, epochs: int
) -> tuple[float, int, int, float]:
    """(seconds, clips, optimizer steps) of epochs 2..E of one training run, and the CPU seconds of the whole run
    (every process, start-up and first epoch included)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [*launcher, "-m", "lsvit.train", "--data_root", str(root), "--output_dir", str(out), *MODEL,
               "--epochs", str(epochs), "--num_workers", "0", "--no_progress", "--seed", "0", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    history = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["history"]
    timed = history[1:]
    steps = history[-1]["step"] - history[0]["step"]
    return sum(row["epoch_seconds"] for row in timed), sum(row["train_clips"] for row in timed), steps, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is not timed")
    parser.add_argument("--per_class", type=int, default=32, help="training videos per class (4 classes)")
    parser.add_argument("--global_batch", type=int, default=16)
    args = parser.parse_args()
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first epoch is not timed)")

    with tempfile.TemporaryDirectory(prefix="lsvit-scaling-") as scratch:
        root = Path(scratch) / "data"
        classes = ("left", "up", "grow", "rotate_cw")
        make_dataset(root, classes=classes, train_per_class=args.per_class, val_per_class=1, size=64, frames=16,
                     seed=0, progress=False)  # fmt: skip
        (root / "val.txt").unlink()  # no validation split: epoch_seconds is training only
        shutil.rmtree(root / "val", ignore_errors=True)
        configs = configurations(args.global_batch)
        samples: dict[str, list[tuple[float, int, int, float]]] = {name: [] for name in configs}
        load_before = load_average()
        for round_index in range(args.rounds):
            for name, (launcher, extra) in configs.items():
                result = run_once(launcher, extra, root, Path(scratch) / "run", args.epochs)
                samples[name].append(result)
                print(f"round {round_index + 1}: {name}: {result[1] / result[0]:.1f} samples/s", file=sys.stderr)
        load_after = load_average()

    base = None
    print(f"{args.per_class * 4} clips, global batch {args.global_batch}, {args.epochs} epochs per run (first not "
          f"timed), {args.rounds} rounds; load average {load_before:.1f} before, {load_after:.1f} after\n")  # fmt: skip
    print("| configuration | samples/s (median) | step ms (median) | samples/s, every round | vs 1 process, 1 thread "
          "| CPU s per run, all processes (median) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, results in samples.items():
        rates = [clips / seconds for seconds, clips, _, _ in results]
        steps_ms = [1000 * seconds / steps for seconds, _, steps, _ in results]
        rate = statistics.median(rates)
        base = base or rate
        print(f"| {name} | {rate:.1f} | {statistics.median(steps_ms):.0f} | {', '.join(f'{r:.1f}' for r in rates)} "
              f"| {rate / base:.2f}x | {statistics.median(r[3] for r in results):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
