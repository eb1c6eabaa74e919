"""CI-size acceptance: motion needs several frames. T=8 learns it, 2D and 3D; one frame stays near chance."""

from __future__ import annotations

import csv

import pytest
import torch

from lsvit import train

from .conftest import CI_CLASSES, EPOCHS, TRAIN_FLAGS


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_3d_tubelet2_learns_motion(trained_3d):
    out, summary = trained_3d
    best = summary["best_metric"]
    assert best >= 0.9, f"validation top-1 {best:.3f} < 0.9 on {len(CI_CLASSES)} motion classes"
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert len(rows) == EPOCHS and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()


def test_2d_learns_motion(synth_root, tmp_path, restore_threads):
    summary = train.run(
        ["--data_root", str(synth_root), "--output_dir", str(tmp_path), "--num_frames", "8", *TRAIN_FLAGS]
    )
    best = summary["best_metric"]
    assert best >= 0.9, f"2D validation top-1 {best:.3f} < 0.9 on {len(CI_CLASSES)} motion classes"


def test_single_frame_stays_near_chance(synth_root, tmp_path, restore_threads):
    summary = train.run(
        ["--data_root", str(synth_root), "--output_dir", str(tmp_path), "--num_frames", "1", *TRAIN_FLAGS]
    )
    final = summary["history"][-1]["val_top1"]
    chance = 1 / len(CI_CLASSES)
    assert final <= chance + 0.2, f"one frame reached {final:.3f} (chance {chance:.2f}): single frames leak the class"
