"""Streaming clips from tar shards (written by ``lsvit data shard``): ``lsvit train --train_shards ...``.

Where the shards are: a ``manifest.json`` (path or URL), the folder holding it, or a pattern of shard files next to
it (``dir/shard-{000000..000099}.tar``, ``dir/shard-00000*.tar``); local paths or any fsspec URL. The manifest gives
every shard's sample count, so an epoch's length is known without opening a shard, and every shard it lists (or the
pattern selects) must exist before a run starts.

How an epoch is split. The shards, in an order shuffled by ``(seed, epoch)`` (manifest order for evaluation), are
read as one sequence of samples. Each rank takes a contiguous range of it: ``ceil(total / world)`` samples for
training, the range wrapping around to the start to pad the last rank as ``DistributedSampler`` pads (so a rank
makes as many batches as with the file tree), and an unpadded ``total / world`` share for evaluation. Inside a
rank, each DataLoader worker takes a contiguous block of whole batches. So each (rank, worker) reader streams its
own run of shards, starting and ending at most part-way into one shard each, and every sample is read by one
reader per epoch. Each reader passes its samples through a shuffle buffer (``--shuffle_buffer`` encoded videos,
seeded by seed, epoch and reader) and decodes only the sampled frames of each clip from memory (lsvit.decode,
PyAV on the bytes), with the clip sampling, transforms and uint8 output of the file-tree dataset (lsvit.data).

Resume position: the DataLoader takes the workers' batches in turn (batch ``k`` of a rank comes from worker
``k % workers``), so ``batches_done`` of a checkpoint says how many batches each worker delivered. On resume each
worker replays its stream (reading, not decoding) up to that point and continues, and the workers' roles rotate so
the next batch comes from the worker that would have made it: the remaining batches are the ones an uninterrupted
run makes, in the same order, as long as the world size and ``--num_workers`` are those of the checkpoint. With
others the reader split changes: the resumed epoch skips the same number of samples per rank from the new split,
so at most ``batches_done x batch_size x world`` samples of that epoch are seen twice or not at all; the next
epoch is exact again.

A sample whose video does not decode, a shard that ends early or breaks part-way: those samples are returned as
failures (``guarded_item``) and skipped by ``collate_clips`` with the reason, as with the file tree.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from lsvit.data import VIDEO_EXTENSIONS, guarded_item, sample_clip
from lsvit.decode import VideoError
from lsvit.errors import DataError
from lsvit.shards import FORMAT, MANIFEST, iter_samples

log = logging.getLogger(__name__)

VIDEO_MEMBERS = tuple(extension.lstrip(".") for extension in VIDEO_EXTENSIONS)
SHUFFLE_STREAM = 0x5348  # keeps the shuffle generators apart from the per-clip ones seeded by (seed, epoch, index)


# ------------------------------------------------------------------------------------------------ locating


@dataclass
class ShardSet:
    """Shards with their sample counts and the position of their first sample in the manifest's order."""

    fs: Any  # an fsspec file system
    paths: list[str]
    counts: list[int]
    offsets: list[int]
    classes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def total(self) -> int:
        return sum(self.counts)

    def display(self, index: int) -> str:
        path = self.paths[index]
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return path if "file" in protocols else self.fs.unstrip_protocol(path)


