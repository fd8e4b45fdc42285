"""The toy world's held-out evaluation sets, in the evaluation tools' types."""

from __future__ import annotations

from star_toy import datasets, lexicon
from trainer_client.evaluation.loaders import BenignItem, HarmfulPrompt


def toy_sets() -> tuple[list[HarmfulPrompt], list[BenignItem]]:
    """Held-out hazard requests and benign items (the files `star-toy-build` writes to models/data)."""
    cfg = datasets.WorldConfig()
    harmful = [HarmfulPrompt(p, lexicon.HAZARD_CATEGORY[t]) for p, t in datasets.eval_harmful_prompts(cfg)]
    benign = [BenignItem(e.prompt, e.answer, e.kind) for e in datasets.eval_benign(cfg)]
    return harmful, benign


def toy_harmful_prompts(n: int) -> list[str]:
    """The first `n` held-out toy hazard requests (the ones star-eval --toy uses)."""
    return [h.prompt for h in toy_sets()[0][:n]]
