"""Sparse video decoding: only the frames a clip needs are decoded and kept, resized as they are decoded.

Two backends behind one call, :func:`read_clip`:

- ``pyav`` (the default, ``auto``): the packet table (demuxed, not decoded) gives every frame's presentation
  timestamp; each wanted frame is reached by seeking to the nearest keyframe at or before it and decoding
  forward, and only the wanted frames are converted (by swscale, straight to the output size) and kept. PyAV's
  wheels carry their own FFmpeg, so it works everywhere.
- ``torchcodec`` (``VideoDecoder(seek_mode="exact").get_frames_at``, resized by its decoder-native ``Resize``):
  measured no faster on CPU (lsvit/bench/decode.py, docs/training.md), so it is used when asked for. It needs the
  system FFmpeg libraries; asked for without them, it stops with the fix.

Frame ``i`` is the ``i``-th frame in presentation order, the same frame full decoding yields at position ``i``.
Peak memory is bounded by the clip plus one group of pictures, not by the video.

A frame the container lists but the decoder cannot produce (corrupt or missing data part-way) does not sink the
clip: the decodable prefix is counted (decoded forward, nothing kept), the frames are chosen again inside it, and
the clip is marked ``partial`` so runs can count such videos. Frame folders (mmaction2 "rawframes": one JPEG per
frame) are read the same way, one image per wanted frame.
"""

from __future__ import annotations

import bisect
import functools
import io
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

DECODERS = ("auto", "torchcodec", "pyav")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


class VideoError(Exception):
    """A video that cannot give a clip; the message is the reason reported in the skip list."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says (``frames``: entries in its packet table, or images in a frame folder)."""

    frames: int
    width: int
    height: int
    fps: float
    duration: float  # seconds
    codec: str


@dataclass
class Clip:
    """``frames`` ``(T, H, W, 3)`` uint8; ``indices`` the frames used; ``partial`` why only a prefix was usable."""

    frames: torch.Tensor
    indices: list[int]
    available: int
    partial: Optional[str] = None


# ------------------------------------------------------------------------------------------------ checks