def expand_braces(pattern: str) -> list[str]:
    """``a{01..03}b`` -> a01b a02b a03b (zero padding kept); ``{x,y}`` lists; several groups multiply."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        low, high = numbers.groups()
        width = len(low) if low.startswith("0") else 0
        choices = [f"{value:0{width}d}" for value in range(int(low), int(high) + 1)]
    else:
        choices = body.split(",")
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def open_shards(spec: str, flag: str = "--train_shards") -> ShardSet:
    """The shards ``spec`` names (see the module docstring); raises :class:`DataError` naming what is missing."""
    import fsspec

    if not spec or not spec.strip():
        raise DataError(f"{flag} is empty: pass a manifest.json, its folder, or a shard pattern written by lsvit data "
                        f"shard")  # fmt: skip
    fs, path = fsspec.core.url_to_fs(spec)
    selected: Optional[list[str]] = None
    if path.endswith(".json"):
        manifest_path = path
    elif not any(char in path for char in "{*?[") and fs.isdir(path):
        manifest_path = f"{path.rstrip('/')}/{MANIFEST}"
    else:
        matches = sorted({found for pattern in expand_braces(path) for found in fs.glob(pattern)})
        if not matches:
            raise DataError(f"{flag} {spec} matches no shard file")
        folders = {match.rsplit("/", 1)[0] for match in matches}
        if len(folders) > 1:
            raise DataError(f"{flag} {spec} matches shards in {len(folders)} folders; name one folder's shards (one "
                            f"manifest describes them)")  # fmt: skip
        manifest_path = f"{folders.pop()}/{MANIFEST}"
        selected = [match.rsplit("/", 1)[-1] for match in matches]
    if not fs.isfile(manifest_path):
        raise DataError(f"{flag} {spec}: no {MANIFEST} at {manifest_path}; shards need the manifest lsvit data shard "
                        f"writes next to them (it holds the sample counts)")  # fmt: skip
    with fs.open(manifest_path, "r") as file:
        manifest = json.load(file)
    if manifest.get("format") != FORMAT:
        raise DataError(f"{flag}: {manifest_path} is not a shard manifest written by lsvit data shard")
    folder = manifest_path.rsplit("/", 1)[0]
    entries, offset = [], 0
    for entry in manifest["shards"]:
        entries.append((entry["name"], int(entry["count"]), offset))
        offset += int(entry["count"])
    if selected is not None:
        known = {name for name, _, _ in entries}
        unknown = [name for name in selected if name not in known]
        if unknown:
            raise DataError(f"{flag} {spec}: {unknown[:3]} are not listed in {manifest_path}; re-run lsvit data shard")
        entries = [entry for entry in entries if entry[0] in set(selected)]
    present = {found.rsplit("/", 1)[-1] for found in fs.ls(folder, detail=False)}
    missing = [name for name, _, _ in entries if name not in present]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{flag}: {len(missing)} of the {len(entries)} shards are missing from {folder}: "
                        f"{', '.join(missing[:3])}{more}; copy them there or re-run lsvit data shard")  # fmt: skip
    if not entries or not sum(count for _, count, _ in entries):
        raise DataError(f"{flag} {spec}: the selected shards hold no samples")
    return ShardSet(fs, [f"{folder}/{name}" for name, _, _ in entries], [count for _, count, _ in entries],
                    [start for _, _, start in entries], list(manifest["classes"]), manifest.get("metadata") or {},
                    spec)  # fmt: skip


# ------------------------------------------------------------------------------------------------ splitting


def rank_range(total: int, rank: int, world: int, pad: bool) -> tuple[int, int]:
    """``(start, count)`` of a rank's contiguous range of the epoch's sample sequence (positions wrap when padded)."""
    if pad:
        per_rank = math.ceil(total / world)
        return rank * per_rank, per_rank
    start = rank * total // world
    return start, (rank + 1) * total // world - start


def worker_block(rank_count: int, batch_size: int, workers: int, role: int) -> tuple[int, int, int]:
    """``(first sample, samples, batches)`` of worker ``role``'s contiguous block of whole batches in its rank."""
    batches = math.ceil(rank_count / batch_size)
    base, extra = divmod(batches, workers)
    first = role * base + min(role, extra)
    count = base + (role < extra)
    start = first * batch_size
    return start, max(0, min((first + count) * batch_size, rank_count) - start), count


