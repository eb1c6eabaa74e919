"""``lsvit data check``: walk a dataset in any supported format and report what a training run would trip on.

Every video of every split is checked in parallel (worker processes, a progress bar): non-regular files (FIFOs,
devices) and missing paths are reported without being opened; the others have their container header read
(frame count, size, frame rate, duration), and with ``--full_decode`` every frame decoded. The report lists
unreadable videos, videos too short for ``--num_frames``, resolution / duration / frame-rate histograms, class
counts per split (classes without training videos flagged), duplicate paths (within and across splits) and
labels outside the classes. ``--report FILE`` writes it as JSON; ``--write_clean_list DIR`` writes
``DIR/<split>.txt`` lists of the usable videos (absolute paths) and ``DIR/classes.txt``, a data root that
``lsvit train --data_root DIR`` reads directly.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from lsvit import formats
from lsvit.decode import VideoError, file_kind, open_reader, probe
from lsvit.errors import DataError
from lsvit.options import add_dashed, command_parser

SPLITS = ("train", "val", "test")
DURATION_BINS = (2, 5, 10, 30, 60, 300)  # seconds: upper edges


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dashed(parser, "data_root", required=True, help="dataset folder or annotation file, any --data_format")
    formats.add_data_arguments(parser, training=False)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to check")
    add_dashed(parser, "num_frames", type=int, default=8, help="videos with fewer frames are reported as too short")
    add_dashed(parser, "num_classes", type=int, default=None, help="also report labels >= this (default: the classes)")
    add_dashed(parser, "full_decode", action="store_true", help="decode every frame (slow; finds corrupt tails)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel checking processes")
    parser.add_argument("--report", default=None, help="write the full report as JSON to this file")
    add_dashed(parser, "write_clean_list", default=None,
               help="write DIR/<split>.txt (usable videos, absolute paths) and DIR/classes.txt")  # fmt: skip
    add_dashed(parser, "no_progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------------ one video


def check_video(job: tuple[str, Optional[int], int, str, bool]) -> dict[str, Any]:
    """Status of one video: ``ok``, ``too short``, ``partial``, ``missing``, ``not a regular file``, ``unreadable``
    (``corrupt`` with ``--full_decode``). Runs in a worker process."""
    path_text, listed_frames, num_frames, decoder, full = job
    path = Path(path_text)
    result: dict[str, Any] = {"path": path_text, "status": "ok", "reason": None}
    kind = file_kind(path)
    if kind is not None:  # never opened
        result["status"] = "missing" if kind == "missing" else "not a regular file"
        result["reason"] = kind
        return result
    try:
        info = probe(path, decoder, listed_frames)
    except VideoError as error:
        result["status"], result["reason"] = "unreadable", str(error)
        return result
    except Exception as error:  # noqa: BLE001  (a checker reports every failure instead of stopping)
        result["status"], result["reason"] = "unreadable", f"{type(error).__name__}: {error}"
        return result
    result.update(frames=info.frames, width=info.width, height=info.height, fps=info.fps, duration=info.duration)
    frames = info.frames
    if full:
        reader = open_reader(path, "pyav", None, listed_frames)
        try:
            frames = reader.decodable_prefix()
        finally:
            reader.close()
        result["decodable"] = frames
        if frames < info.frames:
            result["status"], result["reason"] = "partial", f"{frames} of {info.frames} frames decode"
    if frames < num_frames:
        result["status"] = "too short" if frames == info.frames else "corrupt"
        result["reason"] = f"{frames} usable frames, need num_frames={num_frames}"
    return result


# ------------------------------------------------------------------------------------------------ report


def histogram(values: Sequence[str]) -> dict[str, int]:
    return dict(Counter(values).most_common())


def duration_bin(seconds: float) -> str:
    lower = 0
    for upper in DURATION_BINS:
        if seconds < upper:
            return f"{lower}-{upper} s"
        lower = upper
    return f">= {DURATION_BINS[-1]} s"


def build_report(splits: dict[str, formats.Split], results: dict[str, list[dict[str, Any]]], args) -> dict[str, Any]:
    classes = next(iter(splits.values())).classes or []
    limit = args.num_classes if args.num_classes is not None else len(classes)
    report: dict[str, Any] = {"data_root": str(args.data_root), "num_frames": args.num_frames, "classes": classes}
    seen: dict[str, list[str]] = {}
    usable_all = []
    for name, split in splits.items():
        rows = results[name]
        for record, row in zip(split.records, rows, strict=True):
            row["label"] = record.label
            seen.setdefault(str(Path(row["path"]).resolve()), []).append(name)
        ok = [row for row in rows if row["status"] in ("ok", "partial")]
        usable_all += ok
        counts = Counter(record.label for record in split.records)
        report[name] = {
            "source": split.source,
            "format": split.data_format,
            "videos": len(rows),
            "usable": len(ok),
            "status": histogram([row["status"] for row in rows]),
            "problems": [
                {"path": row["path"], "status": row["status"], "reason": row["reason"]}
                for row in rows
                if row["status"] != "ok"
            ],
            "class_counts": {(classes[k] if 0 <= k < len(classes) else str(k)): v for k, v in sorted(counts.items())},
            "labels_out_of_range": [
                {"path": str(r.path), "label": r.label} for r in split.records if not -1 <= r.label < max(limit, 1)
            ],
        }
        if name == "train":
            report[name]["classes_without_videos"] = [c for i, c in enumerate(classes) if counts.get(i, 0) == 0]
    report["duplicates"] = {path: names for path, names in seen.items() if len(names) > 1}
    report["resolution"] = histogram([f"{r['width']}x{r['height']}" for r in usable_all])
    report["duration"] = histogram([duration_bin(r["duration"]) for r in usable_all])
    report["fps"] = histogram([f"{r['fps']:.2f}".rstrip("0").rstrip(".") for r in usable_all if r["fps"]])
    return report


def print_report(report: dict[str, Any], split_names: Sequence[str]) -> None:
    print(f"dataset {report['data_root']}: {len(report['classes'])} classes, num_frames={report['num_frames']}")
    for name in split_names:
        part = report[name]
        status = ", ".join(f"{count} {kind}" for kind, count in part["status"].items())
        where = f"{part['format']}, {part['source']}"
        print(f"{name} ({where}): {part['videos']} videos, {part['usable']} usable ({status})")
        for problem in part["problems"][:20]:
            print(f"  {problem['status']}: {problem['path']}: {problem['reason']}")
        if len(part["problems"]) > 20:
            print(f"  ... {len(part['problems']) - 20} more (--report FILE lists all)")
        counts = part["class_counts"]
        if counts:
            low, high = min(counts.values()), max(counts.values())
            print(f"  classes: {len(counts)} with videos, {low}-{high} videos each")
        if part.get("classes_without_videos"):
            print(f"  classes without training videos: {part['classes_without_videos'][:10]}")
        if part["labels_out_of_range"]:
            print(f"  labels out of range: {len(part['labels_out_of_range'])}, e.g. {part['labels_out_of_range'][0]}")
    if report["duplicates"]:
        example = next(iter(report["duplicates"].items()))
        print(f"duplicate paths: {len(report['duplicates'])}, e.g. {example[0]} in {example[1]}")
    for key in ("resolution", "duration", "fps"):
        top = ", ".join(f"{value}: {count}" for value, count in list(report[key].items())[:8])
        print(f"{key}: {top or '-'}")


def write_clean_lists(folder: Path, report: dict[str, Any], splits: dict[str, formats.Split], results) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        lines = []
        for record, row in zip(split.records, results[name], strict=True):
            if row["status"] not in ("ok", "partial") or record.label < 0:
                continue
            path = Path(row["path"]).resolve()
            lines.append(f"{path} {record.frames} {record.label}" if record.frames else f"{path} {record.label}")
        (folder / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    (folder / "classes.txt").write_text("".join(c + "\n" for c in report["classes"]))


# ------------------------------------------------------------------------------------------------ command


def load_splits(args) -> dict[str, formats.Split]:
    splits: dict[str, formats.Split] = {}
    for name in args.splits:
        split = formats.load_split(args.data_root, name, args.data_format, args.video_root, args.split_number)
        if split is None:
            continue
        if splits:
            first = next(iter(splits.values()))
            split = formats.relabel(split, first.classes) if first.classes else split
        elif split.classes is None:
            split.classes = [str(i) for i in range(max((r.label for r in split.records), default=-1) + 1)]
        splits[name] = split
        if Path(args.data_root).is_file():
            break  # one annotation file is one split
    if not splits:
        raise DataError(f"no {' / '.join(args.splits)} split found under {args.data_root}")
    return splits


def run(args: argparse.Namespace) -> dict[str, Any]:
    splits = load_splits(args)
    jobs = [
        (name, (str(r.path), r.frames, args.num_frames, args.decoder, args.full_decode))
        for name, split in splits.items()
        for r in split.records
    ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in splits}
    bar = tqdm(total=len(jobs), desc="check", unit="video", disable=args.no_progress, dynamic_ncols=True)
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        for (name, _), row in zip(jobs, pool.map(check_video, [job for _, job in jobs], chunksize=8), strict=True):
            results[name].append(row)
            bar.update()
    bar.close()
    report = build_report(splits, results, args)
    print_report(report, list(splits))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
        print(f"report written to {args.report}")
    if args.write_clean_list:
        write_clean_lists(Path(args.write_clean_list), report, splits, results)
        print(f"clean lists written to {args.write_clean_list}{os.sep} (lsvit train --data_root there)")
    return report


def main(argv: Optional[Sequence[str]] = None) -> None:
    from lsvit.errors import run_guarded

    run_guarded(run, command_parser("lsvit data check", __doc__, add_arguments).parse_args(argv))


if __name__ == "__main__":
    main()
