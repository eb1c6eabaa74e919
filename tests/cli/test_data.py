"""Data loading: discovery, TSN sampling, transforms, and skip-and-report for bad videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lsvit.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipTransform,
    SkipLog,
    VideoClipDataset,
    VideoError,
    collate_clips,
    discover,
    read_annotation_list,
    read_metadata,
    segment_indices,
    split_source,
    to_model_input,
)
from lsvit.synth import render_video, write_mp4

from .conftest import CI_CLASSES
from .videos import write_corrupt_tail


@pytest.mark.parametrize("available, frames", [(16, 8), (17, 8), (9, 8), (8, 8), (50, 3), (5, 1)])
def test_segment_indices_train_one_per_segment(available, frames):
    rng = np.random.default_rng(0)
    segment = available / frames
    for _ in range(20):
        chosen = segment_indices(available, frames, rng)
        assert len(chosen) == frames
        for k, index in enumerate(chosen):
            assert int(k * segment) <= index <= min(available - 1, int((k + 1) * segment)), (k, index)
        assert chosen == sorted(chosen)


def test_segment_indices_eval_centres_and_train_varies():
    assert segment_indices(16, 8, None) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert segment_indices(16, 1, None) == [8]
    assert segment_indices(10, 4, None) == [1, 3, 6, 8]
    rng = np.random.default_rng(1)
    draws = {tuple(segment_indices(32, 4, rng)) for _ in range(10)}
    assert len(draws) > 1  # training offsets are random


def test_segment_indices_too_short():
    with pytest.raises(VideoError, match="too short: 3 decodable frames, need num_frames=8"):
        segment_indices(3, 8, None)


def test_transform_shapes_normalization_and_crop():
    frames = np.random.default_rng(0).integers(0, 256, (4, 30, 40, 3), dtype=np.uint8)
    clip = ClipTransform(24, 30, train=False)(frames, None)
    assert clip.shape == (4, 3, 24, 24) and clip.dtype == torch.float32
    # Centre crop of an unresized clip (shorter side already 30): exact pixels, normalized.
    expected = torch.from_numpy(frames[:, 3:27, 8:32]).permute(0, 3, 1, 2).float() / 255
    expected = (expected - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(clip, expected)
    # Shorter-side resize keeps the aspect ratio: 30x40 -> 60x80 before a 48 crop.
    assert ClipTransform(48, 60, train=True)(frames, np.random.default_rng(0)).shape == (4, 3, 48, 48)


def test_horizontal_flip_only_when_enabled():
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    plain = ClipTransform(16, 16, train=True, horizontal_flip=False)
    flipping = ClipTransform(16, 16, train=True, horizontal_flip=True)
    outputs_plain = {plain(frames, np.random.default_rng(s)).sum(dim=(0, 1, 2)).argmax().item() for s in range(16)}
    reference = plain(frames, None)
    flipped = [
        torch.equal(flipping(frames, np.random.default_rng(s)), reference.flip(-1)) for s in range(16)
    ]  # same crop (16 of 16), so only the flip can differ
    assert len(outputs_plain) == 1
    assert any(flipped) and not all(flipped)


def test_discover_folders_lists_and_metadata(synth_root):
    assert discover(synth_root / "train")[1] == sorted(CI_CLASSES)  # no classes.txt: folder names sorted
    records, classes = discover(synth_root / "train", root=synth_root)
    assert classes == list(CI_CLASSES)  # <root>/classes.txt gives the order
    assert len(records) == 48 * 4
    list_records, list_classes = discover(synth_root / "train.txt")
    assert list_classes == list(CI_CLASSES)  # from classes.txt next to the list
    by_path = {r.path.resolve(): r.label for r in list_records}
    for record in records:  # folder labels (sorted names) map to the same class names as the list's labels
        assert list_classes[by_path[record.path.resolve()]] == classes[record.label]
    assert read_metadata(synth_root)["direction_sensitive"] is True
    assert split_source(synth_root, "val") == synth_root / "val.txt"
    assert split_source(synth_root, "test") is None


def test_annotation_list_errors(tmp_path):
    (tmp_path / "list.txt").write_text("a.mp4 0\n# comment\n\nb c.mp4 1\n")
    records = read_annotation_list(tmp_path / "list.txt")
    assert [(r.path.name, r.label) for r in records] == [("a.mp4", 0), ("b c.mp4", 1)]
    (tmp_path / "bad.txt").write_text("a.mp4 zero\n")
    with pytest.raises(ValueError, match="bad.txt:1: cannot read a label"):
        read_annotation_list(tmp_path / "bad.txt")
    (tmp_path / "range.txt").write_text("a.mp4 7\n")
    with pytest.raises(ValueError, match="label 7 is outside 0..1"):
        read_annotation_list(tmp_path / "range.txt", classes=["x", "y"])


@pytest.fixture
def bad_videos(tmp_path, synth_root) -> Path:
    """A class folder tree mixing good videos with corrupt, empty, truncated and too-short ones."""
    root = tmp_path / "videos"
    for name in ("left", "up"):
        (root / name).mkdir(parents=True)
    good = (
        sorted((synth_root / "val" / "left").glob("*.mp4"))[:2] + sorted((synth_root / "val" / "up").glob("*.mp4"))[:2]
    )
    for path in good:
        shutil.copy(path, root / path.parent.name / path.name)
    (root / "left" / "corrupt.mp4").write_bytes(b"\x00not a video\xff" * 64)
    (root / "left" / "empty.avi").write_bytes(b"")
    data = good[0].read_bytes()
    (root / "up" / "truncated.mkv").write_bytes(data[: len(data) // 3])
    write_mp4(root / "up" / "short.mp4", render_video("left", np.random.default_rng(0), 32, 3))
    return root


def test_bad_videos_are_skipped_with_reasons_and_labels_stay_aligned(bad_videos):
    dataset = VideoClipDataset.from_source(bad_videos, 8, ClipTransform(32, 36, train=False))
    assert len(dataset) == 8
    batch = collate_clips([dataset[i] for i in range(len(dataset))])
    assert batch["video"].shape == (4, 8, 3, 32, 32)
    # Every clip that loaded sits next to the label of its own folder.
    for path, label in zip(batch["path"], batch["label"].tolist(), strict=True):
        assert dataset.classes[label] == Path(path).parent.name
        assert "corrupt" not in path and "short" not in path
    reasons = {Path(path).name: reason for path, reason in batch["skipped"]}
    assert set(reasons) == {"corrupt.mp4", "empty.avi", "truncated.mkv", "short.mp4"}
    assert reasons["corrupt.mp4"].startswith("unreadable")
    assert reasons["short.mp4"] == "too short: 3 decodable frames, need num_frames=8"
    # A batch of only failures yields no clip tensor rather than raising.
    empty = collate_clips([dataset[i] for i, r in enumerate(dataset.records) if "corrupt" in r.path.name])
    assert empty["video"] is None and empty["label"].numel() == 0 and len(empty["skipped"]) == 1


def test_skip_log_counts_and_logs_once(caplog):
    skips = SkipLog()
    with caplog.at_level("WARNING"):
        skips.add([("a.mp4", "corrupt: x")])
        skips.add([("a.mp4", "corrupt: x"), ("b.mp4", "too short: 1")])
    assert skips.reset_count() == 3 and skips.count == 0
    assert sorted(skips.reasons) == ["a.mp4", "b.mp4"]
    assert sum("a.mp4" in message for message in caplog.messages) == 1


def test_training_randomness_depends_on_seed_epoch_index_only(synth_root):
    transform = ClipTransform(32, 36, train=True)
    first = VideoClipDataset.from_source(synth_root / "train.txt", 4, transform, seed=3)
    second = VideoClipDataset.from_source(synth_root / "train.txt", 4, transform, seed=3)
    second.set_epoch(0)
    torch.testing.assert_close(first[5]["video"], second[5]["video"], rtol=0, atol=0)
    second.set_epoch(1)
    assert not torch.equal(first[5]["video"], second[5]["video"])


def test_metadata_file_written(synth_root):
    metadata = json.loads((synth_root / "dataset.json").read_text())
    assert metadata["classes"] == list(CI_CLASSES) and metadata["direction_sensitive"] is True


def test_training_honors_direction_sensitive_metadata(synth_root):
    from lsvit.train_setup import flip_enabled

    metadata = read_metadata(synth_root)
    assert flip_enabled("auto", metadata) is False  # left/right classes: never mirror
    assert flip_enabled("auto", {}) is True
    assert flip_enabled("on", metadata) is True and flip_enabled("off", {}) is False


def test_loader_ships_uint8_and_the_device_normalizes_like_the_transform():
    frames = np.random.default_rng(0).integers(0, 256, (4, 30, 40, 3), dtype=np.uint8)
    transform = ClipTransform(24, 30, train=False)
    clip = transform.crop_clip(frames, None)
    assert clip.dtype == torch.uint8 and clip.shape == (4, 3, 24, 24)
    on_device = to_model_input(clip.unsqueeze(0), torch.device("cpu"))
    assert on_device.dtype == torch.float32
    torch.testing.assert_close(on_device[0], transform(frames, None))


def test_partial_videos_are_used_and_counted(tmp_path, caplog):
    folder = tmp_path / "videos" / "a"
    write_corrupt_tail(folder / "tail.mp4", frames=24, good=15)
    records, classes = discover(tmp_path / "videos")
    dataset = VideoClipDataset(records, classes, 8, ClipTransform(32, 48, train=False), decoder="pyav")
    batch = collate_clips([dataset[0]])
    assert batch["video"].shape == (1, 8, 3, 32, 32) and not batch["skipped"]
    assert batch["partial"] == [(str(folder / "tail.mp4"), "partial: 15 of 24 frames decode")]
    skips = SkipLog()
    with caplog.at_level("WARNING"):
        skips.add(batch["skipped"], batch["partial"])
    assert skips.partial == dict(batch["partial"]) and "using part of video" in caplog.text
