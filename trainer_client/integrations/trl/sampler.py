"""The sample order of a StarDSSTrainer run: star-train's, known in advance so scores are prefetched."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch.utils.data import Sampler

from trainer_client.train.sampler import EpochSampler


class StarEpochSampler(Sampler[int]):
    """A fresh permutation per epoch from seed + epoch, exactly `star-train`'s (`EpochSampler`). The
    Trainer calls `set_epoch` before each epoch; without it, each iteration is the next epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = EpochSampler(self.n, 1, 1, self.seed).epoch_indices(self.epoch)
        self.epoch += 1
        return iter(order)

    def __len__(self) -> int:
        return self.n


def batch_order(
    n: int,
    seed: int,
    batch_size: int,
    epochs: int,
    rank: int = 0,
    world: int = 1,
    drop_last: bool = False,
    even_batches: bool = True,
) -> Iterator[list[int]]:
    """The example indices of each micro-batch this process will see, in order: each epoch's permutation
    cut into `batch_size` batches and, with several processes, sharded as accelerate shards a batch
    sampler (`BatchSamplerShard`: every `world`-th batch from `rank`, the last round completed from the
    epoch's first examples when `even_batches`). A batch that comes otherwise is fetched when it comes."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    for epoch in range(epochs):
        perm = EpochSampler(n, 1, 1, seed).epoch_indices(epoch)
        batches: Iterable[list[int]] = BatchSampler(perm, batch_size, drop_last)
        if world > 1:
            batches = BatchSamplerShard(
                BatchSampler(perm, batch_size, drop_last), world, rank, even_batches=even_batches
            )
        yield from (list(b) for b in batches)
