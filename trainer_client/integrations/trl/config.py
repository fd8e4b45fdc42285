"""StarDSSConfig: what a TRL run needs to know beyond its SFTConfig (the scorer, the method, the loss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from star_contract.types import Convention
from trainer_client.train.config import TrainConfig


@dataclass(frozen=True)
class StarDSSConfig:
    """The STAR side of a `StarDSSTrainer` run. The keys mean what the `star-train` recipe keys of the
    same names mean (`trainer_client.train.config.TrainConfig`) and are checked by the same rules."""

    method: str = "dss"
    """'sft', 'rs' or 'dss'."""
    scorer: str | None = None
    """'host:port[,host:port...]' of scorer replicas, or 'local:GUARD_DIR' for an in-process guard."""
    scorers: tuple[str, ...] = ()
    """Several guards, one entry each (instead of `scorer`)."""
    combine: str = "mean"
    guard_preset: str = "llama-guard-3"
    scores_file: str | None = None
    """A JSONL from `star-score-dataset` (offline mode), instead of a scorer."""
    cache_path: str | None = None
    """sqlite score cache; None: OUTPUT_DIR/score_cache.sqlite of the SFTConfig; '' disables it."""
    prefetch_batches: int = 4
    scorer_deadline_s: float = 900.0
    """How long one scoring call may wait for a scorer that is down, restarting or loading."""
    lambda_kl: float = 0.5
    kl_estimator: str = "k2"
    reference: str = "auto"
    """'auto' (a reference forward each step: the disabled LoRA adapter of a peft model, else a frozen
    copy of the model or the `ref_model` given to the trainer) or 'precomputed' (log-probs once, cached)."""
    words_per_chunk: int = 5
    score_temperature: float = 1.0
    star_convention: str = "raw"
    rs_normalize: str = "all"

    def __post_init__(self) -> None:
        self.as_train_config("-", "-")  # the same checks and messages as a star-train recipe

    def as_train_config(self, model: str, output_dir: str, **more: Any) -> TrainConfig:
        """The equivalent `star-train` config (with placeholders where TRL's SFTConfig decides)."""
        return TrainConfig(
            model=model,
            output_dir=output_dir,
            data="-",
            method=self.method,
            scorer=self.scorer,
            scorers=tuple(self.scorers),
            combine=self.combine,
            guard_preset=self.guard_preset,
            scores_file=self.scores_file,
            cache_path=self.cache_path,
            prefetch_batches=self.prefetch_batches,
            scorer_deadline_s=self.scorer_deadline_s,
            lambda_kl=self.lambda_kl,
            kl_estimator=self.kl_estimator,
            reference=self.reference,
            words_per_chunk=self.words_per_chunk,
            score_temperature=self.score_temperature,
            star_convention=self.star_convention,
            rs_normalize=self.rs_normalize,
            **more,
        )

    def example_options(self, max_length: int, all_turns: bool) -> dict[str, Any]:
        """`build_examples` keyword arguments for this run."""
        return {
            "max_length": max_length,
            "all_turns": all_turns,
            "words_per_chunk": self.words_per_chunk,
            "temperature": self.score_temperature,
            "convention": Convention(self.star_convention),
        }