def file_kind(path: Path) -> Optional[str]:
    """None for a regular file or a directory; otherwise what it is (FIFO, socket, device...). Never opens it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"not accessible ({error.strerror})"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device")):
        if test(mode):
            return name
    return "a block device" if stat.S_ISBLK(mode) else "not a regular file"


def require_openable(path: Path) -> None:
    """Raise :class:`VideoError` for a missing path or one that is not a regular file (never opened: a FIFO
    would block the reader forever)."""
    kind = file_kind(path)
    if kind == "missing":
        raise VideoError("unreadable: file not found")
    if kind is not None:
        raise VideoError(f"not a regular file: {kind} (never opened)")


# ------------------------------------------------------------------------------------------------ backends


@functools.cache
def torchcodec_error() -> Optional[str]:
    """None when torchcodec and its FFmpeg libraries load in this process, else why not (checked once)."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as error:  # noqa: BLE001  (ImportError, or RuntimeError when FFmpeg's libraries are absent)
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def resolve_decoder(decoder: str = "auto") -> str:
    """``torchcodec`` or ``pyav``. ``auto`` is PyAV's seek path: measured as fast as torchcodec or faster, with the
    same memory, and it needs no system library (docs/training.md). An explicit torchcodec must load."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}; choose from {DECODERS}")
    if decoder in ("auto", "pyav"):
        return "pyav"
    error = torchcodec_error()
    if error is not None:
        raise ValueError(
            f"decoder torchcodec cannot load ({error}); install the system FFmpeg libraries "
            f"(apt-get install ffmpeg, or make setup) or use --decoder pyav"
        )
    return "torchcodec"


def output_size(height: int, width: int, shorter_side: Optional[int]) -> tuple[int, int]:
    """(H, W) with the shorter side ``shorter_side`` (aspect ratio kept), or unchanged for None."""
    if shorter_side is None:
        return height, width
    scale = shorter_side / min(height, width)
    return max(shorter_side, round(height * scale)), max(shorter_side, round(width * scale))


# ----------------------------------------------------------------------------------------------- PyAV


def _open_pyav(path: Path | bytes):
    """``path`` a file, or the encoded video itself (``bytes``: a tar shard's member, decoded from memory)."""
    source = io.BytesIO(path) if isinstance(path, (bytes, bytearray, memoryview)) else str(path)
    try:
        container = av.open(source)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoError(f"unreadable: {error}") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream")
    stream = container.streams.video[0]
    stream.thread_count = 1  # DataLoader workers already decode in parallel
    return container, stream


def _packet_table(container, stream) -> tuple[list[int], list[int]]:
    """Presentation timestamps of every frame (sorted) and of the keyframes, from demuxing alone."""
    timestamps, keyframes = [], []
    for packet in container.demux(stream):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None or packet.size == 0:
            continue
        timestamps.append(stamp)
        if packet.is_keyframe:
            keyframes.append(stamp)
    timestamps.sort()
    keyframes.sort()
    return timestamps, keyframes


def _stream_info(container, stream, frames: int) -> VideoInfo:
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = frames / fps if fps else 0.0
    return VideoInfo(frames, stream.width, stream.height, fps, duration, stream.codec_context.name)


class _Converter:
    """One swscale context per process (creating one per frame costs ~1 ms), straight to RGB at the output size."""

    reformatter: Optional[VideoReformatter] = None

    @classmethod
    def rgb(cls, frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
        if cls.reformatter is None:
            cls.reformatter = VideoReformatter()
        height, width = size
        converted = cls.reformatter.reformat(
            frame, width=width, height=height, format="rgb24", interpolation="BILINEAR", threads=1
        )
        return converted.to_ndarray()


def _pyav_sparse(container, stream, timestamps, keyframes, wanted: Sequence[int], size) -> dict[int, np.ndarray]:
    """Frames ``wanted`` (sorted, unique): seek to the keyframe at or before each, decode forward, keep only those."""
    index_of = {timestamps[i]: i for i in wanted}
    found: dict[int, np.ndarray] = {}
    frames = None  # the running decode generator
    position: Optional[int] = None  # timestamp of the last decoded frame
    for i in wanted:
        if i in found:
            continue
        target = timestamps[i]
        key = keyframes[max(0, bisect.bisect_right(keyframes, target) - 1)] if keyframes else timestamps[0]
        if frames is None or position is None or position >= target or key > position:
            container.seek(key, stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
            position = None
        for frame in frames:
            if frame.pts is None:
                raise _NoTimestamps
            position = frame.pts
            if position in index_of and index_of[position] not in found:
                found[index_of[position]] = _Converter.rgb(frame, size)
            if position >= target:
                break
        else:
            frames = None  # the stream ended before the target: the frame is missing
    return found


class _NoTimestamps(Exception):
    """Frames without timestamps: count frames in decode order instead."""


def _pyav_forward(container, stream, wanted: Sequence[int], size, stop_early: bool) -> tuple[dict, int]:
    """Decode from the start, keeping only frames ``wanted`` (by decode-order position); returns them and how
    many frames decoded before the end or the first error."""
    container.seek(0, stream=stream, backward=True)
    wanted_set, last = set(wanted), max(wanted, default=-1)
    found: dict[int, np.ndarray] = {}
    count = 0
    try:
        for frame in container.decode(stream):
            if count in wanted_set:
                found[count] = _Converter.rgb(frame, size)
            count += 1
            if stop_early and count > last:
                break
    except (av.FFmpegError, OSError):
        pass
    return found, count


class _PyAVReader:
    def __init__(self, path: Path | bytes) -> None:
        self.container, self.stream = _open_pyav(path)
        try:
            self.timestamps, self.keyframes = _packet_table(self.container, self.stream)
        except (av.FFmpegError, OSError) as error:
            self.close()
            raise VideoError(f"corrupt: cannot read the packets: {error}") from None
        self.info = _stream_info(self.container, self.stream, len(self.timestamps))

    def read(self, indices: Sequence[int], size: tuple[int, int]) -> dict[int, np.ndarray]:
        wanted = sorted(set(indices))
        try:
            return _pyav_sparse(self.container, self.stream, self.timestamps, self.keyframes, wanted, size)
        except _NoTimestamps:
            return _pyav_forward(self.container, self.stream, wanted, size, stop_early=True)[0]
        except (av.FFmpegError, OSError):
            return {}

    def decodable_prefix(self) -> int:
        return _pyav_forward(self.container, self.stream, [], None, stop_early=False)[1]

    def read_prefix(self, indices: Sequence[int], size) -> dict[int, np.ndarray]:
        return _pyav_forward(self.container, self.stream, sorted(set(indices)), size, stop_early=True)[0]

    def close(self) -> None:
        self.container.close()


# ----------------------------------------------------------------------------------------------- torchcodec


class _TorchCodecReader:
    def __init__(self, path: Path, shorter_side: Optional[int]) -> None:
        from torchcodec.decoders import VideoDecoder, get_container_metadata
        from torchcodec.transforms import Resize

        self.path = path
        try:
            header = get_container_metadata(str(path))
            stream = next((s for s in header.streams if s.media_type == "video"), None)
            if stream is None:
                raise VideoError("no video stream")
            size = output_size(stream.height, stream.width, shorter_side)
            resize = [Resize(size)] if size != (stream.height, stream.width) else None
            self.decoder = VideoDecoder(
                str(path), seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1, transforms=resize
            )
        except VideoError:
            raise
        except Exception as error:  # noqa: BLE001  (torchcodec raises RuntimeError/ValueError for bad files)
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise VideoError(f"unreadable: {first_line}") from None
        meta = self.decoder.metadata
        duration = meta.duration_seconds or meta.duration_seconds_from_header or 0.0
        self.info = VideoInfo(
            meta.num_frames or 0, meta.width, meta.height, float(meta.average_fps or 0), duration, meta.codec or ""
        )
        self.size = size

    def read(self, indices: Sequence[int], size) -> dict[int, np.ndarray]:
        wanted = sorted(set(indices))
        try:
            batch = self.decoder.get_frames_at(wanted).data  # (T, H, W, 3) uint8
        except Exception:  # noqa: BLE001  (a frame that does not decode: the caller falls back to the prefix)
            return {}
        return {i: batch[k] for k, i in enumerate(wanted)}

    def _fallback(self) -> _PyAVReader:
        return _PyAVReader(self.path)

    def decodable_prefix(self) -> int:
        reader = self._fallback()
        try:
            return reader.decodable_prefix()
        finally:
            reader.close()

    def read_prefix(self, indices: Sequence[int], size) -> dict[int, np.ndarray]:
        reader = self._fallback()
        try:
            return reader.read_prefix(indices, size)
        finally:
            reader.close()

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------- frame folders


def frame_files(folder: Path) -> list[Path]:
    """Images of a frame folder in name order (``img_00001.jpg``, ...)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)


class _FrameFolderReader:
    """A folder of one image per frame: only the wanted images are opened; JPEGs decode at reduced scale."""

    def __init__(self, folder: Path, frames: Optional[int]) -> None:
        self.files = frame_files(folder)
        if not self.files:
            raise VideoError(f"empty: no {FRAME_EXTENSIONS} images in the frame folder")
        from PIL import Image

        with Image.open(self.files[0]) as first:
            width, height = first.size
        listed = len(self.files) if frames is None else min(frames, len(self.files))
        self.info = VideoInfo(listed, width, height, 0.0, 0.0, "images")

    def read(self, indices: Sequence[int], size) -> dict[int, np.ndarray]:
        from PIL import Image

        found = {}
        for i in sorted(set(indices)):
            try:
                with Image.open(self.files[i]) as image:
                    image.draft("RGB", (size[1], size[0]))  # JPEG: decode at the smallest scale >= the output
                    found[i] = np.array(image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
            except (OSError, ValueError):
                break
        return found

    def decodable_prefix(self) -> int:
        return len(self.read(range(self.info.frames), (1, 1)))

    def read_prefix(self, indices, size) -> dict[int, np.ndarray]:
        return self.read(indices, size)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ public


def open_reader(
    path: Path | bytes, decoder: str = "auto", shorter_side: Optional[int] = None, frames: Optional[int] = None
):
    """A reader for a video file, a frame folder, or an encoded video in memory (``bytes``, always read by PyAV:
    its container opens a file object); raises :class:`VideoError` with the reason."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        return _PyAVReader(path)
    path = Path(path)
    require_openable(path)
    if path.is_dir():
        return _FrameFolderReader(path, frames)
    if resolve_decoder(decoder) == "torchcodec":
        return _TorchCodecReader(path, shorter_side)
    return _PyAVReader(path)


def probe(path: Path, decoder: str = "auto", frames: Optional[int] = None) -> VideoInfo:
    """Frame count, size, frame rate, duration and codec, from the container (no frame decoded). ``frames``
    caps the count of a frame folder, as in :func:`read_clip`."""
    reader = open_reader(path, decoder, None, frames)
    try:
        return reader.info
    finally:
        reader.close()


def _stack(found: dict[int, np.ndarray], indices: Sequence[int]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(found[i])) for i in indices])


def read_clip(
    path: Path | bytes,
    choose: Callable[[int], list[int]],
    decoder: str = "auto",
    shorter_side: Optional[int] = None,
    frames: Optional[int] = None,
) -> Clip:
    """Decode the frames ``choose(available)`` picks, resized so the shorter side is ``shorter_side``.

    ``path`` a file, a frame folder, or the encoded bytes of a video. ``choose`` raises :class:`VideoError` when
    ``available`` is too few. ``frames`` caps the frame count of a frame folder (the count an annotation list
    states).
    """
    reader = open_reader(path, decoder, shorter_side, frames)
    try:
        info = reader.info
        if info.frames <= 0:
            raise VideoError("empty: no frames")
        size = output_size(info.height, info.width, shorter_side)
        indices = choose(info.frames)
        found = reader.read(indices, size)
        if all(i in found for i in indices):
            return Clip(_stack(found, indices), indices, info.frames)
        # Some wanted frame did not decode: use the decodable prefix if it still holds enough frames.
        available = reader.decodable_prefix()
        if available <= 0:
            raise VideoError(f"corrupt: no frame decodes ({info.frames} listed)")
        try:
            indices = choose(available)
        except VideoError as error:
            raise VideoError(f"corrupt: decoding fails after {available} of {info.frames} frames; {error}") from None
        found = reader.read_prefix(indices, size)
        if not all(i in found for i in indices):
            raise VideoError(f"corrupt: frames {sorted(set(indices) - set(found))} do not decode")
        # All listed frames decode (timestamps the seek path could not match): a full clip, not a partial one.
        note = None if available >= info.frames else f"partial: {available} of {info.frames} frames decode"
        return Clip(_stack(found, indices), indices, available, note)
    finally:
        reader.close()


def read_all_frames(path: Path) -> list[np.ndarray]:
    """Every frame, decoded in order with PyAV (the reference the sparse readers are tested against)."""
    container, stream = _open_pyav(path)
    with container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
