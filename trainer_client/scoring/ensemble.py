"""Several guards as one scorer: every request goes to each guard and their P(safe) are combined per cut.

The paper averages STAR over several guards (e.g. Granite Guardian and Llama Guard). `EnsembleScorer`
implements the `AsyncScorer` protocol over member scorers, one per guard: it asks every member at once,
checks they cut the response at the same offsets, and combines each cut's P(safe) by `mean` (default)
or `min` (the most cautious guard). Verdicts combine the same way on P(safe) = 1 - P(unsafe), so RS
keeps an example when the combined P(unsafe) is below 0.5. `ScoreFetcher` uses `member_infos()` to
cache each guard's own scores under that guard's fingerprint.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

from star_contract.types import Conversation, GuardInfo, ScoreRequest, Segment, StarScores, Verdict

if TYPE_CHECKING:  # prefetch imports this module at run time
    from trainer_client.scoring.prefetch import AsyncScorer

Combine = Literal["mean", "min"]
COMBINES: tuple[Combine, ...] = ("mean", "min")
T = TypeVar("T")


def combine_p(values: Sequence[float], combine: Combine) -> float:
    """The combined P(safe) of one cut."""
    return min(values) if combine == "min" else sum(values) / len(values)


def combine_scores(per_guard: Sequence[StarScores], combine: Combine) -> StarScores:
    """One response's trajectory from each guard's: P(safe) combined per cut; guard tokens summed.
    Raises ValueError when the guards did not return the same cut offsets."""
    ends = [tuple(s.end for s in sc.segments) for sc in per_guard]
    for i, e in enumerate(ends[1:], 1):
        if e != ends[0]:
            raise ValueError(
                f"guards returned different cuts for one response: guard 0 cut at {list(ends[0])}, guard "
                f"{i} at {list(e)}; several guards need cuts in characters (words or offsets), not "
                "guard_tokens"
            )
    segs = tuple(
        Segment(end, combine_p([sc.segments[k].p_safe for sc in per_guard], combine))
        for k, end in enumerate(ends[0])
    )
    return StarScores(segs, guard_tokens=sum(sc.guard_tokens for sc in per_guard))


def combine_verdicts(per_guard: Sequence[Verdict], combine: Combine) -> Verdict:
    """One whole-response verdict: P(safe) = 1 - P(unsafe) combined as the cuts are; categories united."""
    p_safe = combine_p([1.0 - v.p_unsafe for v in per_guard], combine)
    cats = tuple(dict.fromkeys(c for v in per_guard for c in v.categories))
    return Verdict(1.0 - p_safe, cats)


def ensemble_fingerprint(fingerprints: Sequence[str], combine: Combine) -> str:
    """Identifies the combination (member guards in any order, and the rule), never a single guard."""
    blob = json.dumps({"guards": sorted(fingerprints), "combine": combine}).encode()
    return "ensemble:" + hashlib.sha256(blob).hexdigest()


async def _each(calls: Sequence[Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*calls))


class EnsembleScorer:
    """An `AsyncScorer` over several guards' scorers, combining their scores with `combine`."""

    def __init__(self, members: Sequence[AsyncScorer], combine: Combine = "mean") -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 guards, got {len(members)}")
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, not {combine!r}")
        self.members = tuple(members)
        self.combine: Combine = combine
        self._infos: list[GuardInfo] | None = None

    async def member_infos(self) -> list[GuardInfo]:
        """Each member's GuardInfo (asked once); two members serving one guard are an error."""
        if self._infos is None:
            infos = await _each([m.info() for m in self.members])
            seen: dict[str, int] = {}
            for i, info in enumerate(infos):
                if info.fingerprint in seen:
                    raise ValueError(
                        f"scorers[{seen[info.fingerprint]}] and scorers[{i}] serve the same guard "
                        f"(fingerprint {info.fingerprint[:16]}): list one guard's replicas in one entry, "
                        "'host:port,host:port'"
                    )
                seen[info.fingerprint] = i
            self._infos = infos
        return self._infos

    async def info(self) -> GuardInfo:
        infos = await self.member_infos()
        first = infos[0]
        return GuardInfo(
            name=f"{self.combine}(" + ", ".join(i.name for i in infos) + ")",
            preset="ensemble",
            safe_word=first.safe_word,
            unsafe_word=first.unsafe_word,
            safe_token_id=first.safe_token_id,
            unsafe_token_id=first.unsafe_token_id,
            fingerprint=ensemble_fingerprint([i.fingerprint for i in infos], self.combine),
            max_conversation_tokens=min(i.max_conversation_tokens for i in infos),
            max_cuts=min(i.max_cuts for i in infos),
            server_version=first.server_version,
            backend="ensemble:" + ",".join(i.backend for i in infos),
        )

    async def score_each(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[list[StarScores]]:
        """Every member's scores of `requests`, asked concurrently: one list per guard."""
        return await _each([m.score_many(requests, priority) for m in self.members])

    async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
        per_guard = await self.score_each(requests, priority)
        return [combine_scores(got, self.combine) for got in zip(*per_guard, strict=True)]

    async def score(self, request: ScoreRequest, priority: int = 0) -> StarScores:
        return (await self.score_many([request], priority))[0]

    async def judge(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        per_guard = await _each([m.judge(conversations) for m in self.members])
        return [combine_verdicts(got, self.combine) for got in zip(*per_guard, strict=True)]

    async def close(self) -> None:
        results = await asyncio.gather(*(m.close() for m in self.members), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
