"""Dataset formats: the annotation files users already have, read into video records and class names.

``--data_format`` names one, or ``auto`` detects it from the files under ``--data_root``:

=============  =====================================================================================================
``folders``    ``root/<class>/*.mp4``, or split folders ``root/train/<class>/`` + ``root/val/<class>/`` (also
               ``training/``, ``validation/``, ``valid/``, ``test/``); ``classes.txt`` optional
``list``       ``path label`` lines (``root/train.txt``, ``root/val.txt``, or mmaction2 video lists such as
               ``*_train_list_videos.txt``); label an index or a class name from ``classes.txt``
``rawframes``  mmaction2 rawframe lists: ``frame_dir total_frames label`` lines; each frame folder holds one JPEG
               per frame (``img_00001.jpg``, ...)
``ucf101``     ``classInd.txt`` + ``trainlist0N.txt`` / ``testlist0N.txt`` (UCF101's official splits, also used for
               HMDB51 repackagings); ``--split_number N``; labels from the class index by folder name
``hmdb51``     HMDB51's own split files: ``<class>_test_splitN.txt`` with ``video.avi 1`` (train) / ``2`` (test)
``kinetics``   Kinetics CSV (``label,youtube_id,time_start,time_end,split``): ``train.csv`` / ``validate.csv`` /
               ``test.csv``; clips named ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` anywhere under the
               video root; classes are the training labels, sorted
``ssv2``       Something-Something v2 JSON: ``labels.json`` (name -> index) + ``train.json`` / ``validation.json``
               (``id``, ``template``); videos ``<id>.webm``
=============  =====================================================================================================

Paths in annotation files are relative to ``--video_root`` (default: where the format's videos usually sit,
else the data root; a list given as ``--data_root`` itself: its own folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lsvit.data import (
    VIDEO_EXTENSIONS,
    VideoRecord,
    discover,
    read_annotation_list,
    read_classes_file,
    split_source,
)
from lsvit.decode import DECODERS
from lsvit.errors import DataError

FORMATS = ("auto", "folders", "list", "rawframes", "ucf101", "hmdb51", "kinetics", "ssv2")
UCF_LIST = re.compile(r"^(train|test)list0?(\d+)\.txt$", re.I)
HMDB_SPLIT = re.compile(r"^(.+)_test_split(\d+)\.txt$")
# Split words per format (train side, evaluation side); ``--split`` of infer accepts any of the aliases.
SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "validate"), "test": ("test",)}


@dataclass
class Split:
    """Records of one split, the class names of their labels (None: bare indices), and where they came from."""

    records: list[VideoRecord]
    classes: Optional[list[str]]
    source: str
    data_format: str


def add_data_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, training: bool) -> None:
    """The dataset flags shared by train and infer (``--max_skip_fraction`` for training only)."""

    def add(name: str, **kwargs) -> None:
        parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name, **kwargs)

    add("data_format", choices=FORMATS, default="auto",
        help="annotation format of --data_root (see docs/training.md): auto detects it from the files")  # fmt: skip
    add("video_root", default=None,
        help="folder the annotation paths are relative to (default: the format's usual video folder under "
        "--data_root, else --data_root; a list passed as --data_root: its own folder)")  # fmt: skip
    add("split_number", type=int, default=1, help="UCF101 / HMDB51 official split 1, 2 or 3")
    add("decoder", choices=DECODERS, default="auto",
        help="video decoder: pyav (seek to the keyframe + decode forward; auto), or torchcodec (needs the "
        "system FFmpeg libraries)")  # fmt: skip
    if training:
        from lsvit.data_guards import add_run_guard_arguments

        add_run_guard_arguments(parser)


# ------------------------------------------------------------------------------------------- list files


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text annotation file (is it a video? pass its folder)") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def is_rawframe_list(path: Path) -> bool:
    """``frame_dir total_frames label`` lines: three fields, the last two integers, no video extension."""
    lines = _lines(path)[:20]
    return bool(lines) and all(
        len(parts := line.rsplit(maxsplit=2)) == 3
        and parts[1].isdigit()
        and parts[2].lstrip("-").isdigit()
        and Path(parts[0]).suffix.lower() not in VIDEO_EXTENSIONS
        for line in lines
    )


def read_rawframe_list(path: Path, video_root: Path) -> list[VideoRecord]:
    records = []
    for number, line in enumerate(_lines(path), start=1):
        parts = line.rsplit(maxsplit=2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: expected 'frame_dir total_frames label', got {line!r}")
        records.append(VideoRecord(video_root / parts[0], int(parts[2]), frames=int(parts[1])))
    if not records:
        raise DataError(f"{path} lists no frame folders")
    return records


def _numeric_classes(records: Sequence[VideoRecord]) -> list[str]:
    return [str(i) for i in range(max((r.label for r in records), default=-1) + 1)]


def read_list_split(path: Path, video_root: Path, classes_dir: Iterable[Path], data_format: str) -> Split:
    """A ``list`` or ``rawframes`` file; classes from the first ``classes.txt`` found in ``classes_dir``."""
    classes = next((found for folder in classes_dir if (found := read_classes_file(folder)) is not None), None)
    if data_format == "rawframes" or (data_format in ("auto", "list") and is_rawframe_list(path)):
        records = read_rawframe_list(path, video_root)
        kind = "rawframes"
    else:
        records = read_annotation_list(path, video_root, classes)
        kind = "list"
    if classes is not None:
        bad = [r for r in records if r.label >= len(classes)]
        if bad:
            raise DataError(f"{path}: label {bad[0].label} is outside the {len(classes)} classes of classes.txt")
    return Split(records, classes, str(path), kind)


# ------------------------------------------------------------------------------------------- UCF101 / HMDB51


def _find_upward(root: Path, name: str, depth: int = 2) -> Optional[Path]:
    """``root/name`` or ``root/<sub>/name`` (one or two levels), the first in name order."""
    if (root / name).is_file():
        return root / name
    if depth <= 0 or not root.is_dir():
        return None
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found = _find_upward(sub, name, depth - 1)
        if found:
            return found
    return None


def read_class_index(path: Path) -> list[str]:
    """``classInd.txt``: ``1 ApplyEyeMakeup`` lines, 1-based -> class names in label order."""
    entries = {}
    for number, line in enumerate(_lines(path), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{number}: expected 'index ClassName', got {line!r}")
        entries[int(parts[0])] = parts[1]
    if sorted(entries) != list(range(1, len(entries) + 1)):
        raise DataError(f"{path}: class indices must run 1..{len(entries)}")
    return [entries[i] for i in range(1, len(entries) + 1)]


def _video_root_with(candidates: Sequence[Path], relative: str) -> Path:
    """The first candidate under which ``relative`` exists (else the first candidate)."""
    for candidate in candidates:
        if (candidate / relative).exists():
            return candidate
    return candidates[0]


def read_ucf_split(list_file: Path, class_index: Path, video_root: Optional[Path]) -> Split:
    """``trainlist0N.txt`` (``Class/v_x.avi 1``, 1-based) or ``testlist0N.txt`` (``Class/v_x.avi``)."""
    classes = read_class_index(class_index)
    index = {name.lower(): label for label, name in enumerate(classes)}
    lines = _lines(list_file)
    if not lines:
        raise DataError(f"{list_file} lists no videos")
    roots = [video_root] if video_root else _ucf_video_roots(class_index.parent)
    root = _video_root_with(roots, lines[0].split()[0])
    records = []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        relative = parts[0]
        folder = Path(relative).parts[0] if len(Path(relative).parts) > 1 else None
        if folder is not None and folder.lower() in index:
            label = index[folder.lower()]
        elif len(parts) > 1 and parts[1].isdigit():
            label = int(parts[1]) - 1  # 1-based in the official lists
        else:
            raise DataError(
                f"{list_file}:{number}: {relative!r} has no class folder from {class_index.name} and no label"
            )
        if not 0 <= label < len(classes):
            raise DataError(f"{list_file}:{number}: label {label + 1} is outside 1..{len(classes)} of {class_index}")
        records.append(VideoRecord(root / relative, label))
    return Split(records, classes, str(list_file), "ucf101")


def _ucf_video_roots(annotations: Path) -> list[Path]:
    bases = [annotations, annotations.parent]
    names = ("UCF-101", "UCF101", "hmdb51", "HMDB51", "videos", "")
    return [base / name for base in bases for name in names]


def ucf_list_for(class_index: Path, split: str, number: int) -> Path:
    kind = "train" if split == "train" else "test"
    folder = class_index.parent
    for name in (f"{kind}list{number:02d}.txt", f"{kind}list{number}.txt"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no {kind}list{number:02d}.txt next to {class_index} (--split_number 1, 2 or 3)")


def _hmdb_split_files(root: Path) -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {}
    for folder in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        for path in folder.glob("*_test_split*.txt"):
            match = HMDB_SPLIT.match(path.name)
            if match:
                found.setdefault(match.group(1), {})[int(match.group(2))] = path
        if found:
            break
    return found


def read_hmdb_split(root: Path, split: str, number: int, video_root: Optional[Path]) -> Split:
    """HMDB51's ``<class>_test_splitN.txt``: ``video.avi 1`` = train, ``2`` = test, ``0`` = unused."""
    files = _hmdb_split_files(root)
    if not files:
        raise DataError(f"no HMDB51 split files (<class>_test_split1.txt) under {root}")
    classes = sorted(files)
    wanted = "1" if split == "train" else "2"
    annotations = next(iter(files[classes[0]].values())).parent
    roots = [video_root] if video_root else _ucf_video_roots(annotations) + [root / "hmdb51_org", root]
    records = []
    for label, name in enumerate(classes):
        if number not in files[name]:
            raise DataError(f"no {name}_test_split{number}.txt under {root} (--split_number 1, 2 or 3)")
        for line in _lines(files[name][number]):
            parts = line.split()
            if len(parts) == 2 and parts[1] == wanted:
                records.append(VideoRecord(Path(f"{name}/{parts[0]}"), label))
    if not records:
        raise DataError(f"HMDB51 split {number} lists no {split} videos under {root}")
    base = _video_root_with(roots, str(records[0].path))
    return Split([VideoRecord(base / r.path, r.label) for r in records], classes, f"{root} split {number}", "hmdb51")


