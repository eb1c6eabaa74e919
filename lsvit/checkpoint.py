"""Training checkpoints: written atomically with a checksum, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and primitive containers (no pickled classes, no numpy arrays), so the
safe loader accepts it. Keys (``FORMAT_VERSION`` 2; version 1 is the same without ``checksum``):

    format_version   int
    checksum         {"algorithm": "sha256", "digest": hex}: of every other entry, checked on load
    model            model state_dict (tensors)
    model_ema        EMA weights (state_dict) when trained with --model_ema, else absent
    model_config     ModelConfig.model_dump(): the full architecture, rebuilt with from_checkpoint_dict
    classes          class names, index = label
    data             how clips were made: num_frames, image_size, resize_size, mean, std
    optimizer        AdamW state_dict
    scheduler        LambdaLR state_dict (warmup + cosine)
    scaler           GradScaler state_dict (empty unless fp16 mixed precision)
    epoch            epochs fully completed
    step             optimizer steps taken in total
    sampler          {"seed", "epoch", "batches_done"}: where the next batch of data starts
    rng              one {"torch", "cuda", "numpy", "python"} generator-state dict per rank, at saving time
    history          one dict per completed epoch (the CSV rows); partial: sums of an interrupted epoch
    world_size       processes that trained it
    launch_id        torchrun's job id (TORCHELASTIC_RUN_ID) or None: a restarted worker group resumes only
                     from checkpoints of its own launch
    best_metric      best validation top-1 so far (-1.0 before any validation)
    train_args       the training options (primitives), for the record and for --resume's change report
    sharded          --fsdp runs only: {"format", "path", "files"}: the DCP shard folder holding model and
                     optimizer (absent from the dict then) and every shard file's SHA-256; lsvit/sharded_checkpoint.py

Every problem with a file (missing, a folder, empty, not a checkpoint, damaged, wrong keys) raises
``CheckpointError`` with one line naming the file and the problem.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lsvit.errors import UserError

log = logging.getLogger("lsvit.checkpoint")

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
INFERENCE_KEYS = ("model", "model_config", "classes", "data")
RESUME_KEYS = (*INFERENCE_KEYS, "optimizer", "scheduler", "scaler", "epoch", "step", "sampler", "rng", "history")
PREVIOUS_NAME = "previous.pt"  # the last.pt before the latest save: a fallback when last.pt is damaged


class CheckpointError(UserError):
    """A checkpoint file that cannot be read or written; the message is one line naming the file."""


# ------------------------------------------------------------------------------------------------ checksum


def _feed(digest, value: Any) -> None:
    """Hash ``value``'s type, structure and content in a fixed order (dicts in insertion order, as pickled)."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy())  # the buffer itself: no copy
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, str):
        encoded = value.encode()
        digest.update(f"S{len(encoded)}:".encode() + encoded)
    else:  # None, bool, int, float: repr is exact
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of every entry but ``checksum`` itself."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in payload.items() if key != "checksum"})
    return digest.hexdigest()


