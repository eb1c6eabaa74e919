"""Tar shards: ``lsvit data shard`` packs real clips readable with plain tarfile; the streaming training input splits
every epoch exactly between ranks and workers, trains the steps the file tree trains and resumes mid-epoch exactly."""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from lsvit.checkpoint import load_checkpoint
from lsvit.cli import build_parser
from lsvit.data import ClipTransform, collate_clips, read_annotation_list
from lsvit.errors import DataError
from lsvit.shard_dataset import ShardClipDataset, expand_braces, open_shards, read_plan
from lsvit.shards import iter_samples
from lsvit.shards import run as shard_run

from .conftest import QUICK_FLAGS, quick_train, run_module


def pack(source: Path, out: str, *extra: str) -> dict:
    """``lsvit data shard`` in this process; returns the manifests by split."""
    return shard_run(build_parser().parse_args(["data", "shard", "--data_root", str(source), "--out", out,
                                                "--no_progress", *extra]))  # fmt: skip


@pytest.fixture(scope="module")
def small_shards(synth_root, small_list, tmp_path_factory) -> Path:
    """The 32-video list packed 4 per shard: ``<dir>/train/shard-00000{0..7}.tar``."""
    out = tmp_path_factory.mktemp("shards")
    pack(small_list, str(out), "--video_root", str(synth_root), "--max_count", "4")
    return out / "train"


def eval_transform() -> ClipTransform:
    return ClipTransform(32, 32, train=False)


def test_every_video_and_label_read_back_with_plain_tarfile(small_shards, small_list, synth_root):
    records = read_annotation_list(small_list, synth_root)
    manifest = json.loads((small_shards / "manifest.json").read_text())
    assert manifest["count"] == len(records) == 32 and len(manifest["shards"]) == 8
    assert [shard["name"] for shard in manifest["shards"]] == [f"shard-{i:06d}.tar" for i in range(8)]
    found = {}
    for shard in manifest["shards"]:
        path = small_shards / shard["name"]
        assert path.stat().st_size == shard["bytes"]
        with tarfile.open(path, mode="r|") as tar:  # streaming, as a reader of object storage would
            samples = list(iter_samples(tar))
        assert len(samples) == shard["count"] == 4
        for key, members in samples:
            assert sorted(members) == ["cls", "json", "mp4"]
            info = json.loads(members["json"])
            assert int(members["cls"]) == info["label"] and manifest["classes"][info["label"]] == info["class"]
            found[info["path"]] = (int(members["cls"]), members["mp4"], key)
    assert sorted(int(key) for _, _, key in found.values()) == list(range(32))  # keys: the packed order
    for record in records:  # every listed video once, its bytes unchanged, its label kept
        label, payload, _ = found[str(record.path)]
        assert label == record.label and payload == record.path.read_bytes()


def test_webdataset_reads_the_shards(small_shards):
    import webdataset

    manifest = json.loads((small_shards / "manifest.json").read_text())
    pattern = f"file://{small_shards}/shard-{{000000..000007}}.tar"
    reader = webdataset.WebDataset(pattern, shardshuffle=False).decode()
    samples = list(reader.to_tuple("__key__", "mp4", "cls", "json"))
    assert [int(key) for key, _, _, _ in samples] == list(range(manifest["count"]))
    for _, video, label, info in samples:
        assert label == info["label"] and Path(info["path"]).read_bytes() == video


def test_byte_limit_and_identical_output(synth_root, small_list, tmp_path):
    first = pack(small_list, str(tmp_path / "a"), "--video_root", str(synth_root), "--max_count", "0",
                 "--max_bytes", "40KB")["train"]  # fmt: skip
    video = max(path.stat().st_size for path in (synth_root / "train").rglob("*.mp4"))
    for shard in first["shards"]:  # the end-of-archive blocks may round a file up to the next 10 KiB record
        assert shard["count"] >= 1 and (shard["count"] == 1 or shard["bytes"] <= 40_000 + 10_240 + video)
    assert sum(shard["count"] for shard in first["shards"]) == 32 and len(first["shards"]) > 2
    pack(small_list, str(tmp_path / "b"), "--video_root", str(synth_root), "--max_count", "0", "--max_bytes", "40KB")
    for shard in first["shards"]:
        name = shard["name"]
        assert (tmp_path / "a/train" / name).read_bytes() == (tmp_path / "b/train" / name).read_bytes()


def test_brace_patterns_and_read_plan():
    assert expand_braces("d/s-{008..011}.tar") == [f"d/s-{i:03d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}{1..2}") == ["a1", "a2", "b1", "b2"]
    # positions 3..12 of shards holding 4, 0, 5 samples: wraps past the end to the start
    assert read_plan([4, 0, 5], 3, 12) == [(0, 3, 1), (2, 0, 5), (0, 0, 3)]


