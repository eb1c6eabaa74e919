"""Training and evaluation samplers: a resumable shuffled shard per rank, and an unpadded evaluation shard."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start part-way into an epoch (after a mid-epoch checkpoint).

    The order depends only on (seed, epoch), not on the world size: every rank takes every ``world``-th index of
    the same permutation, so one process with batch ``world * b`` sees, batch by batch, the union of what
    ``world`` ranks with batch ``b`` see.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def skip(self, samples: int) -> None:
        """Skip this many of this rank's samples in the next epoch only."""
        self.start = samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start :]
        self.start = 0
        return iter(indices)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class EvalShard(torch.utils.data.Sampler):
    """Every ``world``-th index from ``rank``: no padding, so summed metrics count each video once."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
