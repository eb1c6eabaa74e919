"""Sharded checkpoints of ``--fsdp`` runs: weights and optimizer state written by every rank with
torch.distributed.checkpoint (DCP), everything else in the usual checksummed ``last.pt``.

Layout in ``--output_dir``::

    last.pt, previous.pt, best.pt   the checkpoint dict without ``model`` / ``optimizer``; its ``sharded`` entry
                                    names the shard folder and the SHA-256 of every file in it
    sharded/step00000012-<id>/      model/ and optimizer/: DCP folders, one ``__<rank>_0.distcp`` file per rank

A save writes a new shard folder first and then replaces ``last.pt`` atomically, so ``last.pt`` always names a
complete folder; folders no checkpoint names any more are removed. DCP reshards on load: a run may resume with
another number of processes, and :func:`consolidated_model` reads the weights in one process without a process
group (``lsvit infer`` does this through ``load_checkpoint``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from lsvit import checkpoint as ckpt

log = logging.getLogger("lsvit.checkpoint")

SHARDED_KEYS = ("model", "optimizer")  # in the shard folder, not in the checkpoint dict
FORMAT = "torch.distributed.checkpoint"
FOLDER = "sharded"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (DCP's ``.metadata`` included)."""
    return {str(p.relative_to(folder)): _file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def shard_folder(path: Path, checkpoint: dict[str, Any]) -> Path:
    """The shard folder of the checkpoint file ``path`` (named relative to the file's folder)."""
    return path.parent / checkpoint["sharded"]["path"]


def verify_shards(path: Path, checkpoint: dict[str, Any]) -> None:
    """Every shard file the checkpoint names exists with its recorded SHA-256; raises ``CheckpointError``."""
    entry = checkpoint["sharded"]
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise ckpt.CheckpointError(f"checkpoint {path} has a sharded entry this lsvit cannot read: {entry!r:.80}")
    folder = shard_folder(path, checkpoint)
    if not folder.is_dir():
        raise ckpt.CheckpointError(
            f"checkpoint {path} keeps its weights in {folder}, which does not exist: copy the whole run folder "
            f"(the checkpoint and its {FOLDER}/ folder) together"
        )
    found = folder_digests(folder)
    for name, digest in entry["files"].items():
        if name not in found:
            raise ckpt.CheckpointError(f"checkpoint {path}: shard file {folder / name} is missing")
        if found[name] != digest:
            raise ckpt.CheckpointError(
                f"checkpoint {path}: shard file {folder / name} fails its checksum: damaged after it was written"
            )


def consolidated_model(path: Path, checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The whole model ``state_dict`` from the shards, in this process (no process group needed)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(prefix="lsvit-consolidate-") as scratch:
        whole = Path(scratch) / "model.pt"
        dcp_to_torch_save(shard_folder(path, checkpoint) / "model", whole)
        return torch.load(whole, map_location="cpu", weights_only=True)


def _new_folder_name(step: int) -> str:
    """The same new name on every rank: the step and rank 0's clock (a re-save at one step gets its own)."""
    name = [f"step{step:08d}-{time.time_ns():x}"]
    if dist.is_initialized():
        dist.broadcast_object_list(name, src=0)
    return name[0]


def save(trainer, payload: dict[str, Any], best: bool) -> Optional[Path]:
    """Every rank writes its shards of weights and optimizer state; rank 0 then writes the checkpoint file.

    ``payload`` is the checkpoint dict without ``model`` / ``optimizer`` (only rank 0's is used).
    """
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    output_dir = trainer.output_dir
    name = _new_folder_name(trainer.state.step)
    folder = output_dir / FOLDER / name
    model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer)
    dcp.save(model_state, checkpoint_id=folder / "model")
    dcp.save(optimizer_state, checkpoint_id=folder / "optimizer")
    path = None
    if trainer.info.main:  # DCP's coordinator (rank 0) returns once every rank's files are written
        payload["sharded"] = {"format": FORMAT, "path": f"{FOLDER}/{name}", "files": folder_digests(folder)}
        payload = ckpt.with_checksum(payload)
        path = ckpt.save_atomic(payload, output_dir / "last.pt", keep_previous=True)
        if best:
            ckpt.save_atomic(payload, output_dir / "best.pt")
        remove_unused_folders(output_dir)
    return path


def remove_unused_folders(output_dir: Path) -> None:
    """Delete shard folders that no checkpoint file in ``output_dir`` names (older saves, interrupted saves)."""
    used = set()
    for candidate in ckpt.resume_candidates(output_dir):
        try:
            entry = torch.load(candidate, map_location="cpu", weights_only=True).get("sharded")
        except Exception:  # an unreadable checkpoint file: keep every folder rather than guess
            return
        if isinstance(entry, dict):
            used.add(Path(entry["path"]).name)
    for folder in (output_dir / FOLDER).iterdir():
        if folder.is_dir() and folder.name not in used:
            shutil.rmtree(folder, ignore_errors=True)


def load(trainer, checkpoint: dict[str, Any]) -> None:
    """Weights and optimizer state of a sharded checkpoint into the sharded model, each rank reading its part."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = shard_folder(Path(trainer.resume_from), checkpoint)
    model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer)
    dcp.load(model_state, checkpoint_id=folder / "model")
    dcp.load(optimizer_state, checkpoint_id=folder / "optimizer")
    set_state_dict(trainer.model, trainer.optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
