"""Driving a live-moderation session in-process the way the local backend does, without its batcher:
each push's rows (`IncrementalSession.pushes`, by the engine's row budget) through `StarEngine.run`, one
after the other. Duck-typed: star_testing does not import the scorer."""

from __future__ import annotations

from typing import Any

from star_contract.types import Segment


def run(engine: Any, session: Any, inputs: list[Any]) -> list[Segment]:
    """The segments of one push's cuts (`inputs`: what `plan_push` or `plan_close` returned)."""
    out: list[Segment] = []
    for push in session.pushes(inputs, engine.config.budget.max_row_tokens):
        out += engine.run([push]).segments[0]
    return out


def stream(engine: Any, session: Any, response: str, sizes: list[int]) -> list[Segment]:
    """Push `response` in deltas of the given sizes (cycled), then close: every cut's segment."""
    out: list[Segment] = []
    i = k = 0
    while i < len(response):
        n = sizes[k % len(sizes)]
        out += run(engine, session, session.plan_push(response[i : i + n]))
        i, k = i + n, k + 1
    return out + run(engine, session, session.plan_close())
