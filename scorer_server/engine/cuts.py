"""Cut planning: where along a response the STAR score is taken."""

from __future__ import annotations

import re
from typing import Any

from star_contract.errors import InvalidRequest
from star_contract.types import CutKind, CutSpec

WORD = re.compile(r"\S+")
"""A word: a maximal run of non-whitespace (what `str.split()` splits into)."""


def plan_cuts(response: str, spec: CutSpec, tokenizer: Any | None = None) -> list[int]:
    """Character offsets of the cuts, strictly increasing, the last one always `len(response)`.

    An empty response gets the single cut 0: its score is the guard's verdict on the conversation with
    an empty answer (a real judgement of the context, not a made-up 1.0).
    """
    n = len(response)
    if spec.kind is CutKind.OFFSETS:
        cuts = _check_offsets(spec.offsets, n)
    else:
        if spec.every < 1:
            raise InvalidRequest(f"cut spacing must be >= 1, got {spec.every}")
        if spec.kind is CutKind.WORDS:
            ends = [m.end() for m in WORD.finditer(response)]
        else:
            if tokenizer is None:
                raise InvalidRequest("guard-token cuts need the guard tokenizer")
            enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
            ends = [e for _, e in enc["offset_mapping"] if e > 0]
        cuts = ends[spec.every - 1 :: spec.every]
        if cuts and ends and cuts[-1] == ends[-1]:
            cuts.pop()  # the last chunk ends at the response end instead (trailing space included)
    cuts = sorted(set(cuts))
    if not cuts or cuts[-1] != n:
        cuts.append(n)
    return cuts


def _check_offsets(offsets: tuple[int, ...], n: int) -> list[int]:
    prev = 0
    for i, off in enumerate(offsets):
        if off <= prev or off > n:
            raise InvalidRequest(
                f"cut offset #{i} = {off} is invalid: offsets must be strictly increasing character "
                f"offsets in (0, {n}] (the response has {n} characters)"
            )
        prev = off
    return list(offsets)
