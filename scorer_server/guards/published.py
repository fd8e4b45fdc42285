"""The STAR-DSS authors' released convention for P(safe): processed generation scores.

Their code (secml-lab-vt/Optimus, star-dss/src/data/value_dataset.py and src/metric/guardrail.py) calls
`generate(do_sample=True, repetition_penalty=1.2, temperature=0.2, top_k=50, top_p=0.9,
output_scores=True)` on the guard and takes a softmax over the two verdict ids of the *processed*
scores at the verdict position (generated position 0 for Granite Guardian, 1 for Llama Guard, whose
first generated token is the blank line our verdict prefix already holds). This module computes the
same numbers from the full-vocabulary logits at the verdict position only, in the order generate
applies them: repetition penalty over the prompt's token ids, temperature, top-k, top-p.

Where top-k and top-p remove both verdict tokens the released code produces NaN; we return the
two-way softmax of the scores before those two filters instead (documented in docs/fidelity.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from scorer_server.guards.guard import Guard


@dataclass(frozen=True)
class ProcessedScores:
    """The sampling settings of the released code's guard generation (config/model/default.yaml)."""

    repetition_penalty: float = 1.2
    temperature: float = 0.2
    top_k: int = 50
    top_p: float = 0.9


PUBLISHED = ProcessedScores()


def _penalise(scores: torch.Tensor, prompt: list[int], penalty: float) -> torch.Tensor:
    """Each token id seen in the prompt, once: positive logits divided by `penalty`, negative ones
    multiplied by it (both make the token less likely)."""
    ids = torch.tensor(sorted(set(prompt)), dtype=torch.long, device=scores.device)
    seen = scores[ids]
    scores = scores.clone()
    scores[ids] = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores


def _filter_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.numel())
    kth = torch.topk(scores, k).values[-1]
    return scores.masked_fill(scores < kth, float("-inf"))


def _filter_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Drop the least likely tokens whose probabilities add up to at most 1 - p (the most likely stays)."""
    ascending, order = torch.sort(scores)
    mass = ascending.softmax(-1).cumsum(-1)
    drop = mass <= 1 - p
    drop[-1] = False
    return scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))


def processed_p_safe(
    guard: Guard, logits: torch.Tensor, prompts: list[list[int]], settings: ProcessedScores = PUBLISHED
) -> list[float]:
    """P(safe) of each verdict position (its full-vocabulary logits [N, V] and the token ids of its
    prompt) under the released code's processed-score convention. `full_logits` gives the logits from
    final hidden states."""
    pair = [guard.safe_id, guard.unsafe_id]
    out: list[float] = []
    for row, prompt in zip(logits, prompts, strict=True):
        scaled = _penalise(row, prompt, settings.repetition_penalty) / settings.temperature
        kept = _filter_top_p(_filter_top_k(scaled, settings.top_k), settings.top_p)
        two = kept[pair]
        if torch.isinf(two).all():
            two = scaled[pair]
        out.append(float(two.softmax(-1)[0]))
    return out
