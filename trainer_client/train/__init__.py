"""STAR-DSS finetuning: config, loop, CLI. `run_training(config)` is the programmatic entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer_client.train.config import TrainConfig
    from trainer_client.train.loop import TrainResult

__all__ = ["run_training"]


def run_training(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """Run one finetuning job; see `trainer_client.train.loop.run_training`."""
    from trainer_client.train.loop import run_training as _run

    return _run(config, **kwargs)
