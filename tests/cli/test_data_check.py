"""``lsvit data check``: every problem a run would trip on, reported in parallel; a clean list that trains."""

from __future__ import annotations

import json
import os

import pytest

from lsvit import cli
from lsvit.formats import training_splits

from .conftest import run_module
from .test_data_formats import args_for
from .videos import write_clip, write_corrupt_tail


def test_check_reports_every_problem_and_writes_a_clean_list(tmp_path):
    root = tmp_path / "d"
    for i in range(4):
        write_clip(root / "v" / f"good{i}.mp4", frames=10, size=32 + 16 * (i % 2), seed=i)
    write_clip(root / "v" / "short.mp4", frames=3)
    (root / "v" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really" * 20)
    write_corrupt_tail(root / "v" / "tail.mp4", frames=24, good=6)
    os.mkfifo(root / "v" / "pipe.mp4")
    (root / "classes.txt").write_text("walk\nrun\njump\n")
    (root / "train.txt").write_text(
        "v/good0.mp4 0\nv/good1.mp4 1\nv/good2.mp4 0\nv/short.mp4 1\nv/broken.mp4 0\nv/pipe.mp4 1\nv/gone.mp4 0\n"
        "v/tail.mp4 1\n"
    )
    (root / "val.txt").write_text("v/good3.mp4 1\nv/good0.mp4 0\n")  # good0 also in train
    report_file, clean = tmp_path / "report.json", tmp_path / "clean"
    result = run_module("lsvit.cli", "data", "check", "--data_root", str(root), "--num_frames", "8", "--workers", "2",
                        "--full_decode", "--report", str(report_file), "--write_clean_list", str(clean),
                        timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "check" in result.stderr  # the progress bar
    report = json.loads(report_file.read_text())
    train = report["train"]
    assert train["videos"] == 8 and train["usable"] == 3
    problems = {os.path.basename(p["path"]): (p["status"], p["reason"]) for p in train["problems"]}
    assert problems["short.mp4"] == ("too short", "3 usable frames, need num_frames=8")
    assert problems["broken.mp4"][0] == "unreadable"
    assert problems["pipe.mp4"] == ("not a regular file", "a FIFO")
    assert problems["gone.mp4"] == ("missing", "missing")
    assert problems["tail.mp4"] == ("corrupt", "6 usable frames, need num_frames=8")
    assert train["class_counts"] == {"walk": 4, "run": 4} and train["classes_without_videos"] == ["jump"]
    assert report["val"]["usable"] == 2
    assert list(report["duplicates"].values()) == [["train", "val"]]
    assert report["resolution"] == {"32x32": 3, "48x48": 2} and report["fps"] == {"8": 5}
    assert report["duration"] == {"0-2 s": 5}
    assert "train (list," in result.stdout and "duplicate paths: 1" in result.stdout
    # The clean lists are a data root of their own.
    train_split, val_split = training_splits(args_for(clean))
    assert sorted(r.path.name for r in train_split.records) == ["good0.mp4", "good1.mp4", "good2.mp4"]
    assert train_split.classes == ["walk", "run", "jump"] and len(val_split.records) == 2


def test_check_labels_out_of_range_and_one_line_errors(tmp_path, capsys):
    write_clip(tmp_path / "a.mp4")
    (tmp_path / "list.txt").write_text("a.mp4 0\na.mp4 3\n")
    report_file = tmp_path / "r.json"
    cli.main(["data", "check", "--data_root", str(tmp_path / "list.txt"), "--num_classes", "2", "--workers", "1",
              "--no_progress", "--report", str(report_file)])  # fmt: skip
    out_of_range = json.loads(report_file.read_text())["train"]["labels_out_of_range"]
    assert [entry["label"] for entry in out_of_range] == [3]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main(["data", "check", "--data_root", str(tmp_path / "nowhere")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data_root {tmp_path / 'nowhere'} does not exist") and err.count("\n") == 1
