"""The `sharding` recipe key: its values and the combinations a sharded run refuses (no torch import)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer_client.train.config import TrainConfig

SHARDINGS = ("none", "fsdp")

LAUNCH = "torchrun --nproc_per_node N -m trainer_client.train.cli --config ..."
"""How a sharded run is started (docs/training.md, 'Sharded training')."""


def sharding_checks(cfg: TrainConfig) -> list[tuple[bool, str]]:
    """(ok, message) pairs for `TrainConfig.__post_init__`: what `sharding: fsdp` does not combine with
    (the values themselves are `OptimConfig`'s check)."""
    fsdp = cfg.optim.sharding == "fsdp"
    frozen_copy = cfg.trainee.finetune == "full" and cfg.loss.method == "dss" and cfg.loss.lambda_kl > 0
    return [
        (
            not (fsdp and frozen_copy and cfg.loss.reference == "auto"),
            "sharding 'fsdp' with finetune 'full' keeps no frozen reference copy: set reference: "
            "precomputed (the reference log-probs computed once by the sharded model before training)",
        ),
        (
            not (fsdp and cfg.optim.mixed_precision == "fp16"),
            "sharding 'fsdp' has no fp16 loss scaling: set mixed_precision: bf16 (float32 masters, bf16 "
            "compute) or no",
        ),
    ]