def delivered_before(batches_done: int, workers: int, role: int) -> int:
    """Batches worker ``role`` delivered in the first ``batches_done`` (the DataLoader takes workers in turn)."""
    return max(0, (batches_done - role + workers - 1) // workers)


def read_plan(counts: Sequence[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """``(shard position, samples to pass over, samples to take)`` covering positions ``[start, stop)`` of the
    concatenated ``counts`` (positions past the end wrap to the start)."""
    total = sum(counts)
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    plan, position = [], start
    while position < stop:
        within = position % total
        shard = bisect.bisect_right(bounds, within) - 1
        offset = within - bounds[shard]
        take = min(counts[shard] - offset, stop - position)
        plan.append((shard, offset, take))
        position += take
    return plan


# ------------------------------------------------------------------------------------------------ dataset


@dataclass(frozen=True)
class ShardSample:
    """What ``guarded_item`` needs to name a sample: where it is and its label."""

    path: str
    label: int


class ShardClipDataset(IterableDataset):
    """Clips streamed from shards; items and batches as :class:`lsvit.data.VideoClipDataset` makes them.

    ``training`` True: shuffled shard order and shuffle buffer, ranks padded to equal length (the training input);
    False: manifest order, each sample once across ranks (evaluation). The dataset is also its own sampler for
    the trainer: ``num_samples`` (this rank's samples per epoch), ``set_epoch`` and ``skip``.
    """

    def __init__(
        self,
        shards: ShardSet,
        num_frames: int,
        transform,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        batch_size: int = 1,
        shuffle_buffer: int = 0,
        training: bool = True,
        num_workers: int = 0,
        classes: Optional[Sequence[str]] = None,
    ) -> None:
        if num_frames < 1 or batch_size < 1 or shuffle_buffer < 0:
            raise ValueError(f"num_frames={num_frames} and batch_size={batch_size} must be >= 1, shuffle_buffer >= 0")
        self.shards = shards
        self.classes = list(classes if classes is not None else shards.classes)
        self.num_frames, self.transform, self.seed = num_frames, transform, seed
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.shuffle_buffer, self.training = shuffle_buffer, training
        self.epoch = 0
        self.start = 0  # samples of this rank to skip in the next epoch (a mid-epoch resume)
        self.check_readers(max(1, num_workers))

    def check_readers(self, workers: int) -> None:
        readers = self.world * workers
        if len(self.shards.paths) < readers:
            raise DataError(
                f"{len(self.shards.paths)} shards cannot feed {self.world} rank(s) x {workers} DataLoader worker(s) "
                f"= {readers} readers, each streaming its own shards: write at least {readers} shards (lsvit data "
                f"shard --max_count {max(1, self.shards.total // readers)}) or use --num_workers "
                f"{max(0, len(self.shards.paths) // self.world)}"
            )

    # ---- the sampler interface the trainer uses ----------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return rank_range(self.shards.total, self.rank, self.world, self.training)[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def skip(self, samples: int) -> None:
        """Skip this many of this rank's samples in the next epoch (a multiple of the batch size with workers)."""
        self.start = samples

    def __len__(self) -> int:
        return self.shards.total

    # ---- reading -----------------------------------------------------------------------------------------
    def shard_order(self) -> list[int]:
        order = list(range(len(self.shards.paths)))
        if self.training:
            order = np.random.default_rng([self.seed, self.epoch, SHUFFLE_STREAM]).permutation(order).tolist()
        return order

    def raw_samples(self, start: int, stop: int) -> Iterator[tuple[ShardSample, int, Optional[bytes], str]]:
        """``(sample, index, video bytes or None, why not)`` for positions ``[start, stop)`` of this epoch."""
        order = self.shard_order()
        for position, skip, take in read_plan([self.shards.counts[i] for i in order], start, stop):
            shard = order[position]
            yield from self.read_shard(shard, skip, take)

    def read_shard(self, shard: int, skip: int, take: int):
        name = self.shards.display(shard)
        done, problem = 0, "it ends early"
        try:
            with self.shards.fs.open(self.shards.paths[shard], "rb") as file:
                tar = tarfile.open(fileobj=file, mode="r|")
                for number, (key, members) in enumerate(iter_samples(tar)):
                    if number < skip:
                        continue
                    yield self.parse(name, key, members, self.shards.offsets[shard] + number)
                    done += 1
                    if done == take:
                        return
        except (OSError, tarfile.TarError, EOFError) as error:
            problem = f"{type(error).__name__}: {error}"
        for number in range(skip + done, skip + take):  # keep the count: a failure per missing sample
            index = self.shards.offsets[shard] + number
            sample = ShardSample(f"{name}#{number}", -1)
            yield sample, index, None, f"unreadable: shard {name} is damaged after {number} samples: {problem}"

    def parse(self, name: str, key: str, members: dict[str, bytes], index: int):
        sample_path = f"{name}#{key}"
        video = next((members[ext] for ext in VIDEO_MEMBERS if ext in members), None)
        if video is None:
            return ShardSample(sample_path, -1), index, None, f"unreadable: no video member ({sorted(members)})"
        try:
            label = int(members["cls"])
        except (KeyError, ValueError):
            return ShardSample(sample_path, -1), index, None, "unreadable: no integer label (.cls member)"
        if not -1 <= label < len(self.classes):
            return ShardSample(sample_path, -1), index, None, f"unreadable: label {label} is outside the classes"
        return ShardSample(sample_path, label), index, video, ""

    def shuffled(self, samples: Iterator, reader: int) -> Iterator:
        """Reservoir-style shuffle buffer of ``shuffle_buffer`` samples, seeded by (seed, epoch, reader)."""
        if not self.training or self.shuffle_buffer <= 1:
            yield from samples
            return
        rng = np.random.default_rng([self.seed, self.epoch, reader, SHUFFLE_STREAM])
        buffer: list = []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            pick = int(rng.integers(len(buffer)))
            buffer[pick], sample = sample, buffer[pick]
            yield sample
        for pick in rng.permutation(len(buffer)).tolist():
            yield buffer[pick]

    def item(self, sample: ShardSample, index: int, video: Optional[bytes], problem: str) -> dict[str, Any]:
        def load():
            if video is None:
                raise VideoError(problem)
            clip = sample_clip(video, index, self.num_frames, self.transform, self.seed, self.epoch)
            return clip.frames, clip.partial

        return guarded_item(sample, index, load)

    def reader_stream(self, worker: int, workers: int) -> Iterator[tuple[ShardSample, int, Optional[bytes], str]]:
        """The undecoded samples DataLoader worker ``worker`` of ``workers`` yields this epoch, in order, after the
        ones a mid-epoch resume skips."""
        self.check_readers(workers)
        rank_start, rank_count = rank_range(self.shards.total, self.rank, self.world, self.training)
        if workers > 1 and self.start % self.batch_size:
            raise ValueError(f"skip({self.start}) must be a multiple of batch_size={self.batch_size} with workers")
        batches_done = self.start // self.batch_size
        role = (worker + batches_done) % workers  # the worker that would have made the next batch goes first
        first, count, _ = worker_block(rank_count, self.batch_size, workers, role)
        done = self.start if workers == 1 else delivered_before(batches_done, workers, role) * self.batch_size
        reader = self.rank * workers + role
        stream = self.shuffled(self.raw_samples(rank_start + first, rank_start + first + count), reader)
        for number, sample in enumerate(stream):
            if number >= done:  # the ones before were trained on before the checkpoint: read, not decoded
                yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        for sample in self.reader_stream(worker, workers):
            yield self.item(*sample)


def build_shard_data(args, config, info, resumed: Optional[dict[str, Any]]):
    """The trainer's data from ``--train_shards`` (and ``--val_shards``); the dataset is its own sampler."""
    from lsvit.train_setup import TrainData, build_transforms, check_resumed_classes, data_record

    given = [f"--{name}" for name in ("data_root", "train_list", "val_list") if getattr(args, name, None)]
    if given:
        raise DataError(f"{' / '.join(given)} not read with --train_shards: drop it (validation comes from "
                        f"--val_shards)")  # fmt: skip
    if args.val_num_clips > 1 or args.val_num_crops > 1:
        raise DataError("--val_num_clips / --val_num_crops > 1 need a file-tree validation set (--data_root)")
    shards = open_shards(args.train_shards, "--train_shards")
    classes = shards.classes
    if len(classes) < 2:
        raise DataError(f"--train_shards {args.train_shards}: {len(classes)} class(es) {classes}; a classifier needs "
                        f"at least 2")  # fmt: skip
    check_resumed_classes(resumed, classes)
    train_transform, eval_transform, resize, horizontal_flip = build_transforms(args, config, shards.metadata)
    common = {"rank": info.rank, "world": info.world, "batch_size": args.batch_size, "num_workers": args.num_workers}
    train_set = ShardClipDataset(shards, config.num_frames, train_transform, args.seed,
                                 shuffle_buffer=args.shuffle_buffer, training=True, **common)  # fmt: skip
    val_set = None
    if args.val_shards:
        val_shards = open_shards(args.val_shards, "--val_shards")
        if val_shards.classes != classes:
            raise DataError(f"--val_shards {args.val_shards}: its classes differ from the training shards'; pack both "
                            f"splits in one lsvit data shard run so they share the training classes")  # fmt: skip
        val_set = ShardClipDataset(val_shards, config.num_frames, eval_transform, args.seed, training=False, **common)
    if resumed is not None and resumed["sampler"]["batches_done"] > 0:
        before = (resumed.get("world_size", 1), max(1, resumed.get("train_args", {}).get("num_workers", 0)))
        if before != (info.world, max(1, args.num_workers)) and info.main:
            bound = resumed["sampler"]["batches_done"] * args.batch_size * info.world
            log.warning(
                "resuming a shard run mid-epoch with %d rank(s) x %d worker(s), the checkpoint used %d x %d: the rest "
                "of this epoch reads another split of the shards, so up to %d of its samples are seen twice or not "
                "at all (the next epoch is exact; resume with the checkpoint's --num_workers for an exact epoch)",
                info.world, max(1, args.num_workers), *before, bound,
            )  # fmt: skip
    if info.main:
        log.info("data: %d training videos in %d shards from %s, %s validation videos; %d classes; horizontal flip %s",
                 shards.total, len(shards.paths), args.train_shards, val_set.shards.total if val_set else "no",
                 len(classes), "on" if horizontal_flip else "off")  # fmt: skip
    return TrainData(train_set, val_set, list(classes), train_set, data_record(config, resize, horizontal_flip),
                     horizontal_flip)  # fmt: skip
