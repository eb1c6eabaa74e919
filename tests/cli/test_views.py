"""Multi-view testing: uniform temporal clips x spatial crops, softmax averaged per video, in infer and validation."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lsvit import infer
from lsvit.checkpoint import load_checkpoint
from lsvit.config import ModelConfig
from lsvit.data import ClipTransform, VideoRecord, discover, segment_indices, to_model_input
from lsvit.model import LSViTForAction
from lsvit.views import MultiViewDataset, clip_indices, three_crops

from .conftest import CI_CLASSES, quick_train
from .videos import read_index, write_corrupt_tail, write_index_video


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 6))
def test_clips_tile_the_segments(num_frames, extra, num_clips):
    available = num_frames + extra - 1
    clips = [clip_indices(available, num_frames, k, num_clips) for k in range(num_clips)]
    assert clip_indices(available, num_frames, 0, 1) == segment_indices(available, num_frames, None)
    for indices in clips:
        assert len(indices) == num_frames and all(0 <= i < available for i in indices)
        assert indices == sorted(indices)
    for earlier, later in zip(clips, clips[1:]):  # later clips sit later inside every segment
        assert all(a <= b for a, b in zip(earlier, later, strict=True))


@pytest.mark.parametrize("height, width", [(32, 57), (57, 32), (32, 32)])
def test_three_crops_cover_the_frame(height, width):
    frame = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    crops = three_crops(frame, 32)
    assert all(crop.shape[-2:] == (32, 32) for crop in crops)
    covered = torch.cat([crop.flatten() for crop in crops]).unique()
    assert covered.numel() == height * width  # start, centre and end together see every pixel


def test_infer_averages_softmax_over_clips_and_crops(trained_3d, synth_root, tmp_path):
    out, _ = trained_3d
    metrics = infer.run(
        ["--checkpoint", str(out / "best.pt"), "--data_root", str(synth_root), "--split", "val", "--num_clips", "2",
         "--num_crops", "3", "--batch_size", "12", "--output_dir", str(tmp_path), "--num_workers", "0",
         "--no_progress"]
    )  # fmt: skip
    total = 12 * len(CI_CLASSES)
    assert metrics["views"] == {"clips": 2, "crops": 3, "per_video": 6}
    assert metrics["scored"] == total and metrics["top1"] > 0.5
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    ids = [row["video_id"] for row in rows]
    assert len(set(ids)) == total and ids[0].startswith("val/") and not ids[0].endswith(".mp4")

    # The first video by hand: 6 views through the model, softmax, mean.
    checkpoint = load_checkpoint(out / "best.pt")
    model = LSViTForAction(ModelConfig.from_checkpoint_dict(checkpoint["model_config"])).eval()
    model.load_state_dict(checkpoint["model"])
    records, _ = discover(synth_root / "val.txt", root=synth_root)
    data = checkpoint["data"]
    transform = ClipTransform(data["image_size"], data["resize_size"], train=False)
    views = MultiViewDataset(records[:1], checkpoint["classes"], 8, transform, 2, 3)[0]["video"]
    assert views.shape == (6, 8, 3, 32, 32) and views.dtype == torch.uint8  # normalized on the device
    with torch.no_grad():
        expected = model(to_model_input(views, torch.device("cpu"))).softmax(dim=1).mean(dim=0)
    first = json.loads((tmp_path / "predictions.json").read_text())["predictions"][0]
    assert first["topk"][0]["prob"] == pytest.approx(float(expected.max()), abs=1e-5)
    assert first["pred"] == int(expected.argmax())


def test_validation_can_use_several_views(synth_root, small_list, tmp_path):
    summary = quick_train(synth_root, small_list, tmp_path, "--epochs", "1", "--batch_size", "8",
                          "--val_num_clips", "2", "--val_num_crops", "3")  # fmt: skip
    row = summary["history"][0]
    assert row["val_views"] == 6 and 0 <= row["val_top1"] <= 1 and row["val_nll"] > 0


def test_views_are_the_chosen_frames_in_uint8_and_partial_videos_are_marked(tmp_path):
    video = write_index_video(tmp_path / "index.mp4", frames=40, height=48, width=96)
    tail = write_corrupt_tail(tmp_path / "tail.mp4", frames=24, good=15)
    records = [VideoRecord(video, 0), VideoRecord(tail, 1)]
    transform = ClipTransform(48, 55, train=False)
    dataset = MultiViewDataset(records, ["a", "b"], 4, transform, num_clips=2, num_crops=3, decoder="pyav")
    item = dataset[0]
    views = item["video"]
    assert views.dtype == torch.uint8 and views.shape == (6, 4, 3, 48, 48) and item["partial"] is None
    for clip in range(2):  # clip-major: crops start / centre / end; start + end side by side are the whole frame
        start, end = views[3 * clip], views[3 * clip + 2]
        frames = torch.cat([start, end], dim=-1).permute(0, 2, 3, 1).numpy()
        assert [read_index(frame) for frame in frames] == clip_indices(40, 4, clip, 2)
    partial = dataset[1]
    assert partial["error"] is None and partial["partial"] == "partial: 15 of 24 frames decode"
    assert partial["video"].shape == (6, 4, 3, 48, 48)
