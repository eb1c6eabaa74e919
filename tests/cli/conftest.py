"""Shared fixtures for the data / train / infer / compare tests: one small synthetic dataset per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsvit import train
from lsvit.synth import make_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]

# Motions a clip's motion energy tells apart (horizontal, vertical, radial, rotational) while a single frame
# cannot: position, size, angle, shape and colours are random per video.
CI_CLASSES = ("left", "up", "grow", "rotate_cw")

# The CI-sized model: 32x32 clips, 8x8 patches, embed 64, depth 2.
TINY_MODEL = [
    "--image_size", "32", "--patch_size", "8", "--embed_dim", "64", "--depth", "2", "--num_heads", "4",
    "--drop_path_rate", "0", "--smif_window", "3",
]  # fmt: skip


# At this size 2D and 3D (tubelet 2) pass 0.9 validation top-1 by epoch 4 (seed 0): 16 epochs leave margin.
EPOCHS = 16
TRAIN_FLAGS = [
    *TINY_MODEL, "--epochs", str(EPOCHS), "--batch_size", "8", "--lr", "2e-3", "--warmup_epochs", "1",
    "--num_workers", "0", "--threads", "1", "--no_progress", "--seed", "0",
]  # fmt: skip


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """4 motion classes, 32x32, 16 frames; train/val folders + lists + dataset.json."""
    root = tmp_path_factory.mktemp("synth")
    return make_dataset(
        root, classes=CI_CLASSES, train_per_class=48, val_per_class=12, size=32, frames=16, seed=0, progress=False
    )


@pytest.fixture(scope="session")
def small_list(synth_root, tmp_path_factory) -> Path:
    """A 32-video training list (8 per class) so each run takes seconds."""
    lines = (synth_root / "train.txt").read_text().splitlines()
    chosen = [line for index, line in enumerate(lines) if index % 48 < 8]
    path = tmp_path_factory.mktemp("lists") / "train_small.txt"
    path.write_text("\n".join(chosen) + "\n")
    return path


# Small and quick: 4-frame 3D clips of the 32-video list.
QUICK_FLAGS = [
    *TINY_MODEL, "--num_frames", "4", "--use_3d_patch_embed", "--tubelet_size", "2",
    "--num_workers", "0", "--threads", "1", "--no_progress", "--lr", "1e-3", "--warmup_epochs", "0.5",
]  # fmt: skip


def quick_train(synth_root: Path, small_list: Path, out: Path, *extra: str) -> dict:
    """Train in this process on the 32-video list (QUICK_FLAGS, then ``extra``); restores torch's thread count."""
    threads = torch.get_num_threads()
    try:
        return train.run(
            ["--data_root", str(synth_root), "--train_list", str(small_list), "--output_dir", str(out),
             *QUICK_FLAGS, *extra]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def run_module(module: str, *args: str, timeout: float = 120, env: dict | None = None, launcher=None):
    """Run ``python -m module args`` (or ``launcher + args``) from the repo root; return the CompletedProcess."""
    command = (launcher or [sys.executable, "-m", module]) + list(args)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def trained_3d(synth_root, tmp_path_factory):
    """A T=8, tubelet-2 model trained on the session dataset; shared with the infer tests."""
    out = tmp_path_factory.mktemp("run_3d")
    threads = torch.get_num_threads()
    try:
        summary = train.run(
            ["--data_root", str(synth_root), "--output_dir", str(out), "--num_frames", "8", "--use_3d_patch_embed",
             "--tubelet_size", "2", *TRAIN_FLAGS]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return out, summary


@pytest.fixture(scope="session")
def one_process_run(synth_root, small_list, tmp_path_factory) -> Path:
    """The 2-epoch quick run with a global batch of 8 in one process (seed 3): what 2 processes of batch 4 reach.
    Returns its output folder."""
    out = tmp_path_factory.mktemp("one_process")
    quick_train(synth_root, small_list, out, "--epochs", "2", "--batch_size", "8", "--seed", "3")
    return out


@pytest.fixture(scope="session")
def two_nodes(synth_root, small_list, tmp_path_factory) -> tuple[Path, list[str]]:
    """The same run as ``one_process_run`` on two localhost torchrun "nodes" of one process each (DDP, batch 4
    per process): its output folder and both launches' output."""
    from .torchrun import run_two_nodes

    out = tmp_path_factory.mktemp("two_nodes")
    return out, run_two_nodes(synth_root, small_list, out)