def with_checksum(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` plus its ``checksum`` entry (kept when already there: one hash for last.pt and best.pt)."""
    if "checksum" in payload:
        return payload
    return {**payload, "checksum": {"algorithm": "sha256", "digest": payload_digest(payload)}}


# ------------------------------------------------------------------------------------------------- writing


def _write_reason(error: BaseException) -> str:
    """The operating-system cause of a failed write: torch reports it as 'unexpected pos', the OSError is chained."""
    seen = error
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    if seen is None or seen.errno is None:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    hints = {
        errno.ENOSPC: "no space left on the device: free space or choose another --output_dir",
        errno.EFBIG: "file too large: the file-size limit (ulimit -f) or the file system's maximum is below the "
        "checkpoint's size",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system: choose another --output_dir",
        errno.EACCES: "permission denied: choose a writable --output_dir",
    }
    return hints.get(seen.errno, f"{os.strerror(seen.errno)} (errno {seen.errno})")


def clean_stale_temporaries(path: Path) -> int:
    """Remove ``.<name>.*.tmp`` files that interrupted saves of ``path`` (kill -9, power loss) left behind."""
    removed = 0
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        size = stale.stat().st_size
        stale.unlink(missing_ok=True)
        removed += size
        log.info("removed %s (%d bytes) left by an interrupted save", stale, size)
    return removed


def save_atomic(payload: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Add the checksum, write a temporary file in the same folder, fsync, then ``os.replace``.

    A crash never leaves half a file under ``path``. ``keep_previous`` first moves the existing file to
    ``previous.pt`` (a fallback for ``--resume auto`` when the newest one is damaged later).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    payload = with_checksum(payload)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        if keep_previous and path.is_file():
            os.replace(path, path.with_name(PREVIOUS_NAME))
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):
            raise CheckpointError(f"cannot write checkpoint {path}: {_write_reason(error)}") from error
        raise
    return path


# ------------------------------------------------------------------------------------------------- reading


def read_file(path: Path, map_location) -> Any:
    """``torch.load(weights_only=True)`` of any file; every failure is a one-line ``CheckpointError``."""
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass a file in it such as {path / 'last.pt'}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy or save")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as file:
            head = file.read(4)
        if head == b"PK\x03\x04":
            raise CheckpointError(
                f"checkpoint {path} is damaged or truncated ({size} bytes; the zip index at its end is missing: "
                f"an interrupted copy or save)"
            )
        if head[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
            raise CheckpointError(f"checkpoint {path} is not a torch.save file ({size} bytes of something else)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error) or "Unsupported operand" in str(error):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects (classes, numpy arrays) that the safe loader refuses: "
                f"it was not written by lsvit train"
            ) from None
        raise CheckpointError(f"checkpoint {path} is damaged: its contents cannot be unpickled") from None
    except (RuntimeError, EOFError, KeyError, ValueError, TypeError, OSError, AttributeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({detail[:120]})") from None


def verify(checkpoint: dict[str, Any], path: Path, required: Iterable[str]) -> None:
    """Format version, required keys and checksum; raises ``CheckpointError``."""
    version = checkpoint.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path} has format_version {version!r}; this lsvit reads {list(READABLE_VERSIONS)}"
        )
    in_shards = ("model", "optimizer") if "sharded" in checkpoint else ()  # see lsvit/sharded_checkpoint.py
    missing = [key for key in required if key not in checkpoint and key not in in_shards]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: not a complete lsvit training checkpoint")
    stored = checkpoint.get("checksum")
    if stored is None:
        if version >= 2:
            raise CheckpointError(f"checkpoint {path} lacks its checksum entry: damaged or edited")
        log.warning("checkpoint %s predates checksums (format 1): not verified", path)
        return
    if not isinstance(stored, dict) or stored.get("digest") != payload_digest(checkpoint):
        raise CheckpointError(
            f"checkpoint {path} fails its checksum: the file was damaged after it was written (disk, copy)"
        )


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    required: Iterable[str] = INFERENCE_KEYS,
    consolidate: bool = True,
) -> dict[str, Any]:
    """Read, check keys and checksum. ``required``: ``INFERENCE_KEYS`` (default) or ``RESUME_KEYS``.

    A sharded checkpoint (``--fsdp``) has its shard files checked too; ``consolidate`` then reads the whole model
    into ``model`` in this process (resuming ranks read their own shards instead).
    """
    path = Path(path)
    checkpoint = read_file(path, map_location)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not an lsvit training checkpoint (a dict)"
        )
    if "model" in checkpoint and "format_version" not in checkpoint and "model_config" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} is a bare weights file, not an lsvit training checkpoint; for ImageNet/video "
            f"backbone weights use lsvit train --pretrained {path}"
        )
    verify(checkpoint, path, required)
    if "sharded" in checkpoint:
        from lsvit import sharded_checkpoint

        sharded_checkpoint.verify_shards(path, checkpoint)
        if consolidate:
            checkpoint["model"] = sharded_checkpoint.consolidated_model(path, checkpoint)
    return checkpoint


def resume_candidates(output_dir: Path) -> list[Path]:
    """Files ``--resume auto`` may use, newest first: last.pt, then previous.pt and best.pt."""
    return [output_dir / name for name in ("last.pt", PREVIOUS_NAME, "best.pt") if (output_dir / name).is_file()]


def find_resumable(output_dir: Path, map_location="cpu") -> tuple[Optional[Path], Optional[dict], list[str]]:
    """The newest candidate that reads and verifies (highest step), with one line per damaged one."""
    problems: list[str] = []
    good: list[tuple[int, int, Path, dict]] = []
    for order, path in enumerate(resume_candidates(output_dir)):
        try:
            checkpoint = load_checkpoint(path, map_location, RESUME_KEYS, consolidate=False)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        good.append((checkpoint["step"], -order, path, checkpoint))
    if not good:
        return None, None, problems
    _, _, path, checkpoint = max(good, key=lambda entry: entry[:2])
    return path, checkpoint, problems


def alternatives_hint(path: Path) -> str:
    """Other checkpoints next to ``path`` that verify, to name in an error message."""
    others = []
    for candidate in resume_candidates(path.parent):
        if candidate.resolve() == path.resolve():
            continue
        try:
            step = load_checkpoint(candidate, "cpu", RESUME_KEYS, consolidate=False)["step"]
        except CheckpointError:
            continue
        others.append(f"{candidate} (step {step})")
    if not others:
        return "no other valid checkpoint in its folder"
    return f"valid alternatives: {', '.join(others)}; pass one with --resume, or --resume auto to take the newest"


# ---------------------------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from, as tensors and lists (safe for weights_only)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss"]))
