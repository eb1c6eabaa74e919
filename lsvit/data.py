"""Video datasets for action recognition: video records in, uint8 clips out.

Records come from lsvit.formats (class folders, lists, UCF101/HMDB51 splits, Kinetics CSV, SSv2 JSON, mmaction2
lists); this module reads the two plain sources itself:
- a root folder with one sub-folder per class (``root/<class>/<video>.mp4``; classes sorted by name, or taken
  from ``root/classes.txt`` when present);
- an annotation list file, one ``relative/path label`` per line (paths relative to ``root``; label an integer
  index, or a class name found in ``classes.txt``).

Each item is sampled TSN-style: the video's frames are cut into ``num_frames`` equal segments and one frame is
taken from each (a random offset per segment for training, the segment centre for evaluation). Only those frames
are decoded (lsvit.decode: torchcodec, or PyAV seeking to the nearest keyframe), resized while decoding so the
shorter side is ``resize_size``, then cropped to ``image_size`` (random crop and optional horizontal flip for
training, centre crop for evaluation). Clips stay uint8, ``(T, C, H, W)``, batches ``(B, T, C, H, W)``: the
loader ships a quarter of the float32 bytes, and the model takes them as they are with the mean and std
(``model(clip, mean=..., std=...)``: its input op normalizes each value it reads); :func:`to_model_input`
normalizes on the device where a float clip is needed (mixup blends normalized clips).

A video that cannot be used never stops a run or shifts labels. ``__getitem__`` returns the failure instead of a
clip and :func:`collate_clips` drops it from the batch, keeping every remaining clip next to its own label, and
lists it under ``batch["skipped"]`` as ``(path, reason)``. Reasons: *unreadable* (the container does not open),
*no video stream*, *corrupt* (decoding fails before ``num_frames`` frames), *empty* (no frames), *too short* (fewer
frames than ``num_frames``; skipped rather than padded by repeating frames), *not a regular file* (a FIFO or
device: never opened). A video whose decoding fails part-way but after enough frames is sampled from its
decodable prefix and listed under ``batch["partial"]``.

Randomness (segment offsets, crop, flip) comes from a generator seeded by ``(seed, epoch, index)``, so a clip is
the same whichever worker or process loads it: resumed and distributed runs see identical data.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter
from torch.utils.data import Dataset

from lsvit.decode import Clip, VideoError, read_clip, resolve_decoder
from lsvit.errors import DataError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSES_FILE = "classes.txt"
METADATA_FILE = "dataset.json"


@dataclass(frozen=True)
class VideoRecord:
    path: Path  # a video file, or a folder of frame images (mmaction2 rawframes)
    label: int  # -1 when unknown (inference on unlabeled videos)
    frames: Optional[int] = None  # frame count an annotation list states for a frame folder


# ----------------------------------------------------------------------------------------------- discovery


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def read_classes_file(root: Path) -> Optional[list[str]]:
    file = root / CLASSES_FILE
    if not file.is_file():
        return None
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def read_metadata(root: Path) -> dict[str, Any]:
    """``dataset.json`` next to the data (written by ``lsvit data synth``), or ``{}``."""
    file = Path(root) / METADATA_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


SPLIT_FOLDER = re.compile(r"^(train|training|val|valid|validation|test|testing|trainval|eval)([_\-.]?[0-9a-z]*)$", re.I)


def looks_like_splits(folders: Sequence[str]) -> bool:
    """Folder names such as ``train``/``val``/``test_256``: split folders, not classes."""
    return bool(folders) and all(SPLIT_FOLDER.match(name) for name in folders)


def scan_class_folders(root: Path, classes: Optional[Sequence[str]] = None) -> tuple[list[VideoRecord], list[str]]:
    """Records of ``root/<class>/*.<video ext>`` (recursively inside each class folder) and the class names."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if looks_like_splits(folders):
        raise DataError(
            f"the folders under {root} ({', '.join(folders)}) look like dataset splits, not classes: pass one of "
            f"them as the data folder (e.g. --train_list {root / folders[0]}, or infer's --split {folders[-1]}), "
            f"or name the splits train/ and val/ so --data_root {root} finds them"
        )
    if classes is None:
        classes = folders
    if not classes:
        raise FileNotFoundError(
            f"no class folders under {root}: expected {root}/<class_name>/<video>{VIDEO_EXTENSIONS[0]} "
            f"(or pass an annotation list file)"
        )
    index = {name: label for label, name in enumerate(classes)}
    unknown = [name for name in folders if name not in index]
    if unknown:
        raise ValueError(f"folders {unknown} under {root} are not among the {len(classes)} known classes {classes}")
    records = [
        VideoRecord(path, index[name])
        for name in folders
        for path in sorted((root / name).rglob("*"))
        if is_video(path)
    ]
    if not records:
        raise FileNotFoundError(f"no videos with extensions {VIDEO_EXTENSIONS} in the class folders under {root}")
    return records, list(classes)


def read_annotation_list(
    list_file: Path, root: Optional[Path] = None, classes: Optional[Sequence[str]] = None
) -> list[VideoRecord]:
    """Records from ``relative/path label`` lines (blank lines and ``#`` comments ignored)."""
    root = list_file.parent if root is None else root
    index = {name: label for label, name in enumerate(classes or [])}
    records = []
    for number, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 1:
            records.append(VideoRecord(root / parts[0], -1))
            continue
        relative, label_text = parts
        if label_text.lstrip("-").isdigit():
            label = int(label_text)
        elif label_text in index:
            label = index[label_text]
        else:  # a path with spaces and no label, or an unknown class name
            raise ValueError(
                f"{list_file}:{number}: cannot read a label from {line!r}; expected 'relative/path label' with "
                f"an integer label or a class name from {root / CLASSES_FILE}"
            )
        if classes and not -1 <= label < len(classes):
            raise ValueError(f"{list_file}:{number}: label {label} is outside 0..{len(classes) - 1}")
        records.append(VideoRecord(root / relative, label))
    if not records:
        raise ValueError(f"{list_file} lists no videos")
    return records


def discover(source: str | Path, root: Optional[str | Path] = None) -> tuple[list[VideoRecord], list[str]]:
    """Records and class names from a class-folder root, an annotation list, or a folder of loose videos.

    ``source`` a folder: class sub-folders (or, with no sub-folders, unlabeled videos directly inside).
    ``source`` a video file: that one video, unlabeled. ``source`` another file: an annotation list; ``root``
    (default: the list's folder) anchors its relative paths.
    ``classes.txt`` (the class order, label = line index) is read from ``source`` (a folder) or ``root``; without
    one, class folders are sorted by name.
    """
    source = Path(source)
    if source.suffix.lower() in VIDEO_EXTENSIONS and source.is_file():  # one video: unlabeled
        return [VideoRecord(source, -1)], []
    if source.is_file():
        base = Path(root) if root is not None else source.parent
        classes = read_classes_file(base)
        records = read_annotation_list(source, base, classes)
        if classes is None:
            top = max((r.label for r in records), default=-1)
            classes = [str(i) for i in range(top + 1)]
        return records, classes
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is neither a data folder nor an annotation list file")
    classes = read_classes_file(source) or (read_classes_file(Path(root)) if root is not None else None)
    if not any(p.is_dir() for p in source.iterdir()):
        videos = sorted(p for p in source.iterdir() if is_video(p))
        if not videos:
            raise FileNotFoundError(f"no videos with extensions {VIDEO_EXTENSIONS} in {source}")
        return [VideoRecord(p, -1) for p in videos], classes or []
    return scan_class_folders(source, classes)


def split_source(data_root: str | Path, split: str) -> Optional[Path]:
    """Where a named split lives under ``data_root``: ``<root>/<split>.txt`` or ``<root>/<split>/``, else None."""
    root = Path(data_root)
    for candidate in (root / f"{split}.txt", root / split):
        if candidate.exists():
            return candidate
    return None


# ------------------------------------------------------------------------------------------------ decoding


def decode_frames(path: Path) -> list[av.VideoFrame]:
    """Every decodable frame of the first video stream; raises :class:`VideoError` with the reason."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoError(f"unreadable: {error}") from None
    with container:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        stream.thread_count = 1  # clips are short and DataLoader workers already run in parallel
        frames: list[av.VideoFrame] = []
        try:
            for frame in container.decode(stream):
                frames.append(frame)
        except (av.FFmpegError, OSError) as error:
            raise VideoError(f"corrupt: decoding failed after {len(frames)} frames: {error}") from None
    if not frames:
        raise VideoError("empty: no decodable frames")
    return frames


def segment_indices(num_available: int, num_frames: int, rng: Optional[np.random.Generator]) -> list[int]:
    """TSN sampling: one frame per each of ``num_frames`` equal segments of ``[0, num_available)``.

    ``rng`` given (training): a uniformly random frame inside each segment. ``rng`` None (evaluation): the
    frame at each segment's centre.
    """
    if num_available < num_frames:
        raise VideoError(f"too short: {num_available} decodable frames, need num_frames={num_frames}")
    segment = num_available / num_frames
    starts = np.arange(num_frames) * segment
    if rng is None:
        positions = starts + segment / 2
    else:
        positions = starts + rng.uniform(0, segment, num_frames)
    return [min(int(p), num_available - 1) for p in positions]


_REFORMATTER: Optional[VideoReformatter] = None


def frames_to_rgb(frames: Sequence[av.VideoFrame]) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 RGB. One swscale context per process: creating one per frame costs ~1 ms."""
    global _REFORMATTER
    if _REFORMATTER is None:
        _REFORMATTER = VideoReformatter()
    return np.stack([_REFORMATTER.reformat(f, format="rgb24", threads=1).to_ndarray() for f in frames])


# -------------------------------------------------------------------------------------------- transforms


def resize_shorter_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """``(T, C, H, W)`` float -> shorter side ``size`` (antialiased bilinear), aspect ratio kept."""
    height, width = clip.shape[-2:]
    scale = size / min(height, width)
    new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
    if new_size == (height, width):
        return clip
    return F.interpolate(clip, size=new_size, mode="bilinear", antialias=True, align_corners=False)


def resize_uint8(clip: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(T, C, H, W)`` with the shorter side ``size``; returned as is when it already has it."""
    if min(clip.shape[-2:]) == size:
        return clip
    return resize_shorter_side(clip.float(), size).round_().clamp_(0, 255).to(torch.uint8)


def crop(clip: torch.Tensor, size: int, rng: Optional[np.random.Generator]) -> torch.Tensor:
    """Same ``size x size`` window on every frame: random with ``rng`` (training), else centred."""
    height, width = clip.shape[-2:]
    if rng is None:
        top, left = (height - size) // 2, (width - size) // 2
    else:
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    return clip[..., top : top + size, left : left + size]


def normalize_clip(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(..., C, H, W)`` -> float32 ``(x / 255 - mean) / std`` per channel, on the tensor's device."""
    channels = video.shape[-3]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=video.device).view(channels, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=video.device).view(channels, 1, 1)
    return ((video.float() / 255 - mean_t) / std_t).contiguous()


def to_model_input(
    video: torch.Tensor,
    device: torch.device,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """A batch of uint8 clips ``(B, T, C, H, W)`` (pinned when loaded for CUDA) -> normalized float32 on
    ``device``. The copy moves uint8, a quarter of the float32 bytes, and overlaps with compute."""
    return normalize_clip(video.to(device, non_blocking=True), mean, std)


@dataclass(frozen=True)
class ClipTransform:
    """uint8 frames ``(T, H, W, 3)`` -> ``(T, 3, image_size, image_size)``.

    :meth:`crop_clip` gives uint8 (what the data loader ships); calling the transform also normalizes
    (float32), as :func:`to_model_input` does on the device.
    """

    image_size: int
    resize_size: int
    train: bool
    horizontal_flip: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size={self.resize_size} must be >= image_size={self.image_size}")

    def crop_clip(self, frames: np.ndarray | torch.Tensor, rng: Optional[np.random.Generator]) -> torch.Tensor:
        """uint8 ``(T, 3, image_size, image_size)``; frames not yet at ``resize_size`` are resized here."""
        clip = torch.as_tensor(frames).permute(0, 3, 1, 2)  # (T, C, H, W) uint8
        clip = resize_uint8(clip, self.resize_size)  # a no-op when the decoder resized
        clip = crop(clip, self.image_size, rng if self.train else None)
        if self.train and self.horizontal_flip and rng is not None and rng.random() < 0.5:
            clip = clip.flip(-1)
        return clip.contiguous()

    def __call__(self, frames: np.ndarray | torch.Tensor, rng: Optional[np.random.Generator]) -> torch.Tensor:
        return normalize_clip(self.crop_clip(frames, rng), self.mean, self.std)


def default_resize_size(image_size: int) -> int:
    """The usual 256-for-224 ratio: crops keep 87.5% of the shorter side."""
    return int(math.ceil(image_size * 256 / 224))


# ---------------------------------------------------------------------------------------------- datasets


class VideoClipDataset(Dataset):
    """Clips of ``num_frames`` frames from a list of records; see the module docstring.

    ``dataset[i]`` is a dict: ``video`` ``(T, C, H, W)`` uint8 or None, ``label``, ``index``, ``path``,
    ``error`` (None, or why this video was skipped) and ``partial`` (None, or why only a decodable prefix of the
    video was sampled). ``decoder``: ``auto``, ``torchcodec`` or ``pyav`` (lsvit.decode).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        classes: Sequence[str],
        num_frames: int,
        transform: ClipTransform,
        seed: int = 0,
        decoder: str = "auto",
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames} must be >= 1")
        self.records = list(records)
        self.classes = list(classes)
        self.num_frames = num_frames
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.decoder = resolve_decoder(decoder)  # once, so an explicit choice that cannot load fails here

    @classmethod
    def from_source(
        cls,
        source: str | Path,
        num_frames: int,
        transform: ClipTransform,
        root: Optional[str | Path] = None,
        seed: int = 0,
        classes: Optional[Sequence[str]] = None,
        decoder: str = "auto",
    ) -> VideoClipDataset:
        records, found = discover(source, root)
        return cls(records, classes if classes is not None else found, num_frames, transform, seed, decoder)

    def set_epoch(self, epoch: int) -> None:
        """Training randomness is a function of (seed, epoch, index); call before iterating each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def load_clip(self, index: int) -> Clip:
        """The sampled frames, cropped, uint8 ``(T, C, H, W)`` in ``Clip.frames``."""
        record = self.records[index]
        return sample_clip(record.path, index, self.num_frames, self.transform, self.seed, self.epoch, self.decoder,
                           record.frames)  # fmt: skip

    def __getitem__(self, index: int) -> dict[str, Any]:
        def load() -> tuple[torch.Tensor, Optional[str]]:
            clip = self.load_clip(index)
            return clip.frames, clip.partial

        return guarded_item(self.records[index], index, load)


def sample_clip(
    source: Path | bytes,
    index: int,
    num_frames: int,
    transform: ClipTransform,
    seed: int,
    epoch: int,
    decoder: str = "pyav",
    frames: Optional[int] = None,
) -> Clip:
    """Clip ``index`` of a dataset from a file, frame folder or encoded bytes: TSN-sampled frames, decoded sparsely
    and cropped, uint8 ``(T, C, H, W)`` in ``Clip.frames``. Training randomness comes from ``(seed, epoch, index)``
    only, so the clip does not depend on which worker, process or storage (file tree or shard) loads it."""
    rng = np.random.default_rng([seed, epoch, index]) if transform.train else None
    clip = read_clip(
        source,
        lambda available: segment_indices(available, num_frames, rng),
        decoder,
        transform.resize_size,
        frames,
    )
    clip.frames = transform.crop_clip(clip.frames, rng)
    return clip


def guarded_item(record: VideoRecord, index: int, load: Callable[[], tuple[Any, Optional[str]]]) -> dict[str, Any]:
    """A dataset item: ``load()``'s ``(video, partial)``, or the reason it failed in ``error`` (a bad file must
    not stop the run; ``collate_clips`` counts it as skipped)."""
    item = {
        "video": None, "label": record.label, "index": index, "path": str(record.path), "error": None,
        "partial": None,
    }  # fmt: skip
    try:
        item["video"], item["partial"] = load()
    except VideoError as error:
        item["error"] = str(error)
    except Exception as error:  # noqa: BLE001  (a bad file must not stop the run; the reason is reported)
        item["error"] = f"unreadable: {type(error).__name__}: {error}"
    return item


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the clips that loaded; each keeps its own label and index. Failures go to ``skipped``.

    Returns ``video`` ``(B, T, C, H, W)`` uint8 (None when every item failed), ``label`` ``(B,)`` int64,
    ``index`` ``(B,)`` int64, ``path`` (list), ``skipped`` (list of ``(path, reason)``) and ``partial`` (list of
    ``(path, note)`` for clips sampled from a decodable prefix).
    """
    good = [item for item in items if item["error"] is None]
    skipped = [(item["path"], item["error"]) for item in items if item["error"] is not None]
    return {
        "video": torch.stack([item["video"] for item in good]) if good else None,
        "label": torch.tensor([item["label"] for item in good], dtype=torch.int64),
        "index": torch.tensor([item["index"] for item in good], dtype=torch.int64),
        "path": [item["path"] for item in good],
        "skipped": skipped,
        "partial": [(item["path"], item["partial"]) for item in good if item.get("partial")],
    }


class SkipLog:
    """Skipped and partially decoded videos of a run: logs each path once with its reason, counts skips per
    epoch."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger
        self.reasons: dict[str, str] = {}
        self.partial: dict[str, str] = {}  # videos used from a decodable prefix, with the note
        self.count = 0

    def add(self, skipped: Sequence[tuple[str, str]], partial: Sequence[tuple[str, str]] = ()) -> None:
        for path, reason in skipped:
            self.count += 1
            if path not in self.reasons:
                self.logger.warning("skipping video %s: %s", path, reason)
            self.reasons[path] = reason
        for path, note in partial:
            if path not in self.partial:
                self.logger.warning("using part of video %s: %s", path, note)
            self.partial[path] = note

    def summary(self) -> None:
        """The end of a run: every skipped path with its reason, and how many videos were used in part."""
        if self.reasons:
            self.logger.warning("%d distinct videos were skipped during this run:", len(self.reasons))
            for path, reason in sorted(self.reasons.items()):
                self.logger.warning("  %s: %s", path, reason)
        if self.partial:
            self.logger.warning("%d videos were used from their decodable prefix", len(self.partial))

    def reset_count(self) -> int:
        count, self.count = self.count, 0
        return count