# ------------------------------------------------------------------------------------------------ Kinetics


def _is_kinetics_csv(path: Path) -> bool:
    with path.open(newline="") as file:
        header = file.readline().lower()
    return "youtube_id" in header and "time_start" in header


def kinetics_clip_name(youtube_id: str, time_start: str, time_end: str) -> str:
    """The usual clip file stem: ``{youtube_id}_{time_start:06d}_{time_end:06d}``."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def _index_videos(root: Path) -> dict[str, Path]:
    """Stem -> path of every video file under ``root`` (one walk; Kinetics trees nest clips in many ways)."""
    index: dict[str, Path] = {}
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            stem, extension = os.path.splitext(name)
            if extension.lower() in VIDEO_EXTENSIONS:
                index.setdefault(stem, Path(folder) / name)
    return index


def _read_kinetics_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    missing = {"youtube_id", "time_start", "time_end"} - set(rows[0] if rows else {})
    if missing:
        raise DataError(f"{path}: Kinetics CSV without columns {sorted(missing)}")
    return rows


def read_kinetics_split(
    csv_file: Path, train_csv: Path, video_root: Path, index: Optional[dict[str, Path]] = None
) -> Split:
    """Rows of ``csv_file``; classes = sorted labels of ``train_csv``; videos found by clip name under
    ``video_root`` (missing ones keep the path ``<video_root>/<split>/<label>/<name>.mp4`` and are reported)."""
    classes = sorted({row["label"] for row in _read_kinetics_rows(train_csv) if row.get("label")})
    if not classes:
        raise DataError(f"{train_csv}: no labels in the 'label' column")
    label_of = {name: i for i, name in enumerate(classes)}
    index = _index_videos(video_root) if index is None else index
    records = []
    for number, row in enumerate(_read_kinetics_rows(csv_file), start=2):
        name = kinetics_clip_name(row["youtube_id"], row["time_start"], row["time_end"])
        text = row.get("label") or ""
        if text and text not in label_of:
            raise DataError(f"{csv_file}:{number}: label {text!r} is not among the {len(classes)} training labels")
        label = label_of[text] if text else -1
        path = index.get(name) or video_root / row.get("split", "") / text / f"{name}.mp4"
        records.append(VideoRecord(path, label))
    return Split(records, classes, str(csv_file), "kinetics")


def _kinetics_csvs(root: Path) -> dict[str, Path]:
    found = {}
    for folder in (root, root / "annotations"):
        for split, names in (("train", ("train",)), ("val", ("validate", "val", "validation")), ("test", ("test",))):
            for name in names:
                path = folder / f"{name}.csv"
                if split not in found and path.is_file() and _is_kinetics_csv(path):
                    found[split] = path
    return found


# ------------------------------------------------------------------------------------------- Something-Something


def _ssv2_files(folder: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.glob("*.json")):
        name = path.name.lower()
        for key in ("labels", "train", "validation", "test"):
            if name == f"{key}.json" or name.endswith(f"-{key}.json"):
                found.setdefault(key, path)
    return found


def read_ssv2_split(json_file: Path, labels_file: Path, video_root: Optional[Path]) -> Split:
    """Entries ``{"id", "template"}``; the label is ``labels.json[template without brackets]``."""
    labels = json.loads(labels_file.read_text())
    classes = [name for name, _ in sorted(labels.items(), key=lambda item: int(item[1]))]
    entries = json.loads(json_file.read_text())
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{json_file}: expected a JSON list of {{'id': ..., 'template': ...}} entries")
    folder = json_file.parent
    roots = [video_root] if video_root else [folder / "20bn-something-something-v2", folder / "videos", folder]
    first = str(entries[0]["id"])
    root, extension = roots[0], ".webm"
    for candidate in roots:
        hit = next((ext for ext in (".webm", ".mp4") if (candidate / f"{first}{ext}").exists()), None)
        if hit:
            root, extension = candidate, hit
            break
    records = []
    for entry in entries:
        template = entry.get("template")
        label = -1
        if template is not None:
            name = template.replace("[", "").replace("]", "")
            if name not in labels:
                raise DataError(f"{json_file}: template {name!r} (video {entry['id']}) is not in {labels_file.name}")
            label = int(labels[name])
        records.append(VideoRecord(root / f"{entry['id']}{extension}", label))
    return Split(records, classes, str(json_file), "ssv2")


# ----------------------------------------------------------------------------------------------- detection


def _mmaction_list(root: Path, split: str) -> Optional[Path]:
    """An mmaction2-style list for ``split`` directly under ``root`` (``*_train_list_videos.txt``, ...)."""
    words = SPLIT_ALIASES[split]
    matches = sorted(
        path
        for path in root.glob("*.txt")
        if any(re.search(rf"(^|[_\-.]){word}([_\-.]|$)", path.stem, re.I) for word in words)
        and path.stem.lower() not in words
    )
    if len(matches) > 1:
        listed = ", ".join(p.name for p in matches)
        raise DataError(f"several {split} lists under {root} ({listed}): choose one with --train_list/--val_list")
    return matches[0] if matches else None


def detect_format(root: Path) -> str:
    """The format of a data root folder or annotation file (see the module docstring)."""
    if root.is_file():
        if root.suffix.lower() in VIDEO_EXTENSIONS:
            return "video"
        if root.suffix.lower() == ".csv":
            return "kinetics"
        if root.suffix.lower() == ".json":
            return "ssv2"
        if UCF_LIST.match(root.name) and (root.parent / "classInd.txt").is_file():
            return "ucf101"
        return "rawframes" if is_rawframe_list(root) else "list"
    if not root.is_dir():
        raise FileNotFoundError(f"--data_root {root} does not exist")
    if _find_upward(root, "classInd.txt"):
        return "ucf101"
    if _hmdb_split_files(root):
        return "hmdb51"
    ssv2 = _ssv2_files(root)
    if "labels" in ssv2 and "train" in ssv2:
        return "ssv2"
    if _kinetics_csvs(root):
        return "kinetics"
    for split in ("train", "val"):
        listing = split_source(root, split)
        if listing is not None and listing.is_file():
            return "rawframes" if is_rawframe_list(listing) else "list"
    listing = _mmaction_list(root, "train")
    if listing is not None:
        return "rawframes" if is_rawframe_list(listing) else "list"
    return "folders"


def load_split(
    data_root: str | Path,
    split: str,
    data_format: str = "auto",
    video_root: Optional[str | Path] = None,
    split_number: int = 1,
    kinetics_index: Optional[dict[str, Path]] = None,
) -> Optional[Split]:
    """The records of ``split`` (``train``, ``val`` or ``test``) of a dataset, or None when it has none.

    ``data_root`` a file: that annotation file is the split (``split`` ignored).
    """
    root = Path(data_root)
    split = next((key for key, words in SPLIT_ALIASES.items() if split.lower() in words), split)
    if split not in SPLIT_ALIASES:
        raise DataError(f"unknown split {split!r}: use train, val or test")
    kind = detect_format(root) if data_format == "auto" else data_format
    videos = Path(video_root) if video_root else None
    if root.is_file():
        return _load_file(root, kind, videos, split_number, kinetics_index)
    if not root.is_dir():
        raise FileNotFoundError(f"--data_root {root} does not exist")
    if kind == "ucf101":
        class_index = _find_upward(root, "classInd.txt")
        if class_index is None:
            raise DataError(f"--data_format ucf101: no classInd.txt under {root}")
        return read_ucf_split(ucf_list_for(class_index, split, split_number), class_index, videos)
    if kind == "hmdb51":
        return read_hmdb_split(root, split, split_number, videos)
    if kind == "kinetics":
        csvs = _kinetics_csvs(root)
        if "train" not in csvs:
            raise DataError(f"--data_format kinetics: no train.csv with youtube_id,time_start,time_end under {root}")
        if split not in csvs:
            return None
        return read_kinetics_split(csvs[split], csvs["train"], videos or root, kinetics_index)
    if kind == "ssv2":
        files = _ssv2_files(root)
        if "labels" not in files:
            raise DataError(f"--data_format ssv2: no labels.json under {root}")
        key = {"train": "train", "val": "validation", "test": "test"}[split]
        return read_ssv2_split(files[key], files["labels"], videos) if key in files else None
    if kind in ("list", "rawframes"):
        listing = split_source(root, split) or _mmaction_list(root, split)
        if listing is None or not listing.is_file():
            if split == "train":
                raise DataError(f"--data_format {kind}: no {split}.txt (or *_{split}_*.txt) list under {root}")
            return None
        return read_list_split(listing, videos or root, [root, listing.parent], kind)
    if kind == "folders":
        folder = next((root / word for word in SPLIT_ALIASES[split] if (root / word).is_dir()), None)
        if folder is None:
            if split != "train":
                return None
            folder = root
        records, classes = discover(folder, root)
        return Split(records, classes, str(folder), "folders")
    raise DataError(f"unknown --data_format {kind!r}; choose from {FORMATS}")


def _load_file(path: Path, kind: str, videos: Optional[Path], split_number: int, kinetics_index) -> Split:
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        records, classes = discover(path)
        return Split(records, classes or None, str(path), "video")
    if kind == "kinetics":
        return read_kinetics_split(path, path.parent / "train.csv" if (path.parent / "train.csv").is_file() else path,
                                   videos or path.parent, kinetics_index)  # fmt: skip
    if kind == "ssv2":
        labels = _ssv2_files(path.parent).get("labels")
        if labels is None:
            raise DataError(f"{path}: no labels.json next to it")
        return read_ssv2_split(path, labels, videos)
    if kind == "ucf101":
        return read_ucf_split(path, path.parent / "classInd.txt", videos)
    if kind in ("list", "rawframes", "auto"):
        return read_list_split(path, videos or path.parent, [path.parent], kind)
    raise DataError(f"--data_format {kind} expects a folder, not the file {path}")


# ------------------------------------------------------------------------------------------- train / infer


def training_splits(args: argparse.Namespace) -> tuple[Split, Optional[Split]]:
    """(train, validation or None) from ``--data_root``, ``--data_format``, ``--video_root``, ``--split_number``,
    ``--train_list`` / ``--val_list``; validation labels use the training classes."""
    root = Path(args.data_root)
    if not root.exists():
        raise FileNotFoundError(f"--data_root {root} does not exist (make one with: lsvit data synth --out {root})")
    if root.is_file() and root.suffix.lower() in VIDEO_EXTENSIONS:
        raise DataError(f"--data_root {root} is one video; training needs a dataset folder or an annotation list")
    fmt, videos, number = args.data_format, args.video_root, args.split_number
    index = _index_videos(Path(videos or root)) if _kinetics(fmt, root, args) else None
    if args.train_list:
        train = _explicit(Path(args.train_list), root, fmt, videos, number, index)
    else:
        train = load_split(root, "train", fmt, videos, number, index)
    if args.val_list:
        val = _explicit(Path(args.val_list), root, fmt, videos, number, index)
    else:  # --train_list overrides the training split only: validation still comes from --data_root
        val = load_split(root, "val", fmt, videos, number, index) if root.is_dir() else None
    if train.classes is None:
        train.classes = _numeric_classes(train.records)
    if len(train.classes) < 2:
        raise DataError(
            f"{train.source} gives {len(train.classes)} class(es) {train.classes}: a classifier needs at least 2 "
            f"(is --data_root one level too high or too low?)"
        )
    if val is not None:
        val = relabel(val, train.classes)
        beyond = [r for r in val.records if r.label >= len(train.classes)]
        if beyond:
            raise DataError(
                f"{val.source}: {len(beyond)} validation labels are outside the {len(train.classes)} training "
                f"classes (0..{len(train.classes) - 1}), e.g. {beyond[0].path} with label {beyond[0].label}; "
                f"add a classes.txt that lists every class"
            )
    return train, val


def _kinetics(fmt: str, root: Path, args) -> bool:
    if fmt == "kinetics":
        return True
    files = [Path(f) for f in (args.train_list, args.val_list) if f]
    return fmt == "auto" and (any(f.suffix == ".csv" for f in files) or (root.is_dir() and bool(_kinetics_csvs(root))))


def _explicit(path: Path, root: Path, fmt: str, videos, number: int, index) -> Split:
    """``--train_list`` / ``--val_list``: a list file (paths relative to ``--video_root`` or ``--data_root``) or a
    class-folder root."""
    if path.is_dir():
        records, classes = discover(path, root)
        return Split(records, classes, str(path), "folders")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind in ("list", "rawframes"):
        base = Path(videos) if videos else (root if root.is_dir() else path.parent)
        return read_list_split(path, base, [root, path.parent], kind)
    return _load_file(path, kind, Path(videos) if videos else None, number, index)


def relabel(split: Split, classes: Sequence[str]) -> Split:
    """``split`` with labels indexing ``classes`` (matched by class name); bare-index labels stay as they are."""
    if split.classes is None or list(split.classes) == list(classes):
        return Split(split.records, list(classes), split.source, split.data_format)
    position = {name: i for i, name in enumerate(classes)}
    unknown = sorted({split.classes[r.label] for r in split.records if r.label >= 0} - set(position))
    if unknown:
        raise DataError(f"{split.source}: classes {unknown[:5]} are not among the {len(classes)} known classes")
    records = [
        VideoRecord(r.path, position[split.classes[r.label]] if r.label >= 0 else -1, r.frames) for r in split.records
    ]
    return Split(records, list(classes), split.source, split.data_format)


def inference_split(args: argparse.Namespace, classes: Sequence[str]) -> Split:
    """What ``lsvit infer`` scores: ``--data_root`` (a dataset, a list, a folder, one video), its ``--split``,
    labels matched to the checkpoint's ``classes`` by name."""
    root = Path(args.data_root)
    if not root.exists():
        raise FileNotFoundError(f"--data_root {root} does not exist")
    if args.split is None and root.is_dir():
        kind = detect_format(root) if args.data_format == "auto" else args.data_format
        if kind != "folders":
            raise DataError(f"{root} is a {kind} dataset with splits: choose one with --split val (or train, test)")
        records, found = discover(root)  # class folders, or loose unlabeled videos
        return relabel(Split(records, found or None, str(root), "folders"), classes)
    split = load_split(root, args.split or "val", args.data_format, args.video_root, args.split_number)
    if split is None:
        raise DataError(f"no {args.split or 'val'} split under {root}; name one with --split (train, val, test)")
    return relabel(split, classes)
