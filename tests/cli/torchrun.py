"""Helpers for tests that launch torchrun: a free port, launches that cannot hang, and the comparison of a
multi-process run with the one-process run of the same global batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from .conftest import QUICK_FLAGS, REPO_ROOT

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def train_command(synth_root: Path, small_list: Path, out: Path, *extra: str) -> list[str]:
    """``-m lsvit.train`` with the quick flags, 2 epochs, batch 4 per process, seed 3 (the two-process runs)."""
    return [
        "-m", "lsvit.train", "--data_root", str(synth_root), "--train_list", str(small_list), "--output_dir",
        str(out), *QUICK_FLAGS, "--epochs", "2", "--batch_size", "4", "--seed", "3", *extra,
    ]  # fmt: skip


def run_two_nodes(synth_root: Path, small_list: Path, out: Path) -> list[str]:
    """Two torchrun launches of one process each ("nodes" 0 and 1), joined by a c10d rendezvous on localhost;
    returns their outputs."""
    endpoint = f"127.0.0.1:{free_port()}"
    launches = [
        start(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                endpoint,
                "--rdzv_id",
                "two-nodes-test",
                "--max_restarts",
                "0",
                *train_command(synth_root, small_list, out),
            ]
        )  # fmt: skip
        for node in (0, 1)
    ]
    outputs = finish(launches, timeout=180)
    for launch, output in zip(launches, outputs, strict=True):
        assert launch.returncode == 0, output
    return outputs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: Sequence[str]) -> subprocess.Popen:
    """A launch in its own process group (so a stuck one is killed with all its workers), output merged."""
    return subprocess.Popen(
        list(command), cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def finish(processes: Sequence[subprocess.Popen], timeout: float) -> list[str]:
    """Wait for every launch; after ``timeout`` seconds kill them all and fail. Returns each one's output."""
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for process in processes:
            try:
                out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"torchrun launch still running after {timeout:.0f} s: {' '.join(process.args)}")
            outputs.append(out)
    finally:
        for process in processes:
            stop(process)
    return outputs


def assert_same_training(got: dict, expected: dict, rtol: float = 1e-4, atol: float = 1e-4) -> None:
    """The same optimizer steps over the same clips as ``expected``, up to float rounding amplified by Adam."""
    assert got["step"] == expected["step"]
    for name, tensor in expected["model"].items():
        value = got["model"][name]
        if name.endswith("attn.qkv.bias"):
            # The key bias has a true gradient of exactly zero (softmax ignores a shift shared by all keys), so
            # its gradient is float rounding, which differs with the reduction order, and Adam scales that noise
            # up to a full lr-sized step. Compare the query and value biases only.
            e = tensor.shape[0] // 3
            value, tensor = torch.cat([value[:e], value[2 * e :]]), torch.cat([tensor[:e], tensor[2 * e :]])
        # Adam divides every gradient by its own running scale, so a rounding difference in a small gradient
        # becomes a difference of a fraction of one lr-sized step (1e-3 here); how large a fraction depends on the
        # CPU's GEMM kernels. Other samples or a missed all-reduce move weights by whole steps.
        torch.testing.assert_close(value, tensor, rtol=rtol, atol=atol, msg=f"{name} differs")
    # The per-epoch numbers are reduced over all ranks: the same as one process up to float rounding.
    for row_got, row_expected in zip(got["history"], expected["history"], strict=True):
        assert row_got["train_loss"] == pytest.approx(row_expected["train_loss"], rel=1e-4)
        assert row_got["val_top1"] == pytest.approx(row_expected["val_top1"])
