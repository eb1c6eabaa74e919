"""Small encoded test videos: frames that carry their own index, corrupt streams, long high-resolution files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lsvit.synth import write_mp4

BITS = 8  # frame index encoded in 8 blocks across the top band: up to 255 frames


def index_frame(index: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A frame whose top band spells ``index`` in binary (black/white blocks) over textured content."""
    frame = rng.integers(40, 200, (height, width, 3), dtype=np.uint8)
    block = width // BITS
    for bit in range(BITS):
        frame[: height // 3, bit * block : (bit + 1) * block] = 255 if (index >> bit) & 1 else 0
    return frame


def read_index(frame: np.ndarray) -> int:
    """The index :func:`index_frame` wrote, read from the centre of each block (any resolution)."""
    height, width = frame.shape[:2]
    block = width / BITS
    bits = [frame[height // 6, int((bit + 0.5) * block)].mean() > 127 for bit in range(BITS)]
    return sum(1 << bit for bit, on in enumerate(bits) if on)


def write_index_video(path: Path, frames: int, height: int = 48, width: int = 96, gop: int = 5) -> Path:
    """An H.264 video (B-frames on) whose frame ``i`` shows ``i``; keyframes every ``gop`` frames."""
    rng = np.random.default_rng(frames)
    video = (index_frame(i, height, width, rng) for i in range(frames))
    write_mp4(path, video, fps=25, crf=18, preset="veryfast", gop=gop)
    return path


def write_corrupt_tail(path: Path, frames: int = 24, good: int = 15, size: int = 48) -> Path:
    """An mp4 listing ``frames`` frames whose packets after the first ``good`` are noise: decoding fails there."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast", "g": "4"}
        muxed = 0

        def mux(packet):
            nonlocal muxed
            if muxed >= good:  # keep the NAL length prefix: the demuxer lists the packet, the decoder fails
                payload = memoryview(packet)
                payload[4:] = rng.integers(0, 256, packet.size - 4, dtype=np.uint8).tobytes()
                payload[4] = 0xFF  # NAL header with the forbidden bit set: the decoder rejects the packet
            container.mux(packet)
            muxed += 1

        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(index_frame(i, size, size, rng), format="rgb24")):
                mux(packet)
        for packet in stream.encode():
            mux(packet)
    return path


def write_clip(path: Path, frames: int = 10, size: int = 32, seed: int = 0) -> Path:
    """A short moving-polygon video; the codec follows the suffix (.webm: VP8, else H.264)."""
    from lsvit.synth import render_video

    video = render_video("left", np.random.default_rng(seed), size, frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".webm":
        write_mp4(path, video, fps=8, crf=23, preset="ultrafast")
        return path
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=Fraction(8))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(folder: Path, frames: int = 10, size: int = 32, seed: int = 0) -> Path:
    """``img_00001.jpg`` ... one JPEG per frame (mmaction2 rawframes)."""
    from PIL import Image

    from lsvit.synth import render_video

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(render_video("up", np.random.default_rng(seed), size, frames), start=1):
        Image.fromarray(frame).save(folder / f"img_{i:05d}.jpg", quality=90)
    return folder
