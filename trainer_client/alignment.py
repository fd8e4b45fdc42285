"""Cut offsets aligned to the trainee's tokens, and per-label-token STAR weights.

The guard scores the response at character cuts. We choose the cuts so that every chunk boundary is
also a boundary between two trainee tokens: then each trainee token lies inside exactly one chunk and
takes that chunk's STAR. A cut is placed after every M whitespace-separated words (the published M = 5),
moved forward to the first trainee-token boundary at or after the word's end, so a token that
straddles the word boundary (BPE merges across spaces) belongs wholly to the earlier chunk.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence

from star_contract.types import CutKind, CutSpec, Segment, StarScores

_WORD = re.compile(r"\S+")


def aligned_cuts(response: str, token_ends: Sequence[int], words_per_chunk: int = 5) -> tuple[int, ...]:
    """Strictly increasing character cuts in (0, len(response)], the last being len(response).

    `token_ends` are the end offsets (relative to the response) of the trainee tokens covering it;
    values outside (0, len(response)) are ignored. An empty response gets no cuts (the guard then
    scores the single cut 0).
    """
    if words_per_chunk < 1:
        raise ValueError(f"words_per_chunk must be >= 1, got {words_per_chunk}")
    n = len(response)
    if n == 0:
        return ()
    bounds = sorted({e for e in token_ends if 0 < e < n})
    word_ends = [m.end() for m in _WORD.finditer(response)]
    cuts: list[int] = []
    for e in word_ends[words_per_chunk - 1 :: words_per_chunk]:
        i = bisect_left(bounds, e)
        c = bounds[i] if i < len(bounds) else n
        if not cuts or c > cuts[-1]:
            cuts.append(c)
    if not cuts or cuts[-1] != n:
        cuts.append(n)
    return tuple(cuts)


def cut_spec(cuts: tuple[int, ...]) -> CutSpec:
    """The scorer request for these cuts."""
    return CutSpec(kind=CutKind.OFFSETS, offsets=cuts)


def token_weights(scores: StarScores | Sequence[Segment], token_ends: Sequence[int]) -> list[float]:
    """The STAR weight of each token: the score of the first cut at or after the token's end.

    Tokens ending after the last cut (template tokens the guard never sees, like end of turn) take the
    last cut's score; tokens ending at or before 0 take the first cut's. No segments means weight 1.
    """
    segs = scores.segments if isinstance(scores, StarScores) else tuple(scores)
    if not segs:
        return [1.0] * len(token_ends)
    ends = [s.end for s in segs]
    out = []
    for e in token_ends:
        i = min(bisect_left(ends, e), len(segs) - 1)
        out.append(float(segs[i].p_safe))
    return out
