"""No silent empty or wrong runs: training and inference stop with one clear line when the data gives nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lsvit import infer, train
from lsvit.errors import DataError
from lsvit.synth import make_dataset, render_video, write_mp4

from .conftest import TINY_MODEL, run_module

FAST = [*TINY_MODEL, "--epochs", "1", "--batch_size", "4", "--num_workers", "0", "--threads", "1", "--no_progress"]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """2 classes x (4 train + 2 val) videos of 12 frames, 32x32."""
    root = tmp_path_factory.mktemp("small")
    return make_dataset(root, classes=("left", "up"), train_per_class=4, val_per_class=2, size=32, frames=12,
                        progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def small_checkpoint(small_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small_run")
    threads = torch.get_num_threads()
    try:
        train.run(["--data_root", str(small_root), "--output_dir", str(out), "--num_frames", "4", *FAST])
    finally:
        torch.set_num_threads(threads)
    return out / "last.pt"


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def short_video(path: Path, frames: int = 3) -> None:
    write_mp4(path, render_video("left", np.random.default_rng(0), 32, frames))


def no_checkpoint(out: Path) -> bool:
    return not list(out.glob("*.pt"))


def test_every_video_too_short_stops_before_training(tmp_path):
    root = make_dataset(tmp_path / "d", classes=("left", "up"), train_per_class=3, val_per_class=1, size=32, frames=3,
                        progress=False)  # fmt: skip
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"no usable training video among the 6 probed of 6 \(6 too short"):
        train.run(["--data_root", str(root), "--output_dir", str(out), "--num_frames", "8", *FAST])
    assert no_checkpoint(out)
    # The command line: exit status 2, one line, no traceback.
    result = run_module("lsvit.cli", "train", "--data_root", str(root), "--output_dir", str(out),
                        "--num_frames", "8", *FAST)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no usable training video") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert no_checkpoint(out)


def test_too_many_skips_in_an_epoch_stop_without_a_checkpoint(small_root, tmp_path):
    root = copy_tree(small_root, tmp_path / "d")
    for name in ("left", "up"):
        short_video(root / "train" / name / "short.mp4")
    (root / "train.txt").unlink()  # class folders, so the short videos are listed
    (root / "val.txt").unlink()
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"2 of 10 training videos in epoch 1 \(20.0%\) were skipped.*2 too short"):
        train.run(["--data_root", str(root), "--output_dir", str(out), "--num_frames", "4", *FAST])
    assert no_checkpoint(out)
    summary = train.run(["--data_root", str(root), "--output_dir", str(out), "--num_frames", "4",
                         "--max_skip_fraction", "0.25", *FAST])  # fmt: skip
    assert summary["history"][0]["train_skipped"] == 2 and (out / "last.pt").is_file()


def test_missing_paths_and_fifos_are_counted_before_training(small_root, tmp_path):
    lines = (small_root / "train.txt").read_text().splitlines()
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    listing = tmp_path / "train.txt"
    listing.write_text("\n".join([*lines, f"{fifo} 0", "nowhere/missing.mp4 1"]) + "\n")
    args = ["--data_root", str(small_root), "--train_list", str(listing), "--output_dir", str(tmp_path / "run"),
            "--num_frames", "4", *FAST]  # fmt: skip
    with pytest.raises(DataError, match=r"2 of 10 training videos \(20.0%\) are missing or not regular.*a FIFO"):
        train.run(args)
    summary = train.run([*args, "--max_skip_fraction", "0.3"])  # the FIFO is skipped, never opened
    assert "not a regular file: a FIFO (never opened)" in summary["skipped"][str(fifo)]
    wrong_root = tmp_path / "list_only.txt"
    wrong_root.write_text("a/x.mp4 0\nb/y.mp4 1\n")
    with pytest.raises(DataError, match="all 2 listed paths are missing"):
        train.run(["--data_root", str(tmp_path), "--train_list", str(wrong_root), *args[4:]])


def test_no_optimizer_step_when_every_clip_failed(small_root, tmp_path, monkeypatch):
    args = train.build_parser().parse_args(
        ["--data_root", str(small_root), "--output_dir", str(tmp_path), "--num_frames", "4", *FAST, "--model_ema"]
    )
    trainer = train.Trainer(args)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    ema_before = {name: p.detach().clone() for name, p in trainer.ema.module.named_parameters()}

    def fail(index):
        return {"video": None, "label": 0, "index": index, "path": f"v{index}", "error": "corrupt: x", "partial": None}

    monkeypatch.setattr(type(trainer.data.train_set), "__getitem__", lambda self, index: fail(index))
    row = trainer.train_epoch(0)
    assert row["train_clips"] == 0 and row["train_skipped"] == 8
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param, before[name]), name  # weight decay did not move anything
    for name, param in trainer.ema.module.named_parameters():
        assert torch.equal(param, ema_before[name]), name  # nor the EMA
    with pytest.raises(DataError, match="no usable training video in epoch 1: all 8 were skipped"):
        trainer.run()
    assert no_checkpoint(tmp_path)


def test_infer_that_scores_nothing_fails(small_checkpoint, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"not a video" * 10)
    short_video(folder / "b.mp4", frames=2)
    result = run_module("lsvit.cli", "infer", "--checkpoint", str(small_checkpoint), "--data_root", str(folder),
                        "--output_dir", str(tmp_path / "out"), "--num_workers", "0", "--no_progress")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: scored 0 of 2 videos: every one was skipped")
    assert "Traceback" not in result.stderr


def test_infer_single_video_labels_and_split_folders(small_checkpoint, small_root, tmp_path):
    video = next((small_root / "val" / "up").glob("*.mp4"))
    common = ["--checkpoint", str(small_checkpoint), "--num_workers", "0", "--no_progress"]
    metrics = infer.run([*common, "--data_root", str(video), "--output_dir", str(tmp_path / "one")])
    assert metrics["videos"] == 1 and metrics["scored"] == 1 and metrics["labeled"] == 0
    listing = tmp_path / "labels.txt"
    listing.write_text(f"{video} 1\n{video} 5\n")
    with pytest.raises(DataError, match=r"1 videos in .* labels outside the checkpoint's 2 classes \(0..1\)"):
        infer.run([*common, "--data_root", str(listing), "--output_dir", str(tmp_path / "l")])
    with pytest.raises(DataError, match=r"is a list dataset with splits: choose one with --split val"):
        infer.run([*common, "--data_root", str(small_root), "--output_dir", str(tmp_path / "s")])
    folders = tmp_path / "folders"
    for split in ("train", "val"):
        shutil.copytree(small_root / split, folders / split)
    with pytest.raises(DataError, match=r"\(train, val\) look like dataset splits, not classes.*--split val"):
        infer.run([*common, "--data_root", str(folders), "--output_dir", str(tmp_path / "s")])
    metrics = infer.run([*common, "--data_root", str(folders), "--split", "val", "--output_dir", str(tmp_path / "v")])
    assert metrics["scored"] == 4 and metrics["labeled"] == 4


def test_split_folders_are_splits_never_classes(small_root, tmp_path):
    named = tmp_path / "named"
    shutil.copytree(small_root / "train", named / "training")
    shutil.copytree(small_root / "val", named / "validation")
    summary = train.run(["--data_root", str(named), "--output_dir", str(tmp_path / "r1"), "--num_frames", "4", *FAST])
    assert summary["history"][0]["val_clips"] == 4  # training/ and validation/ are the splits
    sized = tmp_path / "sized"
    shutil.copytree(small_root / "train", sized / "train_256")
    shutil.copytree(small_root / "val", sized / "val_256")
    with pytest.raises(DataError, match=r"\(train_256, val_256\) look like dataset splits, not classes"):
        train.run(["--data_root", str(sized), "--output_dir", str(tmp_path / "r2"), "--num_frames", "4", *FAST])
    assert no_checkpoint(tmp_path / "r2")
