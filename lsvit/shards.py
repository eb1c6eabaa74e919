"""``lsvit data shard``: pack a dataset into tar shards of encoded videos and labels, for streaming training.

Any ``--data_format`` that lists video files (class folders, lists, UCF101 / HMDB51 splits, Kinetics CSV, SSv2
JSON, mmaction2 video lists) is read as ``lsvit data check`` and ``lsvit train`` read it; each split goes to
``OUT/<split>/shard-000000.tar, shard-000001.tar, ...`` plus ``OUT/<split>/manifest.json``.

Shards follow the WebDataset conventions, so ``webdataset``, ``tar tf`` or Python's ``tarfile`` read them: the
members of one sample are consecutive and share a key (the name up to the first dot), ``{key}.mp4`` (the video
file's bytes as they were, with its own extension), ``{key}.cls`` (the label index as text) and ``{key}.json``
(label, class name, original path). Keys are the sample's position in the packed order (``000000042``), which is
shuffled once at packing time (``--seed``) so a shard holds a mix of classes. A new shard starts when the next
sample would pass ``--max_count`` samples or ``--max_bytes`` bytes. Members carry fixed owners, modes and times:
the same input and seed give byte-identical shards.

``manifest.json`` lists the classes, the total sample count and every shard with its count and size: readers know
an epoch's length without opening a shard, and split the samples exactly between ranks and workers.
``OUT`` may be a local folder or any fsspec URL with a driver installed (``s3://bucket/k700``, ``memory://x``).
Frame folders (mmaction2 rawframes) are refused: shards hold encoded videos. Missing files and paths that are not
regular files are left out and listed in the manifest under ``skipped``; videos that do not decode are packed as
they are and skipped by training the way the file tree skips them.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from lsvit import formats
from lsvit.data import METADATA_FILE, VideoRecord, read_metadata
from lsvit.decode import file_kind
from lsvit.errors import DataError
from lsvit.options import add_dashed

MANIFEST = "manifest.json"
SHARD_NAME = "shard-{:06d}.tar"
FORMAT = "lsvit-shards"
VERSION = 1
KEY_DIGITS = 9
TAR_BLOCK = 512
SIZE_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
              "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    """``"500MB"``, ``"1GiB"``, ``"2e9"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 500MB, 1GB, 2GiB or a byte count")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dashed(parser, "data_root", required=True, help="dataset folder or annotation file, any --data_format")
    formats.add_data_arguments(parser, training=False)
    parser.add_argument("--out", required=True, help="output folder or fsspec URL: OUT/<split>/shard-*.tar + manifest")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"], choices=("train", "val", "test"),
                        help="splits to pack (those the dataset has)")  # fmt: skip
    add_dashed(parser, "max_count", type=int, default=1000, help="at most this many samples per shard (0 = no limit)")
    add_dashed(parser, "max_bytes", type=parse_size, default="1GB",
               help="at most this many bytes per shard (e.g. 500MB, 1GiB; 0 = no limit); a larger video gets a "
               "shard of its own")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the packing order (mixes classes in shards)")
    add_dashed(parser, "no_progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------------ writing


def member_bytes(size: int) -> int:
    """Bytes a member takes in a tar: a header block plus the data padded to whole blocks."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def sample_members(key: str, record: VideoRecord, video: bytes, classes: Sequence[str]) -> list[tuple[str, bytes]]:
    """The ``(name, bytes)`` members of one sample, WebDataset-style."""
    label = record.label
    info = {"label": label, "class": classes[label] if 0 <= label < len(classes) else None, "path": str(record.path)}
    return [
        (f"{key}{record.path.suffix.lower()}", video),
        (f"{key}.cls", str(label).encode()),
        (f"{key}.json", json.dumps(info).encode()),
    ]


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size, member.mode, member.mtime = len(payload), 0o444, 0
    tar.addfile(member, io.BytesIO(payload))


class ShardWriter:
    """Writes ``shard-%06d.tar`` files into one folder (any fsspec file system), starting a new one at the limits."""

    def __init__(self, fs, folder: str, max_count: int, max_bytes: int) -> None:
        self.fs, self.folder = fs, folder
        self.max_count, self.max_bytes = max_count, max_bytes
        self.shards: list[dict[str, Any]] = []
        self.file = self.tar = None

    def _open(self) -> None:
        name = SHARD_NAME.format(len(self.shards))
        self.file = self.fs.open(f"{self.folder}/{name}", "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w|", format=tarfile.USTAR_FORMAT)
        self.shards.append({"name": name, "count": 0, "bytes": 0})

    def _close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.shards[-1]["bytes"] = self.file.tell()  # the file's size: end-of-archive blocks included
            self.file.close()
            self.tar = self.file = None

    def write(self, members: Sequence[tuple[str, bytes]]) -> None:
        size = sum(member_bytes(len(payload)) for _, payload in members)
        current = self.shards[-1] if self.tar is not None else None
        full = current is not None and (
            (self.max_count and current["count"] >= self.max_count)
            or (self.max_bytes and current["count"] and current["bytes"] + size > self.max_bytes)
        )
        if current is None or full:
            self._close()
            self._open()
        for name, payload in members:
            add_member(self.tar, name, payload)
        self.shards[-1]["count"] += 1
        self.shards[-1]["bytes"] += size  # members so far; the file's size once closed

    def close(self) -> list[dict[str, Any]]:
        self._close()
        return self.shards


def frame_folder_error(where) -> DataError:
    return DataError(
        f"{where}: frame folders (rawframes) cannot be packed, shards hold encoded videos; encode each folder to a "
        f"video first (e.g. ffmpeg -i img_%05d.jpg clip.mp4) or train from the folders"
    )


def pack_split(
    split: formats.Split, name: str, fs, folder: str, args: argparse.Namespace, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Write one split's shards and manifest; returns the manifest."""
    if split.data_format == "rawframes":
        raise frame_folder_error(split.source)
    classes = list(split.classes or [])
    order = list(range(len(split.records)))
    random.Random(args.seed).shuffle(order)
    fs.makedirs(folder, exist_ok=True)
    writer = ShardWriter(fs, folder, args.max_count, args.max_bytes)
    skipped, packed = [], 0
    bar = tqdm(order, desc=f"shard {name}", unit="video", disable=args.no_progress, dynamic_ncols=True)
    try:
        for position in bar:
            record = split.records[position]
            if record.path.is_dir():
                raise frame_folder_error(record.path)
            kind = file_kind(record.path)
            if kind is not None:  # missing, a FIFO or a device: never opened
                skipped.append({"path": str(record.path), "reason": kind if kind == "missing" else f"not a regular "
                                f"file: {kind}"})  # fmt: skip
                continue
            key = f"{packed:0{KEY_DIGITS}d}"
            writer.write(sample_members(key, record, record.path.read_bytes(), classes))
            packed += 1
    finally:
        shards = writer.close()
        bar.close()
    if not packed:
        raise DataError(f"{split.source}: none of the {len(split.records)} listed videos exists; nothing to pack")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "split": name,
        "source": str(split.source),
        "data_format": split.data_format,
        "classes": classes,
        "count": packed,
        "bytes": sum(shard["bytes"] for shard in shards),
        "seed": args.seed,
        "metadata": metadata,
        "shards": shards,
        "skipped": skipped,
    }
    with fs.open(f"{folder}/{MANIFEST}", "w") as file:
        json.dump(manifest, file, indent=1)
    return manifest


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    import fsspec

    from lsvit.data_check import load_splits

    if args.max_count < 0 or args.max_bytes < 0:
        raise ValueError("--max_count and --max_bytes must be >= 0 (0 = no limit)")
    splits = load_splits(args)  # validation / test labels follow the training classes, as training reads them
    root = Path(args.data_root)
    metadata = read_metadata(root if root.is_dir() else root.parent)
    fs, out = fsspec.core.url_to_fs(args.out)
    out = out.rstrip("/")
    manifests = {}
    for name, split in splits.items():
        folder = f"{out}/{name}"
        manifest = pack_split(split, name, fs, folder, args, metadata)
        manifests[name] = manifest
        where = fs.unstrip_protocol(folder) if "://" in args.out else folder
        print(f"{name}: {manifest['count']} videos, {len(manifest['classes'])} classes -> {len(manifest['shards'])} "
              f"shards, {manifest['bytes'] / 1e6:.1f} MB in {where}/ ({MANIFEST}); {len(manifest['skipped'])} "
              f"skipped")  # fmt: skip
        for entry in manifest["skipped"][:5]:
            print(f"  skipped {entry['path']}: {entry['reason']}")
    if metadata:
        with fs.open(f"{out}/{METADATA_FILE}", "w") as file:
            json.dump(metadata, file, indent=1)
    return manifests


def iter_samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of an open tar (streaming mode ``r|`` included): consecutive
    members sharing a key (the file name up to its first dot) form a sample, as in WebDataset."""
    key, sample = None, {}
    for member in tar:
        if not member.isfile():
            continue
        member_key, _, extension = member.name.rsplit("/", 1)[-1].partition(".")
        if member_key != key and sample:
            yield key, sample
            sample = {}
        key = member_key
        sample[extension] = tar.extractfile(member).read()
    if sample:
        yield key, sample


def main(argv: Optional[Sequence[str]] = None) -> None:
    from lsvit.errors import run_guarded
    from lsvit.options import command_parser

    run_guarded(run, command_parser("lsvit data shard", __doc__, add_arguments).parse_args(argv))


if __name__ == "__main__":
    main()
