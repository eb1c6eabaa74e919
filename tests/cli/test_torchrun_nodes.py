"""torchrun beyond one process group on one host: two localhost "nodes" behind a c10d rendezvous equal one
process, and a worker killed with SIGKILL under --max_restarts is restarted and the run ends where an
uninterrupted one does."""

from __future__ import annotations

import os
import signal
import time

import torch

from lsvit.checkpoint import load_checkpoint

from .torchrun import TORCHRUN, assert_same_training, finish, start, stop, train_command


def test_two_nodes_match_one_process(two_nodes, one_process_run):
    out, outputs = two_nodes
    both = "".join(outputs)
    # Every process says where it runs; only global rank 0 writes checkpoints, into the shared folder.
    assert "rank 0/2 on node 0/2" in both and "rank 1/2 on node 1/2" in both, both
    saves = [line for line in both.splitlines() if line.startswith("checkpoint ")]
    assert len(saves) == 2, saves  # one per epoch, not one per node
    two, one = load_checkpoint(out / "last.pt"), load_checkpoint(one_process_run / "last.pt")
    assert two["world_size"] == 2 and len(two["rng"]) == 2 and two["step"] == 8
    assert_same_training(two, one)


def test_worker_killed_under_max_restarts_resumes_to_the_same_weights(synth_root, small_list, tmp_path, two_nodes):
    out = tmp_path / "elastic"
    launch = start([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "--max_restarts", "1", "--monitor_interval",
                    "0.5", *train_command(synth_root, small_list, out, "--save_every_steps", "1")])  # fmt: skip
    lines, victim, killed = [], None, False
    deadline = time.monotonic() + 120
    try:
        for line in launch.stdout:
            lines.append(line)
            if "rank 1/2 on node" in line and victim is None:
                victim = int(line.split("pid ")[1].split(",")[0].rstrip(")"))
            # Kill rank 1 once the second epoch has a mid-epoch checkpoint: the group must restart and resume.
            if line.startswith("checkpoint") and "epoch=1 " in line and "batches_done=2" in line:
                os.kill(victim, signal.SIGKILL)
                killed = True
                break
            assert time.monotonic() < deadline, "training never reached the second epoch"
        assert killed, "".join(lines)
        rest = finish([launch], timeout=150)[0]
    finally:
        stop(launch)
    log = "".join(lines) + rest
    assert launch.returncode == 0, log
    # The restarted group continued from the checkpoint saved just before the kill (or a later one), not step 0.
    assert "torchrun restart 1: continuing from" in log, log
    resumed_step = int(log.split("torchrun restart 1: continuing from")[1].split("(step ")[1].split(")")[0])
    assert resumed_step >= 6, log
    final, expected = load_checkpoint(out / "last.pt"), load_checkpoint(two_nodes[0] / "last.pt")
    assert final["step"] == expected["step"] == 8
    for name, tensor in expected["model"].items():  # the same process count and data order: bit-identical
        assert torch.equal(final["model"][name], tensor), f"{name} differs after the restart"
