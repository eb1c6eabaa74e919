"""Dataset formats, each from a tiny tree of real encoded videos: detection, labels, paths, clips that load."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from lsvit import infer, train
from lsvit.data import ClipTransform, VideoClipDataset, collate_clips
from lsvit.errors import DataError
from lsvit.formats import detect_format, inference_split, load_split, training_splits

from .test_data_guards import FAST
from .videos import write_clip, write_frame_folder

UCF_CLASSES = ("YoYo", "ApplyEyeMakeup", "Basketball")  # classInd order, deliberately not alphabetical


def assert_clips_load(split, num_frames: int = 4) -> None:
    dataset = VideoClipDataset(split.records, split.classes, num_frames, ClipTransform(32, 32, train=False))
    batch = collate_clips([dataset[i] for i in range(len(dataset))])
    assert not batch["skipped"], batch["skipped"]
    assert batch["video"].shape == (len(dataset), num_frames, 3, 32, 32) and batch["video"].dtype == torch.uint8


def args_for(root: Path, **overrides) -> argparse.Namespace:
    values = dict(data_root=str(root), data_format="auto", video_root=None, split_number=1, train_list=None,
                  val_list=None, split=None)  # fmt: skip
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    """UCF101 as shipped: ucfTrainTestlist/ (classInd, trainlist0N 1-based, testlist0N unlabeled) + UCF-101/."""
    root = tmp_path_factory.mktemp("ucf")
    notes = root / "ucfTrainTestlist"
    notes.mkdir()
    (notes / "classInd.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(UCF_CLASSES, start=1)))
    for number in (1, 2):
        train_lines, test_lines = [], []
        for label, name in enumerate(UCF_CLASSES, start=1):
            for group in (1, 2, 3):
                relative = f"{name}/v_{name}_g0{group}_c01.avi"
                if number == 1:
                    write_clip(root / "UCF-101" / relative, seed=label * 10 + group)
                # Split 1 tests group 1; split 2 tests group 2.
                (test_lines if group == number else train_lines).append(relative)
        (notes / f"trainlist0{number}.txt").write_text("".join(f"{p} {UCF_CLASSES.index(p.split('/')[0]) + 1}\r\n"
                                                               for p in train_lines))  # fmt: skip
        (notes / f"testlist0{number}.txt").write_text("".join(f"{p}\r\n" for p in test_lines))
    return root


def test_ucf101_official_splits(ucf_root):
    assert detect_format(ucf_root) == "ucf101"
    train = load_split(ucf_root, "train")
    assert train.classes == list(UCF_CLASSES) and len(train.records) == 6
    for record in train.records:
        assert record.path.is_file() and UCF_CLASSES[record.label] == record.path.parent.name
    test = load_split(ucf_root, "val")  # the test list is the evaluation split; labels from the class folder
    assert [r.path.name for r in test.records][0] == "v_YoYo_g01_c01.avi" and len(test.records) == 3
    assert [UCF_CLASSES[r.label] for r in test.records] == list(UCF_CLASSES)
    second = load_split(ucf_root, "test", split_number=2)
    assert {r.path.name.split("_")[2] for r in second.records} == {"g02"}
    assert_clips_load(test)
    # trainlist01.txt alone: still the class index, no dead class 0.
    alone = training_splits(args_for(ucf_root, train_list=str(ucf_root / "ucfTrainTestlist" / "trainlist01.txt")))[0]
    assert alone.classes == list(UCF_CLASSES) and sorted({r.label for r in alone.records}) == [0, 1, 2]


def test_ucf101_trains_and_validates_end_to_end(ucf_root, tmp_path):
    summary = train.run(["--data_root", str(ucf_root), "--output_dir", str(tmp_path), "--num_frames", "4", *FAST])
    row = summary["history"][0]
    assert row["train_skipped"] == 0 and row["val_skipped"] == 0 and row["val_clips"] == 3
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert checkpoint["classes"] == list(UCF_CLASSES)
    metrics = infer.run(["--checkpoint", str(tmp_path / "last.pt"), "--data_root", str(ucf_root), "--split", "test",
                         "--output_dir", str(tmp_path / "infer"), "--num_workers", "0", "--no_progress"])  # fmt: skip
    assert metrics["scored"] == 3 and metrics["labeled"] == 3


def test_hmdb51_split_files(tmp_path):
    root = tmp_path / "hmdb"
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for label, name in enumerate(("brush_hair", "cartwheel")):
        lines = []
        for i, usage in enumerate((1, 1, 2, 0)):
            video = f"{name}_clip{i}.avi"
            write_clip(root / "hmdb51_org" / name / video, seed=label * 10 + i)
            lines.append(f"{video} {usage} ")
        (splits / f"{name}_test_split1.txt").write_text("\n".join(lines) + "\n")
    assert detect_format(root) == "hmdb51"
    train = load_split(root, "train")
    assert train.classes == ["brush_hair", "cartwheel"] and [r.label for r in train.records] == [0, 0, 1, 1]
    test = load_split(root, "test")
    assert [r.path.name for r in test.records] == ["brush_hair_clip2.avi", "cartwheel_clip2.avi"]
    assert_clips_load(test)
    with pytest.raises(DataError, match="no brush_hair_test_split2.txt"):
        load_split(root, "train", split_number=2)


def test_kinetics_csv_and_clip_names(tmp_path):
    root = tmp_path / "kinetics"
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    rows = [("playing guitar", "abc-DEF_123", 10, 20), ("abseiling", "zzz", 0, 10), ("abseiling", "yyy", 31, 41)]
    root.mkdir()
    (root / "train.csv").write_text(header + "".join(f'"{name}",{i},{s},{e},train,0\n' for name, i, s, e in rows))
    (root / "validate.csv").write_text(header + '"playing guitar",vvv,5,15,val,0\nabseiling,gone,1,11,val,0\n')
    # Clips nest differently (by label, flat): they are found by name.
    write_clip(root / "train" / "playing guitar" / "abc-DEF_123_000010_000020.mp4")
    write_clip(root / "train" / "abseiling" / "zzz_000000_000010.mp4")
    write_clip(root / "train" / "abseiling" / "yyy_000031_000041.mp4")
    write_clip(root / "val" / "vvv_000005_000015.mp4")
    assert detect_format(root) == "kinetics"
    train_split, val_split = training_splits(args_for(root))
    assert train_split.classes == ["abseiling", "playing guitar"]
    assert [(r.path.name, r.label) for r in train_split.records] == [
        ("abc-DEF_123_000010_000020.mp4", 1), ("zzz_000000_000010.mp4", 0), ("yyy_000031_000041.mp4", 0)
    ]  # fmt: skip
    assert val_split.records[0].path == root / "val" / "vvv_000005_000015.mp4" and val_split.records[0].label == 1
    missing = val_split.records[1]
    assert not missing.path.exists() and missing.path.name == "gone_000001_000011.mp4"  # reported, not hidden
    assert_clips_load(train_split)


def test_something_something_v2_json(tmp_path):
    root = tmp_path / "ssv2"
    labels = {"Pushing something from left to right": "0", "Holding something": "1"}
    root.mkdir()
    (root / "something-something-v2-labels.json").write_text(json.dumps(labels))
    train_entries = [
        {"id": "11", "label": "pushing a cup from left to right", "template": "Pushing [something] from left to right",
         "placeholders": ["a cup"]},
        {"id": "12", "label": "holding a pen", "template": "Holding [something]", "placeholders": ["a pen"]},
    ]  # fmt: skip
    (root / "something-something-v2-train.json").write_text(json.dumps(train_entries))
    (root / "something-something-v2-validation.json").write_text(json.dumps(train_entries[1:]))
    (root / "something-something-v2-test.json").write_text(json.dumps([{"id": "13"}]))
    for video_id in ("11", "12", "13"):
        write_clip(root / "20bn-something-something-v2" / f"{video_id}.webm", seed=int(video_id))
    assert detect_format(root) == "ssv2"
    train_split, val_split = training_splits(args_for(root))
    assert train_split.classes == list(labels) and [r.label for r in train_split.records] == [0, 1]
    assert [r.label for r in val_split.records] == [1]
    test = load_split(root, "test")
    assert test.records[0].label == -1 and test.records[0].path.name == "13.webm"
    assert_clips_load(train_split)


def test_mmaction_video_and_rawframe_lists(tmp_path):
    root = tmp_path / "mm"
    for i in range(4):
        write_clip(root / "videos" / f"c{i % 2}" / f"v{i}.mp4", seed=i)
        write_frame_folder(root / "rawframes" / f"v{i}", frames=12, seed=i)
    (root / "tiny_train_list_videos.txt").write_text("".join(f"videos/c{i % 2}/v{i}.mp4 {i % 2}\n" for i in range(3)))
    (root / "tiny_val_list_videos.txt").write_text("videos/c1/v3.mp4 1\n")
    assert detect_format(root) == "list"
    train_split, val_split = training_splits(args_for(root))
    assert [r.label for r in train_split.records] == [0, 1, 0] and len(val_split.records) == 1
    assert_clips_load(train_split)

    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "train_rawframes.txt").write_text("".join(f"v{i} 12 {i % 2}\n" for i in range(4)))
    (frames / "val_rawframes.txt").write_text("v3 10 1\n")
    assert detect_format(frames / "train_rawframes.txt") == "rawframes"
    train_split, val_split = training_splits(args_for(frames, video_root=str(root / "rawframes")))
    assert train_split.data_format == "rawframes" and train_split.records[0].frames == 12
    assert train_split.records[0].path == root / "rawframes" / "v0" and val_split.records[0].frames == 10
    assert_clips_load(train_split, num_frames=8)


def test_video_root_for_a_list_elsewhere(tmp_path):
    videos = tmp_path / "store"
    for i in range(3):
        write_clip(videos / f"clip{i}.mp4", seed=i)
    listing = tmp_path / "elsewhere" / "list.txt"
    listing.parent.mkdir()
    listing.write_text("".join(f"clip{i}.mp4 {i % 2}\n" for i in range(3)))
    args = args_for(listing, video_root=str(videos))
    split = inference_split(args, ["a", "b"])
    assert all(r.path.is_file() for r in split.records)
    assert_clips_load(split)
    without = inference_split(args_for(listing), ["a", "b"])
    assert not any(r.path.exists() for r in without.records)  # relative to the list's own folder


def test_validation_labels_beyond_the_training_classes_stop_before_training(tmp_path):
    for i in range(3):
        write_clip(tmp_path / f"v{i}.mp4", seed=i)
    (tmp_path / "train.txt").write_text("v0.mp4 0\nv1.mp4 1\n")
    (tmp_path / "val.txt").write_text("v2.mp4 2\n")
    with pytest.raises(DataError, match="1 validation labels are outside the 2 training classes"):
        training_splits(args_for(tmp_path))
