"""The safety landscape: perturb a model along random directions (or towards a finetuned checkpoint),
measure safety at every point with a guard or refusal keywords, and summarise it as VISAGE."""

from trainer_client.judges import (
    Judge,
    KeywordJudge,
    VerdictJudge,
    guard_service_judge,
    in_process_guard_judge,
)
from trainer_client.landscape.compare import compare_landscapes, markdown_table
from trainer_client.landscape.directions import DeltaDirection, RandomDirection, perturbed_parameters
from trainer_client.landscape.grid import DEFAULT_ALPHAS, GridPoint, interpolation_alphas, linspace
from trainer_client.landscape.perturb import Perturber
from trainer_client.landscape.runner import LandscapeConfig, landscape_1d, load_policy, run_landscape
from trainer_client.landscape.visage import basin_1d, basin_2d, visage

__all__ = [
    "DEFAULT_ALPHAS",
    "DeltaDirection",
    "GridPoint",
    "Judge",
    "KeywordJudge",
    "LandscapeConfig",
    "Perturber",
    "RandomDirection",
    "VerdictJudge",
    "basin_1d",
    "basin_2d",
    "compare_landscapes",
    "guard_service_judge",
    "in_process_guard_judge",
    "interpolation_alphas",
    "landscape_1d",
    "linspace",
    "load_policy",
    "markdown_table",
    "perturbed_parameters",
    "run_landscape",
    "visage",
]
