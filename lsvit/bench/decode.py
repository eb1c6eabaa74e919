"""Clip decoding throughput and peak memory: the full-decode path against sparse decoding, in one run.

``python -m lsvit.bench.decode`` (default: 720p and 1080p videos of 10 s, 8- and 16-frame clips, about two
minutes on 2 cores) and the full run ``python -m lsvit.bench.decode --durations 10 60`` (adds 60-s videos). The
H.264 videos (30 fps, a keyframe every 2 s, B-frames, moving texture) are generated once under ``--video_dir``.

Each cell (video x clip length x method) runs in its own worker process, so its peak resident memory is its own:
``peak MB`` is the largest growth of the worker's resident memory while it decodes ``--repeats`` training clips
(random TSN segment offsets, shorter side resized to 256), sampled every millisecond after the decoder libraries
are loaded and warm.
Methods: ``full`` decodes every frame with PyAV and keeps them (the previous data path), ``pyav`` seeks to the
keyframe before each wanted frame and decodes forward, ``torchcodec`` uses ``VideoDecoder.get_frames_at``.
The full path on a long high-resolution video holds every frame (60 s of 1080p: about 5.6 GB); cells whose video
has more than ``--full_max_frames`` frames are left out of the full path unless that limit is raised.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

RESOLUTIONS = {"720p": (720, 1280), "1080p": (1080, 1920)}
FPS = 30
SHORTER_SIDE = 256
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def make_video(path: Path, height: int, width: int, seconds: int) -> Path:
    """A moving random texture, H.264 (veryfast preset: B-frames on), a keyframe every 2 s."""
    from lsvit.synth import write_mp4

    if path.exists():
        return path
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    frames = (np.roll(texture, (i, 4 * i), axis=(0, 1)) for i in range(seconds * FPS))
    temporary = path.with_suffix(".part.mp4")
    write_mp4(temporary, frames, fps=FPS, crf=23, preset="veryfast", gop=2 * FPS)
    temporary.rename(path)
    return path


def _rss_mb() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * PAGE_BYTES / 2**20


class PeakRSS:
    """Largest resident set size seen while the block runs, sampled every millisecond by a thread (decoders
    release the GIL), minus the size when it started: the memory the block itself held at its peak."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss_mb()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def growth_mb(self) -> float:
        return self.peak - self.start


def _decode_full(path: Path, num_frames: int, rng: np.random.Generator):
    """The previous data path: every frame decoded and kept, then the chosen ones converted and resized."""
    import torch

    from lsvit.data import decode_frames, frames_to_rgb, resize_shorter_side, segment_indices

    frames = decode_frames(path)
    chosen = segment_indices(len(frames), num_frames, rng)
    pixels = torch.from_numpy(frames_to_rgb([frames[i] for i in chosen])).permute(0, 3, 1, 2).float()
    return resize_shorter_side(pixels, SHORTER_SIDE)


def _decode_sparse(path: Path, num_frames: int, rng: np.random.Generator, decoder: str):
    from lsvit.data import segment_indices
    from lsvit.decode import read_clip

    return read_clip(path, lambda available: segment_indices(available, num_frames, rng), decoder, SHORTER_SIDE)


def measure_cell(path: str, warm_path: str, method: str, num_frames: int, repeats: int) -> dict[str, Any]:
    """Clips per second and peak memory growth of one method on one video (runs in a fresh worker)."""

    def decode(video: str, seed: int):
        rng = np.random.default_rng(seed)
        if method == "full":
            return _decode_full(Path(video), num_frames, rng)
        return _decode_sparse(Path(video), num_frames, rng, method)

    decode(warm_path, 0)  # libraries loaded, allocator warm, on a small video
    with PeakRSS() as memory:
        started = time.perf_counter()
        for seed in range(repeats):
            clip = decode(path, seed)
            del clip
        seconds = time.perf_counter() - started
    return {"clips_per_s": repeats / seconds, "s_per_clip": seconds / repeats, "peak_mb": memory.growth_mb}


def run_cell(path: Path, warm: Path, method: str, num_frames: int, repeats: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")  # a fresh process: its peak memory is this cell's alone
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure_cell, str(path), str(warm), method, num_frames, repeats).result()


def frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return container.streams.video[0].frames


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m lsvit.bench.decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=list(RESOLUTIONS))
    parser.add_argument("--durations", nargs="+", type=int, default=[10], help="video lengths in seconds")
    parser.add_argument("--clip_frames", nargs="+", type=int, default=[8, 16], help="frames per clip")
    parser.add_argument("--methods", nargs="+", default=["full", "pyav", "torchcodec"],
                        choices=["full", "pyav", "torchcodec"])  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="clips decoded per cell (timed together)")
    parser.add_argument("--full_max_frames", type=int, default=600,
                        help="leave the full path out on videos with more frames (0: no limit)")  # fmt: skip
    parser.add_argument("--video_dir", default="bench_out/decode_videos", help="generated videos (kept)")
    parser.add_argument("--out", default="bench_out/decode.json", help="results as JSON")
    args = parser.parse_args(argv)

    from lsvit.decode import torchcodec_error

    methods = [m for m in args.methods if m != "torchcodec" or torchcodec_error() is None]
    if methods != args.methods:
        print(f"torchcodec left out: {torchcodec_error()}")
    folder = Path(args.video_dir)
    folder.mkdir(parents=True, exist_ok=True)
    from lsvit.synth import render_video, write_mp4

    warm = folder / "warm.mp4"
    if not warm.exists():
        write_mp4(warm, render_video("left", np.random.default_rng(0), 64, 48), fps=FPS)
    rows = []
    print("| video | frames | clip | method | clips/s | s/clip | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for name in args.resolutions:
        for seconds in args.durations:
            started = time.perf_counter()
            video = make_video(folder / f"{name}_{seconds}s.mp4", *RESOLUTIONS[name], seconds)
            total = frame_count(video)
            if time.perf_counter() - started > 1:
                print(f"(generated {video} in {time.perf_counter() - started:.0f} s)")
            for clip in args.clip_frames:
                for method in methods:
                    row = {"video": f"{name} {seconds} s", "frames": total, "clip": clip, "method": method}
                    if method == "full" and args.full_max_frames and total > args.full_max_frames:
                        row["skipped"] = f"holds {total} frames (--full_max_frames {args.full_max_frames})"
                        print(f"| {row['video']} | {total} | {clip} | full | - | - | left out: {row['skipped']} |")
                        rows.append(row)
                        continue
                    row.update(run_cell(video, warm, method, clip, args.repeats))
                    rows.append(row)
                    print(f"| {row['video']} | {total} | {clip} | {method} | {row['clips_per_s']:.2f} | "
                          f"{row['s_per_clip']:.3f} | {row['peak_mb']:.0f} |", flush=True)  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"results in {args.out}")
    return rows


if __name__ == "__main__":
    main()
