"""Inference: the checkpoint decides the architecture; bad videos are reported; outputs are written."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lsvit import infer
from lsvit.errors import EXIT_ERROR, UserError
from lsvit.synth import render_video, write_mp4

from .conftest import CI_CLASSES


@pytest.fixture(scope="module")
def mixed_folder(synth_root, tmp_path_factory) -> Path:
    """The validation videos in class folders plus one corrupt file and one too-short file."""
    root = tmp_path_factory.mktemp("mixed")
    for name in CI_CLASSES:
        shutil.copytree(synth_root / "val" / name, root / name)
    (root / CI_CLASSES[0] / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 broken" * 40)
    write_mp4(root / CI_CLASSES[1] / "short.mp4", render_video(CI_CLASSES[1], np.random.default_rng(0), 32, 5))
    return root


def test_infer_reports_bad_videos_and_scores_the_rest(trained_3d, mixed_folder, tmp_path, monkeypatch):
    out, summary = trained_3d
    monkeypatch.setenv("APPCONFIG__EMBED_DIM", "96")  # ignored: the checkpoint decides
    metrics = infer.run(
        ["--checkpoint", str(out / "best.pt"), "--data_root", str(mixed_folder), "--num_frames", "8",
         "--output_dir", str(tmp_path), "--num_workers", "0", "--no_progress"]
    )  # fmt: skip
    total = 12 * len(CI_CLASSES)
    assert metrics["videos"] == total + 2 and metrics["scored"] == total
    skipped = {Path(entry["path"]).name: entry["reason"] for entry in metrics["skipped"]}
    assert set(skipped) == {"corrupt.mp4", "short.mp4"}
    assert skipped["short.mp4"] == "too short: 5 decodable frames, need num_frames=8"
    # Same accuracy as the training run's validation of the best checkpoint (same clips, same sampling).
    assert metrics["top1"] == pytest.approx(summary["best_metric"])
    assert metrics["top5"] == 1.0  # 4 classes: top-5 holds every class
    per_class = metrics["per_class"]
    assert set(per_class) == set(CI_CLASSES)
    assert np.mean(list(per_class.values())) == pytest.approx(metrics["top1"])  # balanced classes
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(rows) == total and {"top1_class", "top1_prob", "top4_prob"} <= set(rows[0])
    predictions = json.loads((tmp_path / "predictions.json").read_text())["predictions"]
    assert all(abs(sum(e["prob"] for e in p["topk"]) - 1) < 1e-4 for p in predictions)  # 4 of 4 classes listed
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert sum(map(sum, metrics["confusion"])) == total


@pytest.mark.parametrize(
    "env, flags, named",
    [
        ({"APPCONFIG__USE_3D_PATCH_EMBED": "false"}, [], "env APPCONFIG__USE_3D_PATCH_EMBED=false"),
        ({}, ["--no-use_3d_patch_embed"], "--use_3d_patch_embed False"),
        ({"APPCONFIG__TUBELET_SIZE": "4"}, [], "env APPCONFIG__TUBELET_SIZE=4"),
        ({}, ["--patch_size", "16"], "--patch_size 16"),
    ],
)
def test_conflicting_architecture_stops_with_the_trained_settings(
    trained_3d, synth_root, monkeypatch, env, flags, named
):
    out, _ = trained_3d
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError) as stop:
        infer.run(["--checkpoint", str(out / "last.pt"), "--data_root", str(synth_root / "val.txt"), *flags])
    message = str(stop.value)
    assert "was trained with 3D patch embedding, tubelet_size=2, patch_size=8" in message
    assert named in message


def test_agreeing_settings_are_accepted(trained_3d, synth_root, tmp_path, monkeypatch):
    out, _ = trained_3d
    monkeypatch.setenv("APPCONFIG__TUBELET_SIZE", "2")
    metrics = infer.run(
        ["--checkpoint", str(out / "last.pt"), "--data_root", str(synth_root), "--split", "val", "--use_3d_patch_embed",
         "--output_dir", str(tmp_path), "--num_workers", "0", "--no_progress", "--topk", "2"]
    )  # fmt: skip
    assert metrics["scored"] == 12 * len(CI_CLASSES) and not metrics["skipped"]
    assert len(json.loads((tmp_path / "predictions.json").read_text())["predictions"][0]["topk"]) == 2


def test_other_clip_length_and_size_resample_the_tables(trained_3d, synth_root, tmp_path, caplog):
    out, summary = trained_3d
    metrics = infer.run(
        ["--checkpoint", str(out / "best.pt"), "--data_root", str(synth_root), "--split", "val", "--num_frames", "16",
         "--image_size", "48", "--output_dir", str(tmp_path), "--num_workers", "0", "--no_progress"]
    )  # fmt: skip
    assert (metrics["num_frames"], metrics["image_size"]) == (16, 48)
    assert metrics["scored"] == 12 * len(CI_CLASSES) and metrics["top1"] > 1 / len(CI_CLASSES)
    assert "positional tables resampled: 8 -> 16 frames, 4x4 -> 6x6 patch grid" in caplog.text


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_frames", "7"], "--num_frames 7: "),
        (["--image_size", "36"], "--image_size 36 is not a multiple of the patch size 8; use 32 or 40"),
    ],
)
def test_impossible_clip_shapes_are_refused(trained_3d, synth_root, flags, message):
    out, _ = trained_3d
    with pytest.raises(UserError, match=message):
        infer.run(["--checkpoint", str(out / "best.pt"), "--data_root", str(synth_root), "--split", "val", *flags])


def test_command_line_errors_are_one_line_with_exit_status_2(trained_3d, synth_root, capsys):
    out, _ = trained_3d
    with pytest.raises(SystemExit) as stop:
        infer.main(["--checkpoint", str(out / "best.pt"), "--data_root", str(synth_root), "--split", "val",
                    "--image_size", "36"])  # fmt: skip
    assert stop.value.code == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: --image_size 36 is not a multiple of the patch size 8; use 32 or 40"), err


def test_an_invalid_kernel_backend_is_refused_before_the_model_is_built(trained_3d, synth_root, capsys):
    out, _ = trained_3d
    with pytest.raises(SystemExit) as stop:
        infer.main(["--checkpoint", str(out / "best.pt"), "--data_root", str(synth_root), "--split", "val",
                    "--kernel_backend", "bogus"])  # fmt: skip
    assert stop.value.code == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kernel_backend='bogus' is not a registered backend" in err[0], err
