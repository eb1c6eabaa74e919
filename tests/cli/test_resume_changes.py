"""--resume with changed flags (applied and printed, or refused), and SIGINT / SIGTERM saving a resumable last.pt."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from lsvit.checkpoint import load_checkpoint
from lsvit.optim import warmup_cosine

from .conftest import QUICK_FLAGS, REPO_ROOT, quick_train, run_module


@pytest.fixture(scope="module")
def two_epochs(synth_root, small_list, tmp_path_factory):
    out = tmp_path_factory.mktemp("changes")
    quick_train(synth_root, small_list, out, "--epochs", "2", "--batch_size", "8", "--seed", "2")
    return out


def _copy(source, target):
    target.mkdir()
    for name in ("last.pt", "best.pt"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_changed_lr_and_epochs_recompute_the_schedule(two_epochs, synth_root, small_list, tmp_path, capsys):
    out = _copy(two_epochs, tmp_path / "more")
    summary = quick_train(synth_root, small_list, out, "--epochs", "4", "--lr", "2e-3", "--batch_size", "8",
                          "--seed", "2", "--resume", "auto")  # fmt: skip
    logged = capsys.readouterr().out
    assert "applied changed flags: epochs 2 -> 4, lr 0.001 -> 0.002" in logged
    assert "lr schedule recomputed from step 8: 16 steps in total" in logged
    # 4 steps per epoch, warmup 0.5 epoch = 2 steps; the lr logged after epoch 3 (step 12) follows the new schedule
    factor = warmup_cosine(16, 2, 1e-6 / 2e-3)
    rows = summary["history"]
    assert [row["step"] for row in rows] == [4, 8, 12, 16]
    assert rows[2]["lr"] == pytest.approx(2e-3 * factor(12), rel=1e-9)
    assert rows[3]["lr"] == pytest.approx(1e-6, rel=1e-6)  # the cosine ends at --min_lr, not below


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "5"], "--seed 5 differs from the checkpoint's 2"),
        (["--layer_decay", "0.75"], "--layer_decay 0.75 differs from the checkpoint's 1.0"),
    ],
)
def test_fixed_flags_are_refused(two_epochs, synth_root, tmp_path, capsys, flags, message):
    from lsvit import cli

    out = _copy(two_epochs, tmp_path / "run")
    argv = ["train", "--data_root", str(synth_root), "--output_dir", str(out), *QUICK_FLAGS, "--epochs", "3",
            "--batch_size", "8", "--seed", "2", "--resume", "auto", *flags]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main(argv)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_batch_size_changes_only_at_an_epoch_boundary(synth_root, small_list, tmp_path, capsys):
    out = tmp_path / "mid"
    quick_train(synth_root, small_list, out, "--epochs", "1", "--batch_size", "8", "--seed", "2",
                "--save_every_steps", "1")  # fmt: skip
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["sampler"]["batches_done"] == 0  # the epoch finished: a boundary
    summary = quick_train(synth_root, small_list, out, "--epochs", "2", "--batch_size", "4", "--seed", "2",
                          "--save_every_steps", "1", "--resume", "auto")  # fmt: skip
    assert "batch_size 8 -> 4" in capsys.readouterr().out and summary["history"][-1]["step"] == 4 + 8
    mid = _copy(out, tmp_path / "mid_copy")
    (mid / "previous.pt").write_bytes((out / "previous.pt").read_bytes())
    payload = load_checkpoint(mid / "previous.pt")
    assert payload["sampler"]["batches_done"] > 0  # a mid-epoch checkpoint of the resumed run
    with pytest.raises(ValueError, match="stopped inside an epoch with --batch_size 4; --batch_size 8 would shift"):
        quick_train(synth_root, small_list, mid, "--epochs", "2", "--batch_size", "8", "--seed", "2",
                    "--resume", str(mid / "previous.pt"))  # fmt: skip


def _interrupt(command, signum, out):
    """Run ``command``; send ``signum`` once a mid-epoch checkpoint of the second epoch is printed."""
    env = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if line.startswith("checkpoint") and "epoch=1 " in line and "batches_done=2" in line:
            process.send_signal(signum)
            break
        assert time.monotonic() < deadline, "training never reached the second epoch"
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_last_and_prints_the_resume_command(synth_root, small_list, tmp_path, signum):
    flags = ["--data_root", str(synth_root), "--train_list", str(small_list), *QUICK_FLAGS, "--epochs", "2",
             "--batch_size", "4", "--seed", "4", "--save_every_steps", "1"]  # fmt: skip
    reference = run_module("lsvit.train", *flags, "--output_dir", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "lsvit.cli", "train", *flags, "--output_dir", str(out)]
    code, stderr = _interrupt(command, signum, out)
    assert code == 128 + signum, stderr
    assert f"{signal.Signals(signum).name} received" in stderr
    stopped = load_checkpoint(out / "last.pt")
    # saved at the step boundary where the signal was seen: the step it interrupted (or the one just saved) finished
    assert stopped["epoch"] == 1 and 2 <= stopped["sampler"]["batches_done"] < 8
    resume_line = stderr.strip().splitlines()[-1].strip()
    assert resume_line.startswith("lsvit train ") and resume_line.endswith(f"--resume {out / 'last.pt'}")

    words = shlex.split(resume_line)
    resumed = run_module("", launcher=[sys.executable, "-m", "lsvit.cli", *words[1:]])
    assert resumed.returncode == 0, resumed.stderr
    final, expected = load_checkpoint(out / "last.pt"), load_checkpoint(tmp_path / "ref" / "last.pt")
    assert final["step"] == expected["step"] == 16
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), f"{name} differs after the interrupted run resumed"
