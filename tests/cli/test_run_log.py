"""Run records: TensorBoard events next to log.csv with the same numbers; train and val loss comparable."""

from __future__ import annotations

import csv

import pytest

from .conftest import quick_train


def test_tensorboard_events_next_to_the_csv(synth_root, small_list, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    quick_train(synth_root, small_list, tmp_path, "--epochs", "2", "--batch_size", "8", "--tensorboard")
    assert list(tmp_path.glob("events.out.tfevents.*")) and (tmp_path / "log.csv").is_file()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    for tag, column in [("loss/train", "train_loss"), ("loss/val", "val_loss"), ("loss/val_nll", "val_nll"),
                        ("top1/val", "val_top1"), ("lr", "lr")]:  # fmt: skip
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([float(r[column]) for r in rows], rel=1e-6)
    text = events.Tensors("loss terms/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "label smoothing 0.1" in text


@pytest.mark.parametrize("smoothing", ["0.1", "0"])
def test_val_loss_uses_the_training_smoothing(synth_root, small_list, tmp_path, smoothing):
    summary = quick_train(synth_root, small_list, tmp_path, "--epochs", "1", "--batch_size", "8",
                          "--label_smoothing", smoothing)  # fmt: skip
    row = summary["history"][0]
    if smoothing == "0":
        assert row["val_loss"] == pytest.approx(row["val_nll"])
    else:  # smoothing adds 0.1 x (mean -log p over classes - nll): larger near chance
        assert row["val_loss"] != pytest.approx(row["val_nll"])
