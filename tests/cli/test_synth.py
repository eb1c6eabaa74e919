"""The synthetic motion dataset: deterministic, real H.264 files, and no single frame gives the class away."""

from __future__ import annotations

import numpy as np
import pytest

from lsvit.data import decode_frames, frames_to_rgb
from lsvit.synth import MOTIONS, make_dataset, render_video


def test_layout_and_h264(synth_root):
    lists = (synth_root / "train.txt").read_text().splitlines()
    assert len(lists) == 48 * 4 and lists[0].endswith(" 0")
    first = synth_root / lists[0].split()[0]
    frames = decode_frames(first)
    assert len(frames) == 16 and (frames[0].width, frames[0].height) == (32, 32)
    import av

    with av.open(str(first)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_same_seed_same_videos(tmp_path):
    kwargs = dict(classes=["left", "grow"], train_per_class=2, val_per_class=1, size=16, frames=4, progress=False)
    a = make_dataset(tmp_path / "a", seed=5, **kwargs)
    b = make_dataset(tmp_path / "b", seed=5, **kwargs)
    c = make_dataset(tmp_path / "c", seed=6, **kwargs)
    path = "train/grow/grow_0001.mp4"
    decoded = [frames_to_rgb(decode_frames(root / path)) for root in (a, b, c)]
    assert np.array_equal(decoded[0], decoded[1])
    assert not np.array_equal(decoded[0], decoded[2])
    assert (a / "train.txt").read_text() == (b / "train.txt").read_text()


@pytest.mark.parametrize("motion", MOTIONS)
def test_each_motion_moves(motion):
    video = render_video(motion, np.random.default_rng(0), 32, 8).astype(np.int64)
    assert video.shape == (8, 32, 32, 3)
    change = np.abs(video[-1] - video[0]).mean()
    assert change > np.abs(video[1] - video[0]).mean()  # motion accumulates over the clip


def test_middle_frame_statistics_match_across_directions():
    """Left vs right: the shape's centre in the middle frame has the same distribution (no single-frame cue)."""

    def centre_x(motion, seed):
        frame = render_video(motion, np.random.default_rng([seed, 99]), 32, 9)[4].astype(np.int64)
        background = np.median(frame.reshape(-1, 3), axis=0)
        mask = np.abs(frame - background).sum(-1) > 120
        return np.nonzero(mask)[1].mean() if mask.any() else 16.0

    left = [centre_x("left", s) for s in range(60)]
    right = [centre_x("right", s) for s in range(60)]
    assert abs(np.mean(left) - np.mean(right)) < 2.0


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown or no classes"):
        make_dataset(tmp_path, classes=["sideways"], progress=False)
    with pytest.raises(ValueError, match="must be even"):
        make_dataset(tmp_path, size=33, progress=False)
