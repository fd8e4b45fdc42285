"""StarDSSConfig: what a TRL run needs to know beyond its SFTConfig (the scorer, the method, the loss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer_client.train.config import TrainConfig
from trainer_client.train.config_parts import (
    DataConfig,
    LossConfig,
    OptimConfig,
    RunConfig,
    StarConfig,
    TraineeConfig,
    part_of,
)


@dataclass(frozen=True)
class StarDSSConfig(StarConfig, LossConfig):
    """The STAR side of a `StarDSSTrainer` run: the `star` and `loss` parts of a `star-train` config
    (`trainer_client.train.config_parts.StarConfig` and `LossConfig`), written flat, with the same
    meaning and checks. Under TRL, `cache_path` None means OUTPUT_DIR/score_cache.sqlite of the
    SFTConfig, and `reference` 'auto' is the disabled LoRA adapter of a peft model, else the `ref_model`
    given to the trainer or a frozen copy of the model."""

    def __post_init__(self) -> None:
        self.as_train_config("-", "-")  # the parts' checks, and those across them, as a star-train recipe

    @property
    def star(self) -> StarConfig:
        """The scoring part, as a `star-train` config holds it."""
        return part_of(self, StarConfig)

    @property
    def loss(self) -> LossConfig:
        """The loss part, as a `star-train` config holds it."""
        return part_of(self, LossConfig)

    def as_train_config(self, model: str, output_dir: str, **more: Any) -> TrainConfig:
        """The equivalent `star-train` config (with placeholders where TRL's SFTConfig decides); `more`
        changes other recipe keys."""
        cfg = TrainConfig(
            trainee=TraineeConfig(model=model),
            dataset=DataConfig(data="-"),
            star=self.star,
            loss=self.loss,
            optim=OptimConfig(),
            run=RunConfig(output_dir=output_dir),
        )
        return cfg.replace(**more) if more else cfg
