"""The seeded, resumable sample order: which examples each micro-batch of each epoch holds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MicroBatch:
    epoch: int
    step: int
    """Global optimizer step this micro-batch belongs to."""
    indices: list[int]


@dataclass(frozen=True)
class EpochSampler:
    """A fresh permutation per epoch (seed + epoch), sharded over processes, cut into micro-batches."""

    n: int
    batch_size: int
    grad_accum: int = 1
    seed: int = 0
    rank: int = 0
    world: int = 1

    def epoch_indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        usable = (self.n // self.world) * self.world if self.world > 1 else self.n
        return perm[:usable][self.rank :: self.world]

    @property
    def micro_per_epoch(self) -> int:
        per_rank = self.n // self.world if self.world > 1 else self.n
        return math.ceil(per_rank / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_per_epoch / self.grad_accum)

    def plan(self, epochs: int, start_step: int = 0) -> list[MicroBatch]:
        """Every micro-batch from optimizer step `start_step` to the end of the last epoch, in order."""
        out: list[MicroBatch] = []
        spe = self.steps_per_epoch
        for epoch in range(start_step // spe if spe else 0, epochs):
            idx = self.epoch_indices(epoch)
            for m in range(self.micro_per_epoch):
                step = epoch * spe + m // self.grad_accum
                if step >= start_step:
                    out.append(MicroBatch(epoch, step, idx[m * self.batch_size : (m + 1) * self.batch_size]))
        return out
