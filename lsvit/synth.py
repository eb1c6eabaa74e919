"""Synthetic motion dataset: real H.264 mp4 files whose classes only motion tells apart.

Each video shows one irregular convex polygon on a noisy background. The class is how it moves (left, right,
up, down, grow, shrink, rotate clockwise, rotate anticlockwise). Start position, size, angle, colours, shape
and noise are random per video and chosen so that the *middle* frame has the same distribution for every class
of a pair (left vs right, ...): one frame cannot tell the class, a few frames in order can.

Layout written under ``--out``::

    classes.txt                 one class name per line (label = line index)
    dataset.json                classes, sizes, seed, and ``direction_sensitive: true`` (no horizontal flip)
    train/<class>/<id>.mp4      train split, one folder per class
    val/<class>/<id>.mp4
    train.txt, val.txt          annotation lists: ``train/<class>/<id>.mp4 <label>`` per line

Deterministic given ``seed``: every video draws from its own ``numpy`` generator seeded by (seed, split, index).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from lsvit.options import HelpFormatter, add_dashed

MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "rotate_cw", "rotate_ccw")
METADATA_FILE = "dataset.json"
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def polygon_mask(height: int, width: int, vertices: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of pixel centres inside a convex polygon with vertices (x, y) in order."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    left_of_all = np.ones((height, width), dtype=bool)
    right_of_all = np.ones((height, width), dtype=bool)
    for i in range(len(vertices)):
        x0, y0 = vertices[i]
        x1, y1 = vertices[(i + 1) % len(vertices)]
        cross = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
        left_of_all &= cross >= 0
        right_of_all &= cross <= 0
    return left_of_all | right_of_all  # inside = same side of every edge, whichever way the vertices turn


def _random_shape(rng: np.random.Generator) -> np.ndarray:
    """Unit-radius irregular convex polygon (3-5 vertices): no rotational symmetry, so rotation is visible."""
    count = int(rng.integers(3, 6))
    # Evenly spread angles, jittered: irregular but never a sliver.
    angles = np.linspace(0, 2 * math.pi, count, endpoint=False) + rng.uniform(-0.4, 0.4, count) * (2 * math.pi / count)
    radii = rng.uniform(0.6, 1.0, count)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1).astype(np.float32)


def render_video(motion: str, rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """``(frames, size, size, 3)`` uint8 frames of one polygon performing ``motion``."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; choose from {MOTIONS}")
    shape = _random_shape(rng)
    # Random hues, fixed polarity (a bright shape on a darker background): the sign of a frame difference at an
    # edge then says which way the edge moved, instead of depending on the colour draw.
    background = rng.integers(0, 90, 3)
    foreground = rng.integers(150, 256, 3)
    noise_level = rng.uniform(2, 10)
    progress = np.linspace(-0.5, 0.5, frames)  # the middle frame is motion-neutral

    # A large shape: its edges cross many patches, so every clip carries plenty of motion signal. It may
    # reach partly out of the frame.
    radius = size * rng.uniform(0.22, 0.32)
    angle = rng.uniform(0, 2 * math.pi)
    travel = size * 0.4  # translation over the whole clip
    centre = rng.uniform(radius / 2 + travel / 2, size - radius / 2 - travel / 2, 2)
    growth = 2.0  # grow: radius x2 over the clip (x 1/sqrt2 .. x sqrt2 around the middle)
    turn = math.radians(rng.uniform(200, 280))  # ~25-35 degrees between 8 sampled frames: direction is clear

    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    for i, p in enumerate(progress):
        cx, cy, r, a = centre[0], centre[1], radius, angle
        if motion == "left":
            cx -= travel * p
        elif motion == "right":
            cx += travel * p
        elif motion == "up":
            cy -= travel * p
        elif motion == "down":
            cy += travel * p
        elif motion == "grow":
            r *= growth**p
        elif motion == "shrink":
            r *= growth ** (-p)
        elif motion == "rotate_cw":  # clockwise on screen: y points down, so the angle increases
            a += turn * p
        else:
            a -= turn * p
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=np.float32)
        vertices = shape @ rot.T * r + np.array([cx, cy], dtype=np.float32)
        mask = polygon_mask(size, size, vertices)
        frame = np.where(mask[..., None], foreground, background).astype(np.float32)
        frame += rng.normal(0, noise_level, frame.shape)
        video[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


def write_mp4(
    path: Path,
    video: Iterable[np.ndarray],
    fps: int = 8,
    *,
    crf: int = 10,
    preset: str = "veryfast",
    gop: int | None = None,
) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames (an array or any iterable of frames) as H.264 (yuv420p) with
    PyAV; the container follows the suffix (.mp4, .mkv, ...). ``gop``: keyframe interval (x264's default
    otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(video)
    first = next(frames)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = first.shape[1], first.shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset, **({"g": str(gop)} if gop else {})}
        for frame in itertools.chain([first], frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_dataset(
    out: str | Path,
    *,
    classes: Sequence[str] = MOTIONS,
    train_per_class: int = 40,
    val_per_class: int = 10,
    size: int = 64,
    frames: int = 16,
    fps: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the dataset under ``out`` (see the module docstring) and return the root."""
    classes = list(classes)
    unknown = [c for c in classes if c not in MOTIONS]
    if unknown or not classes:
        raise ValueError(f"unknown or no classes {unknown}; choose from {MOTIONS}")
    if size % 2:
        raise ValueError(f"size={size} must be even (H.264 yuv420p needs even width and height)")
    if frames < 1:
        raise ValueError(f"frames={frames} must be >= 1")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [
        (split, label, name, index)
        for split, count in (("train", train_per_class), ("val", val_per_class))
        for label, name in enumerate(classes)
        for index in range(count)
    ]
    lists: dict[str, list[str]] = {"train": [], "val": []}
    for split, label, name, index in tqdm(jobs, desc=f"synth {root}", disable=not progress, unit="video"):
        rng = np.random.default_rng([seed, SPLIT_SEEDS[split], label, index])
        relative = f"{split}/{name}/{name}_{index:04d}.mp4"
        write_mp4(root / relative, render_video(name, rng, size, frames), fps)
        lists[split].append(f"{relative} {label}")
    for split, lines in lists.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    metadata = {
        "name": "lsvit-synthetic-motion",
        "classes": classes,
        "size": size,
        "frames": frames,
        "fps": fps,
        "seed": seed,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        # Mirroring swaps left/right and clockwise/anticlockwise: training must not flip these videos.
        "direction_sensitive": True,
    }
    (root / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; existing files are overwritten)")
    parser.add_argument(
        "--classes",
        nargs="+",
        default=list(MOTIONS),
        choices=MOTIONS,
        metavar="MOTION",
        help="motions to include, one class each",
    )
    add_dashed(parser, "train_per_class", type=int, default=40, help="training videos per class")
    add_dashed(parser, "val_per_class", type=int, default=10, help="validation videos per class")
    parser.add_argument("--size", type=int, default=64, help="frame height = width in pixels, even")
    parser.add_argument("--frames", type=int, default=16, help="frames per video")
    parser.add_argument("--fps", type=int, default=8, help="frame rate written to the mp4")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same videos")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> Path:
    root = make_dataset(
        args.out,
        classes=args.classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        size=args.size,
        frames=args.frames,
        fps=args.fps,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"wrote synthetic motion dataset to {root} ({len(args.classes)} classes)")
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lsvit data synth", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
