"""`sharding: fsdp`: the loop's model sharded with FSDP2 (`fully_shard`, applied directly: accelerate's
FSDP plugin is not available on CPU processes, and one code path serves CPU and GPU alike).

Each process loads the weights on the CPU; `fully_shard` moves its shard of every block to the
process's device. The optimizer is built over the shards, so AdamW's moments are sharded too. Every
step's metrics are those of the global batch (all processes' micro-batches)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch

from trainer_client.data import Example
from trainer_client.loss import LossOutput
from trainer_client.train.config_parts import OptimConfig
from trainer_client.train.fsdp_checkpoint import load_sharded, save_full, save_sharded
from trainer_client.train.fsdp_reference import ShardedReferenceCompute
from trainer_client.train.fsdp_shard import FsdpConfig, shard
from trainer_client.train.reference import Compute
from trainer_client.train.sharding_rules import LAUNCH

_STATS = ("weighted_ce", "kl", "mean_star", "share_below_half")


class FsdpEngine:
    """FSDP2 across the launcher's processes (torchrun; gloo on CPU, nccl on GPU)."""

    def __init__(self, optim: OptimConfig, acc: Any) -> None:
        if acc.num_processes < 2:
            raise ValueError(f"sharding 'fsdp' shards across processes; start several: {LAUNCH}")
        from torch.distributed.device_mesh import init_device_mesh

        self.acc = acc
        self.fsdp = FsdpConfig.from_train(optim)
        self.mesh = init_device_mesh(acc.device.type, (acc.num_processes,))
        self.load_device = torch.device("cpu")

    def wrap(self, model: Any) -> Any:
        return shard(model, self.fsdp, self.mesh)

    def prepare(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        return model, optimizer

    def trainee(self, model: Any) -> Any:
        return model

    def accumulating(self, model: Any, last: bool) -> AbstractContextManager[Any]:
        return _gradient_sync(model, last)

    def backward(self, loss: Any) -> None:
        loss.backward()

    def clip(self, model: Any, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)

    def global_stats(self, stats: list[LossOutput], tokens: int) -> tuple[list[LossOutput], int]:
        """Every process's micro-batch statistics, rank by rank (each process has as many)."""
        import torch.distributed as dist

        rows = [[float(s.loss.detach()), *(getattr(s, k) for k in _STATS), s.label_tokens] for s in stats]
        mine = torch.tensor(rows, dtype=torch.float64, device=self.acc.device)
        parts = [torch.empty_like(mine) for _ in range(self.acc.num_processes)]
        dist.all_gather(parts, mine)
        count = torch.tensor([tokens], dtype=torch.float64, device=self.acc.device)
        dist.all_reduce(count)
        out = [
            LossOutput(torch.tensor(r[0]), r[1], r[2], r[3], r[4], label_tokens=int(r[5]))
            for part in parts
            for r in part.cpu().tolist()
        ]
        return out, int(count.item())

    def reference_compute(self, examples: Sequence[Example]) -> Compute:
        return ShardedReferenceCompute(examples)

    def save(
        self, out: Path, step: int, model: Any, opt: Any, sched: Any, lora: bool, pos: dict[str, Any]
    ) -> None:
        save_sharded(out, step, model, opt, sched, lora, pos)

    def load(self, path: Path, model: Any, opt: Any, sched: Any, lora: bool) -> dict[str, Any]:
        return load_sharded(path, model, opt, sched, lora)

    def save_final(self, final_dir: Path, model: Any, tokenizer: Any, lora: bool) -> None:
        save_full(final_dir, model, tokenizer, lora)


@contextmanager
def _gradient_sync(model: Any, last: bool) -> Any:
    """Reduce-scatter the gradients only after the step's last micro-batch (FSDP2's no_sync)."""
    model.set_requires_gradient_sync(last)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
