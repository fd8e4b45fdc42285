"""One request's per-cut guard prompts, with its limits checked before the work they bound.

Shared by the local engine's planner and the remote backends, so both refuse the same requests with the
same messages and render the same prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scorer_server.engine.cuts import plan_cuts
from scorer_server.guards.template import GuardTemplate
from scorer_server.limits import Limits
from star_contract.types import ScoreRequest


@dataclass(frozen=True)
class Prepared:
    """The cuts of one request and the guard prompt of each (the last one is the full response)."""

    cuts: list[int]
    texts: list[str]
    trunk: list[int]
    """Guard token ids of the full-response prompt."""


def prepare(
    request: ScoreRequest,
    template: GuardTemplate,
    tokenizer: Any,
    encode: Callable[[str], list[int]],
    limits: Limits,
) -> Prepared:
    """Cuts from the spec (one tokenisation of the response for guard-token cuts), then the cut limit,
    then the full prompt's token limit, and only then a rendering per cut."""
    conv = request.conversation
    conv.require_response()  # in-process callers skip the API's validation
    cuts = plan_cuts(conv.response, request.cuts, tokenizer)
    limits.check_cuts(len(cuts))
    full = template.render(conv, cuts[-1])
    trunk = encode(full)
    limits.check_tokens(len(trunk))
    texts = [template.render(conv, c) for c in cuts[:-1]] + [full]
    return Prepared(cuts, texts, trunk)
