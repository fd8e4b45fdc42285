"""Landscapes on the built-in toy world: the aligned toy chat model and its finetuned versions.

The toy demo calls `toy_landscapes` after its finetuning runs; with the defaults the three models'
landscapes take about a minute on 2 CPU cores (33 points x 24 prompts x 64 tokens per model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from star_toy.eval_sets import toy_harmful_prompts
from trainer_client.generation import GenerationConfig
from trainer_client.landscape.compare import compare_landscapes
from trainer_client.landscape.grid import linspace
from trainer_client.landscape.safety import Judge
from trainer_client.landscape.visage import DEFAULT_BASIN_RULE, BasinRule


@dataclass(frozen=True)
class ToyLandscapeConfig:
    """Grid and generation for toy landscapes.

    The toy chat model (2 layers, 128 wide) still refuses everywhere on the published [-0.5, 0.5]
    grid; its basin edges lie around |alpha| = 1, so the toy grid spans [-2, 2] in steps of 0.25.
    """

    directions: int = 2
    steps: int = 17
    """Points per direction over alpha in [-alpha_max, alpha_max] (0 included when odd)."""
    alpha_max: float = 2.0
    prompts: int = 24
    """Held-out toy hazard requests used at every point."""
    max_new_tokens: int = 64
    """As the demo's evaluation: long enough for harmful steps after a benign opening."""
    batch_size: int = 32
    seed: int = 0
    basin_rule: BasinRule = DEFAULT_BASIN_RULE
    """VISAGE's basin rule; the report also shows the other rule's VISAGE (see landscape/visage.py)."""
    basin_tolerance: float = 10.0


def toy_landscapes(
    models: Mapping[str, str | Path],
    judge: Judge,
    out_dir: str | Path,
    config: ToyLandscapeConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """1D landscapes of the toy models (name -> directory) on the same directions and prompts; returns
    `compare_landscapes`' dict (VISAGE per model, overlay plot out_dir/landscapes_1d.png)."""
    cfg = config or ToyLandscapeConfig()
    return compare_landscapes(
        {k: str(v) for k, v in models.items()},
        toy_harmful_prompts(cfg.prompts),
        judge,
        out_dir,
        directions=cfg.directions,
        alphas=linspace(-cfg.alpha_max, cfg.alpha_max, cfg.steps),
        seed=cfg.seed,
        generation=GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size),
        basin_tolerance=cfg.basin_tolerance,
        basin_rule=cfg.basin_rule,
        progress=progress,
    )
