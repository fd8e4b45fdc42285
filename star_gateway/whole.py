"""A whole (non-streamed) answer: each choice scored with Score at the session's cuts, the same stop
rule applied; a stopped choice is cut at the stop offset and marked `content_filter`."""

from __future__ import annotations

import asyncio
from typing import Any

from star_client import AsyncScorerClient
from star_contract.stop_rule import first_stop
from star_contract.types import Conversation, ModerateOptions, ScoreRequest
from star_gateway.chunks import choice_text, filter_choice, stop_info
from star_gateway.options import FIELD


async def moderate_answer(
    client: AsyncScorerClient, conversation: Conversation, options: ModerateOptions, answer: dict[str, Any]
) -> int:
    """Score every choice of `answer` and filter the stopped ones in place; how many were stopped.
    Scorer errors propagate (the caller fails closed or open)."""
    choices = [c for c in answer.get("choices") or () if isinstance(c, dict)]
    requests = [
        ScoreRequest(
            conversation.with_response(choice_text(c)),
            options.cuts(),
            options.temperature,
            options.convention,
            options.safe_classes,
        )
        for c in choices
    ]
    scores = await asyncio.gather(*(client.score(r) for r in requests))
    stopped = 0
    for choice, score in zip(choices, scores, strict=True):
        stop = first_stop(score.segments, options)
        if stop is not None:
            filter_choice(choice, stop.offset, stop_info(stop))
            stopped += 1
    if stopped:
        answer[FIELD] = {"stopped": True, "choices_stopped": stopped}
    return stopped
