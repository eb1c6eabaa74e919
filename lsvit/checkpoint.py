"""Training checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and primitive containers (no pickled classes, no numpy arrays), so the
safe loader accepts it. Keys (``FORMAT_VERSION`` 1):

    format_version   int
    model            model state_dict (tensors)
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
    best_metric      best validation top-1 so far (-1.0 before any validation)
    train_args       the training options (primitives), for the record
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


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


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file in the same folder, fsync, then ``os.replace``: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "model_config" not in checkpoint:
        raise ValueError(f"{path} is not an lsvit training checkpoint (no 'model' / 'model_config' entries)")
    version = checkpoint.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {version}; this lsvit reads format {FORMAT_VERSION}")
    return checkpoint
