"""Checkpoints you can trust: checksums, damaged and foreign files, stale temporaries, write errors, CLI errors."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lsvit import checkpoint as ckpt
from lsvit import cli

from .conftest import REPO_ROOT, quick_train, run_module


@pytest.fixture(scope="module")
def two_epochs(synth_root, small_list, tmp_path_factory) -> Path:
    """A 2-epoch run: last.pt (epoch 2), previous.pt (epoch 1), best.pt."""
    out = tmp_path_factory.mktemp("trusted")
    quick_train(synth_root, small_list, out, "--epochs", "2", "--batch_size", "8", "--seed", "1")
    return out


def flip_tensor_bytes(path: Path, count: int = 64) -> None:
    """Flip ``count`` bytes inside the largest stored tensor (torch's zip records are stored uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with path.open("r+b") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(file.read(4), dtype="<u2")
        start = info.header_offset + 30 + int(name_length) + int(extra_length) + info.file_size // 3
        file.seek(start)
        data = bytearray(file.read(count))
        file.seek(start)
        file.write(bytes(b ^ 0x5A for b in data))


def cli_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_checksum_written_and_verified(two_epochs):
    checkpoint = ckpt.load_checkpoint(two_epochs / "last.pt", required=ckpt.RESUME_KEYS)
    assert checkpoint["format_version"] == 2 and len(checkpoint["checksum"]["digest"]) == 64
    assert ckpt.payload_digest(checkpoint) == checkpoint["checksum"]["digest"]
    previous = ckpt.load_checkpoint(two_epochs / "previous.pt", required=ckpt.RESUME_KEYS)
    assert (previous["epoch"], checkpoint["epoch"]) == (1, 2)


def test_flipped_bytes_refused_then_resume_auto_takes_a_good_one(two_epochs, synth_root, small_list, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_epochs, out)
    flip_tensor_bytes(out / "last.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"last\.pt fails its checksum"):
        ckpt.load_checkpoint(out / "last.pt")
    # Named explicitly: refused, with the valid files beside it.
    err = cli_error(capsys, "train", "--data_root", str(synth_root), "--output_dir", str(out), "--resume",
                    str(out / "last.pt"))  # fmt: skip
    assert "fails its checksum" in err and "previous.pt (step" in err and "best.pt (step" in err
    # auto: skips the damaged last.pt and continues from the newest good one (best.pt holds epoch 2's step).
    summary = quick_train(synth_root, small_list, out, "--epochs", "3", "--batch_size", "8", "--seed", "1",
                          "--resume", "auto")  # fmt: skip
    logged = capsys.readouterr().out
    assert "last.pt fails its checksum" in logged and "continuing from" in logged
    assert len(summary["history"]) == 3
    assert ckpt.load_checkpoint(out / "last.pt")["epoch"] == 3


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("empty", "is empty (0 bytes)"),
        ("text", "is not a torch.save file"),
        ("random", "is not a torch.save file"),
        ("truncated", "is damaged or truncated"),
        ("numpy", "holds Python objects"),
        ("list", "holds a list, not an lsvit training checkpoint"),
        ("missing_keys", "lacks classes, data"),
        ("bare_weights", "is a bare weights file"),
        ("folder", "is a folder"),
        ("absent", "does not exist"),
    ],
)
def test_unreadable_checkpoint_is_one_line(two_epochs, synth_root, tmp_path, capsys, kind, problem):
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("epoch 3, top-1 0.91\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(1, 127, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        data = (two_epochs / "best.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "numpy":
        torch.save({"model": np.zeros(3)}, path)
    elif kind == "list":
        torch.save([1, 2], path)
    elif kind == "missing_keys":
        torch.save({"format_version": 2, "model": {}, "model_config": {}}, path)
    elif kind == "bare_weights":
        torch.save({"model": {"w": torch.zeros(2)}}, path)
    elif kind == "folder":
        path.mkdir()
    err = cli_error(capsys, "infer", "--checkpoint", str(path), "--data_root", str(synth_root), "--split", "val")
    assert str(path) in err and problem in err, err
    assert "weights_only" not in err.replace(str(path), "")


def test_debug_keeps_the_traceback(tmp_path, synth_root):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="is empty"):
        cli.main(["infer", "--checkpoint", str(path), "--data_root", str(synth_root), "--debug"])


def test_configuration_error_is_one_line(capsys, tmp_path):
    err = cli_error(capsys, "train", "--data_root", str(tmp_path / "nowhere"), "--num_heads", "5")
    assert err.startswith("error: ") and "num_heads=5 does not divide embed_dim=768" in err


def test_stale_temporaries_are_removed_at_the_next_save(tmp_path):
    stale = [tmp_path / ".last.pt.x1y2.tmp", tmp_path / ".last.pt.q9.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    keep = tmp_path / ".other.tmp"
    keep.write_bytes(b"")
    ckpt.save_atomic({"format_version": 2, "model": {"w": torch.ones(3)}}, tmp_path / "last.pt")
    assert not any(path.exists() for path in stale) and keep.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp", "last.pt"]


def test_disk_full_is_reported_by_its_cause(tmp_path, monkeypatch):
    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    (tmp_path / "last.pt").write_bytes(b"old")
    with pytest.raises(ckpt.CheckpointError, match=r"cannot write checkpoint .*last\.pt: no space left"):
        ckpt.save_atomic({"model": {"w": torch.ones(3)}}, tmp_path / "last.pt", keep_previous=True)
    assert (tmp_path / "last.pt").read_bytes() == b"old"  # the old file is untouched, no temporary left
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_file_size_limit_is_reported_by_its_cause(tmp_path):
    script = (
        "import resource, signal, sys, torch\n"
        "from lsvit import checkpoint as c\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000))\n"
        "try:\n"
        f"    c.save_atomic({{'model': {{'w': torch.ones(100000)}}}}, {str(tmp_path / 'last.pt')!r})\n"
        "except c.CheckpointError as e:\n"
        "    print(e)\n"
    )
    result = run_module("", launcher=[sys.executable, "-c", script], timeout=60)
    assert "file too large" in result.stdout and "unexpected pos" not in result.stdout, result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == [] and REPO_ROOT.is_dir()