@pytest.mark.parametrize("world, workers, batch, buffer", [(1, 1, 4, 0), (2, 3, 3, 5), (3, 2, 5, 8), (2, 4, 1, 3)])
def test_ranks_and_workers_cover_every_sample_once_per_epoch(small_shards, world, workers, batch, buffer):
    shards = open_shards(str(small_shards))
    for training in (True, False):
        indices = []
        for rank in range(world):
            dataset = ShardClipDataset(shards, 4, eval_transform(), seed=3, rank=rank, world=world, batch_size=batch,
                                       shuffle_buffer=buffer, training=training, num_workers=workers)  # fmt: skip
            dataset.set_epoch(1)
            mine = [index for worker in range(workers) for _, index, _, _ in dataset.reader_stream(worker, workers)]
            assert len(mine) == dataset.num_samples == (math.ceil(32 / world) if training else len(mine))
            indices += mine
        if training:  # padded as DistributedSampler pads: equal shares, the wrap repeats the first samples
            per_rank = math.ceil(32 / world)
            assert len(indices) == per_rank * world
            assert sorted(set(indices)) == list(range(32))
            assert len(indices) - len(set(indices)) == per_rank * world - 32
        else:
            assert sorted(indices) == list(range(32))


def test_shuffle_depends_on_epoch_and_seed(small_shards):
    shards = open_shards(str(small_shards))

    def order(seed, epoch):
        dataset = ShardClipDataset(shards, 4, eval_transform(), seed=seed, batch_size=4, shuffle_buffer=6)
        dataset.set_epoch(epoch)
        return [index for _, index, _, _ in dataset.reader_stream(0, 1)]

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == list(range(32))
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)


def test_dataloader_workers_deliver_batches_in_order_and_resume_exactly(small_shards):
    """Two DataLoader workers: a loader skipping k batches yields exactly the uninterrupted loader's batches k..."""
    shards = open_shards(str(small_shards))
    dataset = ShardClipDataset(shards, 4, ClipTransform(32, 32, train=True), seed=5, batch_size=3, shuffle_buffer=4,
                               num_workers=2)  # fmt: skip

    def batches(skip: int) -> list[tuple[list[int], torch.Tensor]]:
        dataset.set_epoch(2)
        dataset.skip(skip * 3)
        loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_clips)
        return [(batch["index"].tolist(), batch["video"]) for batch in loader]

    full = batches(0)
    assert len(full) == math.ceil(32 / 3) and sorted(i for indices, _ in full for i in indices) == list(range(32))
    assert full[0][1].dtype == torch.uint8 and full[0][1].shape == (3, 4, 3, 32, 32)
    for skip in (3, 6):
        rest = batches(skip)
        assert [indices for indices, _ in rest] == [indices for indices, _ in full[skip:]]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, full[skip:]))  # same clips, same crops


def test_training_on_shards_takes_the_file_tree_steps_and_resumes_mid_epoch_exactly(
    small_shards, synth_root, small_list, tmp_path, capsys
):
    flags = ["--epochs", "2", "--batch_size", "4", "--seed", "4"]
    tree = quick_train(synth_root, small_list, tmp_path / "tree", *flags)
    # Saving every 13 steps leaves previous.pt at step 13: 5 of 8 batches into the second epoch.
    shard_flags = ["--train_shards", f"file://{small_shards}/manifest.json", "--num_workers", "2",
                   "--shuffle_buffer", "6", "--save_every_steps", "13", *flags]  # fmt: skip
    reference = train_shards(tmp_path / "ref", *shard_flags)
    assert [row["step"] for row in reference["history"]] == [row["step"] for row in tree["history"]] == [8, 16]
    assert [row["train_clips"] for row in reference["history"]] == [32, 32]
    mid = tmp_path / "mid.pt"
    shutil.copy(tmp_path / "ref" / "previous.pt", mid)
    checkpoint = load_checkpoint(mid)
    assert checkpoint["epoch"] == 1 and checkpoint["sampler"]["batches_done"] == 5
    train_shards(tmp_path / "resumed", *shard_flags, "--resume", str(mid))
    final, expected = load_checkpoint(tmp_path / "resumed" / "last.pt"), load_checkpoint(tmp_path / "ref" / "last.pt")
    assert final["step"] == expected["step"] == 16
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), f"{name} differs after resume"
    assert final["history"][-1]["train_loss"] == expected["history"][-1]["train_loss"]
    with pytest.raises(ValueError, match="--shuffle_buffer 5 would shift the data position"):
        train_shards(tmp_path / "buffer", *shard_flags, "--shuffle_buffer", "5", "--resume", str(mid))
    # Another worker count reads another split for the rest of the epoch: said, with its bound, and the run ends.
    capsys.readouterr()
    other = train_shards(tmp_path / "other", *shard_flags, "--num_workers", "1", "--resume", str(mid))
    assert "up to 20 of its samples are seen twice or not at all" in capsys.readouterr().out
    assert other["history"][-1]["step"] == 16


