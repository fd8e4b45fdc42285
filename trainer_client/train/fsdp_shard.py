"""FSDP2 (`torch.distributed.fsdp.fully_shard`) over the trainee: one unit per decoder layer plus the
root, float32 masters with an optional bf16 compute dtype, and what each process then holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainer_client.train.config_parts import OptimConfig


@dataclass(frozen=True)
class FsdpConfig:
    """How the trainee is sharded."""

    compute_dtype: torch.dtype | None = None
    """The dtype the parameters are gathered in for forward and backward (None: their own, float32);
    gradients are reduced in float32 and the sharded masters stay float32."""
    reshard_after_forward: bool = True
    """Free the gathered layer after its forward (ZeRO-3); False keeps it until the backward (ZeRO-2)."""

    @classmethod
    def from_train(cls, optim: OptimConfig) -> FsdpConfig:
        return cls(compute_dtype=torch.bfloat16 if optim.mixed_precision == "bf16" else None)


def layer_classes(model: Any) -> tuple[type[torch.nn.Module], ...]:
    """The transformer block classes of `model` (a Hugging Face model, maybe inside a peft model),
    named by its `_no_split_modules`."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})


def shard(model: Any, cfg: FsdpConfig, mesh: Any) -> Any:
    """Shard `model` in place over `mesh`: every transformer block its own FSDP unit (gathered only
    while it runs), the rest (embeddings, final norm, head) the root's. Returns the model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=cfg.compute_dtype, reduce_dtype=torch.float32)
    kw: dict[str, Any] = dict(mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    blocks = layer_classes(model)
    if not blocks:
        raise ValueError(f"sharding 'fsdp': {type(model).__name__} names no transformer block class")
    for m in list(model.modules()):
        if isinstance(m, blocks):
            fully_shard(m, **kw)
    fully_shard(model, **kw)
    return model


def local_bytes(tensors: Any) -> int:
    """Bytes this process holds of `tensors` (the local shard of a DTensor, all of a plain tensor)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def state_bytes(model: Any, optimizer: Any) -> dict[str, int]:
    """This process's bytes of trainable state: parameters (all of them, frozen ones included),
    gradients and optimizer states."""
    params = list(model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    return {
        "parameters": local_bytes(params),
        "gradients": local_bytes(p.grad for p in params),
        "optimizer": local_bytes(states),
    }
