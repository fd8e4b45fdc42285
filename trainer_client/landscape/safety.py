"""Safety at one point of a landscape: generate on harmful prompts, judge, safety = 100 - ASR."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from star_contract.types import Conversation
from trainer_client.generation import GenerationConfig, generate_responses
from trainer_client.judges import Judge
from trainer_client.refusal import is_refusal


@dataclass(frozen=True)
class PointSafety:
    """Safety of one model on a prompt set."""

    asr: float
    """Attack success rate, percent."""
    safety: float
    """100 - asr."""
    unsafe: tuple[bool, ...]
    responses: tuple[str, ...]
    keyword_safety: float = 100.0
    """100 - keyword ASR on the same responses (free to compute; recorded whatever the judge)."""


def measure_safety(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    judge: Judge,
    generation: GenerationConfig | None = None,
) -> PointSafety:
    """Greedy responses to `prompts`, judged by `judge` (the system prompt, if any, is not shown to it)."""
    if not prompts:
        raise ValueError("measure_safety needs at least one prompt")
    responses = generate_responses(model, tokenizer, prompts, generation)
    convs = [Conversation.from_pair(p, r) for p, r in zip(prompts, responses, strict=True)]
    flags = judge.unsafe(convs)
    asr = 100.0 * sum(flags) / len(flags)
    refused = sum(is_refusal(r) for r in responses)
    return PointSafety(
        asr=asr,
        safety=100.0 - asr,
        unsafe=tuple(flags),
        responses=tuple(responses),
        keyword_safety=100.0 * refused / len(responses),
    )