def train_shards(out: Path, *flags: str) -> dict:
    """quick_train's model and flags on shards (no --data_root)."""
    from lsvit import train

    threads = torch.get_num_threads()
    try:
        return train.run(["--output_dir", str(out), *QUICK_FLAGS, *flags])
    finally:
        torch.set_num_threads(threads)


def test_memory_url_round_trip_and_validation_shards(synth_root, tmp_path):
    import fsspec

    manifests = pack(synth_root, "memory://lsvit-test/synth", "--max_count", "50")
    assert [len(manifests[name]["shards"]) for name in ("train", "val")] == [4, 1]
    shards = open_shards("memory://lsvit-test/synth/train/shard-{000001..000002}.tar")
    assert shards.counts == [50, 50] and shards.offsets == [50, 100]
    dataset = ShardClipDataset(open_shards("memory://lsvit-test/synth/val"), 4, eval_transform(), training=False)
    items = list(dataset)
    assert len(items) == 48 and all(item["error"] is None for item in items)
    labels = [item["label"] for item in sorted(items, key=lambda item: item["index"])]
    with fsspec.open("memory://lsvit-test/synth/val/shard-000000.tar", "rb") as file:
        with tarfile.open(fileobj=io.BytesIO(file.read())) as tar:
            assert labels == [int(members["cls"]) for _, members in iter_samples(tar)]
    fsspec.filesystem("memory").rm("/lsvit-test", recursive=True)


def test_corrupt_members_and_damaged_shards_are_skipped_with_reasons(small_shards, tmp_path):
    folder = tmp_path / "train"
    shutil.copytree(small_shards, folder)
    # Shard 0: the second video's bytes replaced by noise (same size: the tar stays valid).
    with tarfile.open(small_shards / "shard-000000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(folder / "shard-000000.tar", "w") as tar:
        for member, payload in members:
            if member.name == "000000001.mp4":
                payload = bytes(len(payload))
            tar.addfile(member, io.BytesIO(payload))
    # Shard 1: cut in the middle of its third sample.
    damaged = folder / "shard-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    dataset = ShardClipDataset(open_shards(str(folder)), 4, eval_transform(), training=False)
    items = {item["index"]: item for item in dataset}
    assert len(items) == 32
    failed = {index: item["error"] for index, item in items.items() if item["error"]}
    assert failed[1].startswith("unreadable") and "shard-000000.tar#000000001" in items[1]["path"]
    assert all("shard-000001.tar is damaged" in failed[index] for index in failed if index >= 4)
    assert {1, 6, 7} <= set(failed) <= {1, 4, 5, 6, 7}  # the samples before the cut still decode
    assert all(items[i]["video"] is not None for i in items if i not in failed)


def test_missing_shards_empty_patterns_and_too_few_shards_fail_with_one_line(small_shards, tmp_path):
    folder = tmp_path / "train"
    shutil.copytree(small_shards, folder)
    (folder / "shard-000003.tar").unlink()
    with pytest.raises(DataError, match=r"1 of the 8 shards are missing from .*shard-000003.tar"):
        open_shards(str(folder))
    with pytest.raises(DataError, match="is empty"):
        open_shards(" ")
    with pytest.raises(DataError, match="matches no shard file"):
        open_shards(str(folder / "shard-9*.tar"))
    with pytest.raises(DataError, match="no manifest.json"):
        open_shards(str(tmp_path))
    shards = open_shards(str(small_shards))
    with pytest.raises(DataError, match=r"8 shards cannot feed 2 rank\(s\) x 5 DataLoader worker\(s\) = 10 readers.*"
                                        r"--max_count 3\) or use --num_workers 4"):  # fmt: skip
        ShardClipDataset(shards, 4, eval_transform(), world=2, num_workers=5)
    with pytest.raises(DataError, match="--data_root not read with --train_shards"):
        train_shards(tmp_path / "both", "--train_shards", str(small_shards), "--data_root", str(tmp_path))
    result = run_module("lsvit.cli", "train", "--train_shards", str(folder), *QUICK_FLAGS, "--epochs", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --train_shards: 1 of the 8 shards are missing")
