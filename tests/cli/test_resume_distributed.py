"""Checkpoints: SIGKILL mid-epoch + --resume ends bit-identical; 2-process torchrun (gloo) == 1 process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lsvit.checkpoint import load_checkpoint

from .conftest import REPO_ROOT, TINY_MODEL, run_module
from .torchrun import TORCHRUN, assert_same_training

# Small and quick: 4-frame 3D clips, 48 training videos per class subset through a list, 2 epochs.
RUN_FLAGS = [
    *TINY_MODEL, "--num_frames", "4", "--use_3d_patch_embed", "--tubelet_size", "2", "--epochs", "2",
    "--num_workers", "0", "--threads", "1", "--no_progress", "--lr", "1e-3", "--warmup_epochs", "0.5",
]  # fmt: skip


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _train_args(synth_root, small_list, out, *extra):
    return [
        "--data_root",
        str(synth_root),
        "--train_list",
        str(small_list),
        "--output_dir",
        str(out),
        *RUN_FLAGS,
        *extra,
    ]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(synth_root, small_list, tmp_path):
    flags = ["--batch_size", "4", "--save_every_steps", "1", "--seed", "7"]
    reference = run_module("lsvit.train", *_train_args(synth_root, small_list, tmp_path / "ref", *flags))
    assert reference.returncode == 0, reference.stdout + reference.stderr

    # Same run, killed with SIGKILL once a mid-epoch checkpoint of the second epoch exists.
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "lsvit.train", *_train_args(synth_root, small_list, out, *flags)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed_at = None
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if line.startswith("checkpoint") and "epoch=1 " in line and "batches_done=0" not in line:
            batches_done = int(line.split("batches_done=")[1].split()[0])
            if batches_done >= 3:
                process.send_signal(signal.SIGKILL)
                killed_at = line.strip()
                break
        assert time.monotonic() < deadline, "training never reached the second epoch"
    process.wait(timeout=30)
    assert killed_at is not None and process.returncode == -signal.SIGKILL
    partial = load_checkpoint(out / "last.pt")
    assert partial["epoch"] == 1 and 0 < partial["sampler"]["batches_done"] < 8
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # atomic writes leave no debris

    resumed = run_module("lsvit.train", *_train_args(synth_root, small_list, out, *flags, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout

    final, expected = load_checkpoint(out / "last.pt"), load_checkpoint(tmp_path / "ref" / "last.pt")
    assert final["step"] == expected["step"] == 16
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), f"{name} differs after resume"
    assert final["history"] == [
        {**row, "epoch_seconds": final["history"][i]["epoch_seconds"]} for i, row in enumerate(expected["history"])
    ]
    states = zip(final["optimizer"]["state"].values(), expected["optimizer"]["state"].values(), strict=True)
    for state, expected_state in states:
        assert torch.equal(state["exp_avg"], expected_state["exp_avg"])


def test_torchrun_two_processes_match_one_process(synth_root, small_list, tmp_path, one_process_run):
    launcher = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "lsvit.train"]
    double = run_module(
        "lsvit.train",
        *_train_args(synth_root, small_list, tmp_path / "two", "--batch_size", "4", "--seed", "3"),
        launcher=launcher,
        timeout=180,
    )
    assert double.returncode == 0, double.stdout + double.stderr
    one, two = load_checkpoint(one_process_run / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert two["world_size"] == 2 and len(two["rng"]) == 2 and one["step"] == two["step"] == 8
    assert_same_training(two, one)
