"""The decoding benchmark's measurement pieces, on a tiny video (the full run is documented in docs/training.md)."""

from __future__ import annotations

import time

import numpy as np

from lsvit.bench.decode import PeakRSS, make_video, measure_cell


def test_peak_rss_sees_a_temporary_allocation():
    with PeakRSS() as memory:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched
        time.sleep(0.05)  # held for a while, as decoded frames are: the sampler sees it
        del block
    assert 60 < memory.growth_mb < 200


def test_cells_measure_every_method(tmp_path):
    video = make_video(tmp_path / "v.mp4", 64, 96, 1)
    warm = make_video(tmp_path / "w.mp4", 32, 32, 1)
    for method in ("full", "pyav"):
        row = measure_cell(str(video), str(warm), method, 4, 2)
        assert row["clips_per_s"] > 0 and row["s_per_clip"] > 0 and row["peak_mb"] >= 0
