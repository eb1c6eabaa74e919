"""Sparse decoding: exact frame indices against full decoding, bounded memory, partial decodes, fallbacks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from lsvit import decode
from lsvit.data import segment_indices
from lsvit.decode import VideoError, probe, read_all_frames, read_clip
from lsvit.synth import write_mp4

from .conftest import REPO_ROOT
from .videos import read_index, write_corrupt_tail, write_index_video

DECODERS = ["pyav"] + (["torchcodec"] if decode.torchcodec_error() is None else [])


@pytest.fixture(scope="module")
def index_video(tmp_path_factory):
    return write_index_video(tmp_path_factory.mktemp("index") / "index.mp4", frames=40)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("indices", [[0, 1, 2], [3, 9, 10, 17, 24, 33, 39], [39], [38, 2, 2, 20]])
def test_sparse_frames_are_the_full_decode_frames(index_video, decoder, indices):
    full = read_all_frames(index_video)
    assert [read_index(f) for f in full] == list(range(40))  # the pattern survives the encoder
    clip = read_clip(index_video, lambda available: list(indices), decoder)
    assert clip.available == 40 and clip.partial is None and clip.indices == list(indices)
    frames = clip.frames.numpy()
    assert frames.shape == (len(indices), 48, 96, 3) and frames.dtype == np.uint8
    assert [read_index(f) for f in frames] == list(indices)
    for frame, index in zip(frames, indices):
        difference = np.abs(frame.astype(int) - full[index].astype(int)).mean()
        if decoder == "pyav":
            assert difference == 0  # same decoder, same conversion: bit-identical
        else:
            assert difference < 3  # another RGB conversion of the same decoded frame


@pytest.mark.parametrize("decoder", DECODERS)
def test_frames_are_resized_while_decoding(index_video, decoder):
    assert probe(index_video, decoder).frames == 40
    clip = read_clip(index_video, lambda available: segment_indices(available, 8, None), decoder, shorter_side=24)
    assert clip.frames.shape == (8, 24, 48, 3)
    assert [read_index(f) for f in clip.frames.numpy()] == segment_indices(40, 8, None)


@pytest.mark.parametrize("decoder", DECODERS)
def test_partial_decode_is_used_and_marked(tmp_path, decoder):
    path = write_corrupt_tail(tmp_path / "tail.mp4", frames=24, good=15)
    with pytest.raises(av.error.InvalidDataError):
        read_all_frames(path)
    decodable = 0
    with av.open(str(path)) as container:
        with contextlib.suppress(av.error.InvalidDataError):
            for _ in container.decode(video=0):
                decodable += 1
    assert 8 <= decodable < 24
    clip = read_clip(path, lambda available: segment_indices(available, 8, None), decoder)
    assert clip.available == decodable
    assert [read_index(f) for f in clip.frames.numpy()] == segment_indices(decodable, 8, None)
    if decoder == "pyav":  # its packet table lists all 24: the sampler asked beyond the decodable prefix
        assert clip.partial == f"partial: {decodable} of 24 frames decode"
    else:
        assert clip.partial is None or clip.partial.startswith("partial")
    with pytest.raises(VideoError, match="too short"):
        read_clip(path, lambda available: segment_indices(available, 20, None), decoder)


def test_fifo_is_reported_never_opened(tmp_path):
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    for decoder in DECODERS:
        with pytest.raises(VideoError, match="not a regular file: a FIFO"):
            read_clip(fifo, lambda available: [0], decoder)
    with pytest.raises(VideoError, match="unreadable: file not found"):
        read_clip(tmp_path / "missing.mp4", lambda available: [0])


def test_pyav_serves_auto_and_torchcodec_that_cannot_load_is_a_clear_error(monkeypatch, index_video):
    monkeypatch.setattr(decode, "torchcodec_error", lambda: "RuntimeError: Could not load libtorchcodec")
    assert decode.resolve_decoder("auto") == "pyav"
    with pytest.raises(ValueError, match="torchcodec cannot load .* or use --decoder pyav"):
        decode.resolve_decoder("torchcodec")
    clip = read_clip(index_video, lambda available: [5, 30], "auto")
    assert [read_index(f) for f in clip.frames.numpy()] == [5, 30]


MEMORY_SCRIPT = """
import json, sys
from pathlib import Path
from lsvit.bench.decode import PeakRSS
from lsvit.decode import read_clip, read_all_frames
path, decoder = Path(sys.argv[1]), sys.argv[2]
read_clip(path, lambda n: [0], decoder, 64)  # libraries loaded and warm
with PeakRSS() as sparse:
    clip = read_clip(path, lambda n: [round(i * (n - 1) / 7) for i in range(8)], decoder, 64)
frames = []
if decoder == "pyav":
    with PeakRSS() as full:
        frames = read_all_frames(path)
result = {"sparse_mb": sparse.growth_mb, "full_mb": full.growth_mb if frames else 0, "frames": len(frames)}
print(json.dumps({**result, "shape": list(clip.frames.shape)}))
"""


@pytest.fixture(scope="module")
def long_1080p(tmp_path_factory):
    """90 frames of 1080p (3 s at 30 fps), a keyframe every 30 frames."""
    path = tmp_path_factory.mktemp("long") / "long_1080p.mp4"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (1080 // 8, 1920 // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    write_mp4(path, (np.roll(texture, 8 * i, axis=1) for i in range(90)), fps=30, crf=30, preset="ultrafast", gop=30)
    return path


@pytest.mark.parametrize("decoder", DECODERS)
def test_memory_is_bounded_by_the_clip_not_the_video(long_1080p, decoder):
    """8 frames of a 1080p video of 90 frames: full decoding holds 560 MB of RGB frames, the sparse read a few MB
    (resident memory sampled every millisecond, lsvit.bench.decode.PeakRSS)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(long_1080p), decoder],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["shape"] == [8, 64, 114, 3]
    assert measured["sparse_mb"] < 60, measured  # 8 small frames + decoder state; the video holds 90 x 6.2 MB
    if decoder == "pyav":
        assert measured["frames"] == 90 and measured["full_mb"] > 400, measured  # the test can tell the two apart
