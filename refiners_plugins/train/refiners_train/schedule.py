"""Which samples each step trains on, and their random numbers, whatever the number of processes.

A step trains on one *global batch*: ``batch_size x processes x gradient_accumulation`` sample indices. The
sequence of global batches depends only on the seed, the groups of samples (one per training size) and the
global batch size: each epoch shuffles every group, cuts it into global batches (the last one filled up
with the group's first samples again) and shuffles the order of the batches. Process ``r`` takes micro-batch
``a`` of a step as positions ``[(a * processes + r) * batch_size, ... + batch_size)`` of the global batch, and
draws the random numbers of the sample at position ``j`` from :func:`sample_generator` ``(seed, step, j)``.
So 1 process x batch 2, 2 processes x batch 1 and 1 process x batch 1 x accumulation 2 see the same samples
with the same noise.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import torch

__all__ = ["BatchPlan", "derived_seed", "sample_generator"]


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (stable across runs, machines and Python versions)."""
    digest = hashlib.blake2b(":".join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_generator(seed: int, step: int, position: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of the sample at ``position`` in global batch ``step``."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, step, position))


class BatchPlan:
    """The global batches of every step (see the module docstring)."""

    def __init__(self, groups: list[list[int]], global_batch: int, seed: int) -> None:
        if global_batch < 1:
            raise ValueError("the global batch size must be at least 1")
        self.groups = [list(group) for group in groups if group]
        self.global_batch = global_batch
        self.seed = seed
        self.batches_per_epoch = sum(-(-len(group) // global_batch) for group in self.groups)

    @lru_cache(maxsize=4)  # noqa: B019 - a few epochs, held by the plan itself
    def _epoch(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        batches: list[list[int]] = []
        for group in self.groups:
            order = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
            for start in range(0, len(order), self.global_batch):
                batch = order[start : start + self.global_batch]
                while len(batch) < self.global_batch:
                    batch += order[: self.global_batch - len(batch)]
                batches.append(batch)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def batch(self, step: int) -> list[int]:
        """The sample indices of global batch ``step`` (0-based)."""
        epoch, index = divmod(step, self.batches_per_epoch)
        return self._epoch(epoch)[index]
