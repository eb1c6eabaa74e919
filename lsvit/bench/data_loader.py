"""Training data-loader throughput: clips/s from tar shards against the file tree, in one run.

``python -m lsvit.bench.data_loader`` (default: 96 synthetic H.264 videos of 48 frames at 160x160, 8-frame clips
cropped to 128, batch 8, 2 DataLoader workers, 3 alternated rounds; about a minute on 2 cores). The videos are
generated once under ``--data_dir`` and packed with ``lsvit data shard`` next to them.

Both inputs make the same training clips (TSN sampling, sparse PyAV decoding resized while decoding, random crop,
uint8 batches) through the same ``collate_clips``; only the storage differs: one file per video, opened by path
(``VideoClipDataset`` + ``ResumableSampler``), or tar shards streamed sequentially and decoded from memory
(``ShardClipDataset``, shuffle buffer ``--shuffle_buffer``). Each round times one epoch of each, from creating the
loader (workers start) to the last batch; the rounds alternate so machine load hits both alike. ``read MB/s``
times reading the bytes alone (no decoding) through each path, one process: the I/O ceiling of each input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

from torch.utils.data import DataLoader


def make_data(folder: Path, videos: int, size: int, frames: int) -> tuple[Path, Path]:
    """The file-tree dataset (4 classes) and its shards, made once."""
    from lsvit.cli import build_parser
    from lsvit.shards import run as shard_run
    from lsvit.synth import make_dataset

    tree = folder / f"tree_{videos}_{size}_{frames}"
    shards = folder / f"shards_{videos}_{size}_{frames}"
    if not (tree / "train.txt").is_file():
        make_dataset(tree, classes=("left", "up", "grow", "rotate_cw"), train_per_class=videos // 4, val_per_class=1,
                     size=size, frames=frames, seed=0, progress=False)  # fmt: skip
    if not (shards / "train" / "manifest.json").is_file():
        shard_run(build_parser().parse_args(["data", "shard", "--data_root", str(tree), "--out", str(shards),
                                             "--splits", "train", "--max_count", "8", "--no_progress"]))  # fmt: skip
    return tree, shards / "train"


def build_inputs(tree: Path, shards: Path, args) -> dict[str, tuple[Any, Any]]:
    from lsvit.data import ClipTransform, VideoClipDataset
    from lsvit.samplers import ResumableSampler
    from lsvit.shard_dataset import ShardClipDataset, open_shards

    transform = ClipTransform(args.image_size, args.resize_size, train=True, horizontal_flip=True)
    tree_set = VideoClipDataset.from_source(tree / "train.txt", args.num_frames, transform, root=tree, decoder="pyav")
    shard_set = ShardClipDataset(open_shards(str(shards)), args.num_frames, transform, batch_size=args.batch_size,
                                 shuffle_buffer=args.shuffle_buffer, num_workers=args.num_workers)  # fmt: skip
    return {"file tree": (tree_set, ResumableSampler(tree_set, 1, 0, 0)), "tar shards": (shard_set, None)}


def time_epoch(dataset, sampler, epoch: int, args) -> tuple[float, int]:
    from lsvit.data import collate_clips

    dataset.set_epoch(epoch)
    if sampler is not None:
        sampler.set_epoch(epoch)
    started = time.perf_counter()
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                        collate_fn=collate_clips)  # fmt: skip
    clips = sum(len(batch["label"]) for batch in loader)
    return time.perf_counter() - started, clips


def read_rate(tree_set, shard_set) -> dict[str, float]:
    """MB/s reading every video's bytes (no decoding): by path, and streamed out of the shards."""
    started = time.perf_counter()
    total = sum(len(record.path.read_bytes()) for record in tree_set.records)
    tree_rate = total / 1e6 / (time.perf_counter() - started)
    started = time.perf_counter()
    streamed = sum(len(video or b"") for _, _, video, _ in shard_set.reader_stream(0, 1))
    return {"file tree": tree_rate, "tar shards": streamed / 1e6 / (time.perf_counter() - started)}


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m lsvit.bench.data_loader", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--videos", type=int, default=96, help="training videos (4 classes)")
    parser.add_argument("--size", type=int, default=160, help="video height and width")
    parser.add_argument("--frames", type=int, default=48, help="frames per video")
    parser.add_argument("--num_frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--image_size", type=int, default=128, help="crop size")
    parser.add_argument("--resize_size", type=int, default=144, help="shorter side after decoding")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--shuffle_buffer", type=int, default=32, help="shard shuffle buffer (videos per worker)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated epochs of each input")
    parser.add_argument("--data_dir", default="bench_out/data_loader", help="generated videos and shards (kept)")
    parser.add_argument("--out", default="bench_out/data_loader.json", help="results as JSON")
    args = parser.parse_args(argv)

    tree, shards = make_data(Path(args.data_dir), args.videos, args.size, args.frames)
    inputs = build_inputs(tree, shards, args)
    seconds: dict[str, list[float]] = {name: [] for name in inputs}
    for round_index in range(args.rounds):
        for name, (dataset, sampler) in inputs.items():
            elapsed, clips = time_epoch(dataset, sampler, round_index, args)
            assert clips == args.videos, f"{name}: {clips} clips, expected {args.videos}"
            seconds[name].append(elapsed)
    rates = read_rate(inputs["file tree"][0], inputs["tar shards"][0])
    rows = []
    for name, times in seconds.items():
        best, median = min(times), statistics.median(times)
        rows.append({"input": name, "clips": args.videos, "median_s": median, "clips_per_s": args.videos / median,
                     "best_clips_per_s": args.videos / best, "read_mb_per_s": rates[name]})  # fmt: skip
    print(f"{args.videos} videos {args.size}x{args.size}x{args.frames}, clips {args.num_frames}x{args.image_size}, "
          f"batch {args.batch_size}, {args.num_workers} workers, {args.rounds} rounds")  # fmt: skip
    print("| input | clips/s (median) | clips/s (best) | epoch s (median) | read MB/s |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['input']} | {row['clips_per_s']:.1f} | {row['best_clips_per_s']:.1f} | {row['median_s']:.2f} | "
              f"{row['read_mb_per_s']:.0f} |")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
