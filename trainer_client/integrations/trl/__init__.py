"""STAR-DSS inside TRL (the `[trl]` extra): `StarDSSTrainer`, an `SFTTrainer` whose loss is
`star-train`'s, with per-token STAR weights fetched ahead of each batch. See docs/training.md."""

from __future__ import annotations

try:
    import trl  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("trainer_client.integrations.trl needs TRL: pip install 'star-guard[trl]'") from e

from trainer_client.integrations.trl.collator import StarDataCollator
from trainer_client.integrations.trl.config import StarDSSConfig
from trainer_client.integrations.trl.dataset import STAR_INDEX
from trainer_client.integrations.trl.trainer import StarDSSTrainer

__all__ = ["STAR_INDEX", "StarDSSConfig", "StarDSSTrainer", "StarDataCollator"]
