"""Reference log-probs computed by the sharded trainee itself, the work split across the processes.

An FSDP forward is a collective: every process runs the same number of forwards. Each process asks for
the examples it lacks (its cache may differ from another's); the union is split by rank, a process
whose part is done runs its first example again, and the results are exchanged. The model is left
resharded: FSDP2 keeps the root module's parameters unsharded after a forward (it expects the backward
next), and a checkpoint load then copies full tensors into plain-tensor parameters (a resume failed so:
"aten.copy_.default got mixed torch.Tensor and DTensor")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainer_client.data import Example
from trainer_client.train.reference import Autocast, label_logprobs


class ShardedReferenceCompute:
    """A `compute` for `Reference.precompute` (the signature of `reference_logprobs`) on a sharded
    model; `examples` is the run's whole list (indexed by `Example.index`)."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.by_index = {e.index: e for e in examples}

    def __call__(
        self,
        model: Any,
        asked: Sequence[Example],
        pad_id: int,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> list[np.ndarray]:
        import torch.distributed as dist

        world, rank = dist.get_world_size(), dist.get_rank()
        wanted: list[list[int]] = [[] for _ in range(world)]
        dist.all_gather_object(wanted, [e.index for e in asked])
        union = sorted({i for part in wanted for i in part})
        mine = union[rank::world]
        rounds = math.ceil(math.ceil(len(union) / world) / batch_size)
        got: dict[int, np.ndarray] = {}
        for r in range(rounds):
            part = mine[r * batch_size : (r + 1) * batch_size] or union[:1]
            exs = [self.by_index[i] for i in part]
            with torch.no_grad():
                lps = label_logprobs(model, exs, pad_id, batch_size, device, autocast)
            got.update(zip(part, lps, strict=True))
        _reshard(model)
        everyone: list[dict[int, np.ndarray]] = [{} for _ in range(world)]
        dist.all_gather_object(everyone, {i: got[i] for i in mine})
        merged = {i: a for part in everyone for i, a in part.items()}
        return [merged[e.index] for e in asked]


def _reshard(model: Any) -> None:
    """Free every FSDP2 module's gathered parameters (what a forward without backward leaves behind)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
