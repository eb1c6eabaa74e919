"""--fsdp (FSDP2) on 2 gloo processes: the same weights as DDP, sharded checkpoints that resume exactly and load
into one process without a process group, damaged shards refused, unsupported combinations refused."""

from __future__ import annotations

import shutil

import pytest
import torch

from lsvit import infer
from lsvit.checkpoint import CheckpointError, load_checkpoint
from lsvit.config import ModelConfig
from lsvit.model import LSViTForAction

from .conftest import quick_train
from .torchrun import TORCHRUN, assert_same_training, finish, start, train_command

LAUNCH = [*TORCHRUN, "--standalone", "--nproc_per_node", "2"]


def _launch(synth_root, small_list, out, *extra) -> str:
    launch = start([*LAUNCH, *train_command(synth_root, small_list, out, "--fsdp", *extra)])
    output = finish([launch], timeout=180)[0]
    assert launch.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def fsdp_run(synth_root, small_list, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    _launch(synth_root, small_list, out, "--save_every_steps", "1")
    return out


def test_fsdp_matches_ddp_and_loads_in_one_process(fsdp_run, two_nodes, synth_root, tmp_path):
    # load_checkpoint runs here, in a process without a process group: the shards are consolidated.
    sharded, ddp = load_checkpoint(fsdp_run / "last.pt"), load_checkpoint(two_nodes[0] / "last.pt")
    assert "sharded" in sharded and sharded["world_size"] == 2
    assert_same_training(sharded, ddp)
    model = LSViTForAction(ModelConfig.from_checkpoint_dict(sharded["model_config"]))
    model.load_state_dict(sharded["model"])  # strict: every key, every shape of the unsharded model
    # lsvit infer on the sharded checkpoint scores the validation clips as the run's last validation did.
    metrics = infer.run(
        ["--checkpoint", str(fsdp_run / "last.pt"), "--data_root", str(synth_root), "--split", "val",
         "--output_dir", str(tmp_path), "--num_workers", "0", "--no_progress"]
    )  # fmt: skip
    assert metrics["scored"] == 48 and metrics["top1"] == pytest.approx(sharded["history"][-1]["val_top1"])
    # One shard file per rank; only the folders last.pt, previous.pt and best.pt name are kept.
    folders = sorted((fsdp_run / "sharded").iterdir())
    named = {load_checkpoint(fsdp_run / n, consolidate=False)["sharded"]["path"] for n in ("last.pt", "previous.pt")}
    assert 2 <= len(folders) <= 3 and named <= {f"sharded/{f.name}" for f in folders}
    assert sorted(p.name for p in (folders[-1] / "model").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


def test_fsdp_resumes_from_a_sharded_checkpoint_exactly(synth_root, small_list, fsdp_run, tmp_path):
    # previous.pt: step 7, one batch before the end of the second epoch; resumed into another folder.
    assert load_checkpoint(fsdp_run / "previous.pt", consolidate=False)["step"] == 7
    output = _launch(synth_root, small_list, tmp_path / "resumed", "--resume", str(fsdp_run / "previous.pt"))
    assert "resumed from" in output
    final, expected = load_checkpoint(tmp_path / "resumed" / "last.pt"), load_checkpoint(fsdp_run / "last.pt")
    assert final["step"] == expected["step"] == 8
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), f"{name} differs after resuming"


def test_damaged_shard_is_refused(fsdp_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fsdp_run, copy)
    folder = copy / load_checkpoint(copy / "last.pt", consolidate=False)["sharded"]["path"]
    shard = folder / "model" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="__1_0.distcp fails its checksum"):
        load_checkpoint(copy / "last.pt")
    shutil.rmtree(folder)
    with pytest.raises(CheckpointError, match="does not exist: copy the whole run folder"):
        load_checkpoint(copy / "last.pt")


def test_unsupported_fsdp_combinations_are_refused(synth_root, small_list, fsdp_run, tmp_path):
    with pytest.raises(ValueError, match="--fsdp shards the model over torchrun processes, but this is a single"):
        quick_train(synth_root, small_list, tmp_path / "single", "--fsdp")
    flags = ("--epochs", "2", "--batch_size", "4", "--seed", "3", "--resume", str(fsdp_run / "last.pt"))
    with pytest.raises(ValueError, match=r"is sharded \(trained with --fsdp\); resume it with --fsdp"):
        quick_train(synth_root, small_list, tmp_path / "unsharded", *flags)
