"""One request's per-cut guard prompts, with its limits checked before the work they bound.

Shared by the local engine's planner and the remote backends, so both refuse the same requests with the
same messages and render the same prompts.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from scorer_server.engine.cuts import WORD, plan_cuts
from scorer_server.guards.template import GuardTemplate
from scorer_server.limits import Limits
from star_contract.errors import InvalidRequest
from star_contract.types import Convention, Conversation, CutKind, ScoreRequest


@dataclass(frozen=True)
class Prepared:
    """The cuts of one request and the guard prompt of each (the last one is the full response)."""

    cuts: list[int]
    """Character offsets in the request's own response (also under the published convention, whose
    guard prompts show the response re-joined)."""
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
    shown, shown_cuts = conv, cuts
    if request.convention is Convention.PUBLISHED:
        check_published(request.cuts.kind, request.temperature)
        shown, shown_cuts = _space_joined(conv, cuts)
    full = template.render(shown, shown_cuts[-1])
    trunk = encode(full)
    limits.check_tokens(len(trunk))
    texts = [template.render(shown, c) for c in shown_cuts[:-1]] + [full]
    return Prepared(cuts, texts, trunk)


def check_published(kind: CutKind, temperature: float) -> None:
    """The published convention cuts between words and fixes its own temperature."""
    if kind is CutKind.GUARD_TOKENS:
        raise InvalidRequest(
            "the published convention cuts between words; use CUT_KIND_WORDS or CUT_KIND_OFFSETS with it"
        )
    if temperature != 1.0:
        raise InvalidRequest(
            "the published convention fixes its own temperature (0.2); leave temperature unset"
        )


def published_text(response: str) -> str:
    """The response as the released code shows it to the guard: its words joined by single spaces."""
    return " ".join(WORD.findall(response))


def _space_joined(conv: Conversation, cuts: list[int]) -> tuple[Conversation, list[int]]:
    """What the released code shows the guard: the words that end at or before each cut, joined by
    single spaces (newlines and runs of spaces lost). The conversation with the whole response joined,
    and each cut's offset in it; the last cut shows every word."""
    matches = list(WORD.finditer(conv.response))
    words = [m.group() for m in matches]
    ends = [m.end() for m in matches]
    # joined_ends[k]: the length of the first k words joined by single spaces
    joined_ends = [0, *(n - 1 for n in accumulate(len(w) + 1 for w in words))]
    shown = [joined_ends[bisect_right(ends, c)] for c in cuts[:-1]] + [joined_ends[-1]]
    return conv.with_response(published_text(conv.response)), shown
