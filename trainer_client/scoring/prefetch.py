"""Scores for upcoming batches, fetched ahead of the training step that needs them.

The prefetcher runs an asyncio loop on a background thread. It is handed the sampler's upcoming batch
order and keeps the scores of the next `depth` batches in flight (cache first, then the scorer) while
the current step trains; `next()` blocks only when the scorer is behind and reports how long it did.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from star_contract.types import Convention, Conversation, GuardInfo, ScoreRequest, StarScores, Verdict
from trainer_client.data import Example, conversation_hash
from trainer_client.scoring.cache import ScoreCache, ScoreKey
from trainer_client.scoring.ensemble import EnsembleScorer, combine_scores, combine_verdicts

T = TypeVar("T")


class AsyncScorer(Protocol):
    """What the prefetcher needs from a scorer: `AsyncScorerClient`, `LocalScorer`, `FileScorer`."""

    async def info(self) -> GuardInfo: ...

    async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]: ...

    async def judge(self, conversations: Sequence[Conversation]) -> list[Verdict]: ...

    async def close(self) -> None: ...


def cut_key(request: ScoreRequest) -> str:
    """The cache's cut spec key (the temperature and the convention are part of it when not the
    defaults, so keys written before either existed still match)."""
    k = request.cuts.key()
    if request.temperature != 1.0:
        k = f"{k}|T={request.temperature:g}"
    if request.convention is not Convention.RAW:
        k = f"{k}|C={request.convention.value}"
    return k


def score_key(fingerprint: str, request: ScoreRequest) -> ScoreKey:
    return (fingerprint, conversation_hash(request.conversation), cut_key(request))


@dataclass(frozen=True)
class ExampleScores:
    """What the loss needs for one example."""

    scores: tuple[StarScores, ...]
    """One per labelled turn (empty when the method needs no STAR)."""
    keep: float = 1.0
    """RS: 1 when the guard judged the full response safe, else 0 (several guards: their combined
    verdict, see trainer_client/scoring/ensemble.py)."""
    guards: tuple[ExampleScores, ...] = ()
    """Several guards: each guard's own scores and keep, in the order of `scorers` (else empty)."""


class ScoreFetcher:
    """Resolves examples to scores and verdicts: cache first, the scorer for what is missing. An
    `EnsembleScorer` is resolved guard by guard, each under its own fingerprint, then combined."""

    def __init__(
        self, scorer: AsyncScorer, fingerprint: str, cache: ScoreCache | None, delay_s: float = 0.0
    ) -> None:
        self.scorer = scorer
        self.fingerprint = fingerprint
        self.cache = cache
        self.delay_s = delay_s
        self.scored_requests = 0
        """Requests sent to the guards (cache misses; with several guards, each guard's count)."""
        self._pending: dict[ScoreKey, asyncio.Future[StarScores]] = {}

    async def fetch(self, examples: Sequence[Example], star: bool, verdicts: bool) -> list[ExampleScores]:
        guards = await self._guards()
        got = await asyncio.gather(*(self._resolve(s, fp, examples, star, verdicts) for s, fp in guards))
        each = [[ExampleScores(sc, 0.0 if v is not None and v.unsafe else 1.0) for sc, v in g] for g in got]
        if len(guards) == 1:
            return each[0]
        assert isinstance(self.scorer, EnsembleScorer)
        rule = self.scorer.combine
        out = []
        for k in range(len(examples)):
            mine = [g[k] for g in got]
            scores = tuple(combine_scores(turn, rule) for turn in zip(*(sc for sc, _ in mine), strict=True))
            keep = 1.0
            if verdicts:
                keep = 0.0 if combine_verdicts([v for _, v in mine if v is not None], rule).unsafe else 1.0
            out.append(ExampleScores(scores, keep, tuple(g[k] for g in each)))
        return out

    async def _guards(self) -> list[tuple[AsyncScorer, str]]:
        """(scorer, fingerprint) of each guard: the ensemble's members, or the one scorer."""
        if isinstance(self.scorer, EnsembleScorer):
            infos = await self.scorer.member_infos()
            return [(m, i.fingerprint) for m, i in zip(self.scorer.members, infos, strict=True)]
        return [(self.scorer, self.fingerprint)]

    async def _resolve(
        self, scorer: AsyncScorer, fp: str, examples: Sequence[Example], star: bool, verdicts: bool
    ) -> list[tuple[tuple[StarScores, ...], Verdict | None]]:
        """One guard's scores (per turn) and verdict of each example."""
        scores: list[tuple[StarScores, ...]] = [() for _ in examples]
        vs: list[Verdict | None] = [None] * len(examples)
        if star:
            got = await self._scores(scorer, fp, [t.request for e in examples for t in e.turns])
            i = 0
            for k, e in enumerate(examples):
                scores[k] = tuple(got[i : i + len(e.turns)])
                i += len(e.turns)
        if verdicts:
            vs = list(await self._verdicts(scorer, fp, [e.turns[-1].request.conversation for e in examples]))
        return list(zip(scores, vs, strict=True))

    async def _scores(self, scorer: AsyncScorer, fp: str, reqs: list[ScoreRequest]) -> list[StarScores]:
        keys = [score_key(fp, r) for r in reqs]
        found: list[StarScores | None] = self.cache.get_scores(keys) if self.cache else [None] * len(reqs)
        loop = asyncio.get_running_loop()
        mine: dict[ScoreKey, int] = {}
        shared: dict[int, asyncio.Future[StarScores]] = {}
        for i, s in enumerate(found):
            if s is not None:
                continue
            if keys[i] in self._pending:  # another batch is already fetching this conversation
                shared[i] = self._pending[keys[i]]
            elif keys[i] not in mine:
                mine[keys[i]] = i
        for k in mine:
            self._pending[k] = loop.create_future()
        fresh: dict[ScoreKey, StarScores] = {}
        if mine:
            try:
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                got = await scorer.score_many([reqs[i] for i in mine.values()])
            except BaseException as e:
                for k in mine:
                    fut = self._pending.pop(k)
                    fut.set_exception(e)
                    fut.exception()  # marks it retrieved; this call re-raises it
                raise
            fresh = dict(zip(mine, got, strict=True))
            self.scored_requests += len(mine)
            if self.cache:
                self.cache.put_scores(list(fresh.items()))
            for k, sc in fresh.items():
                self._pending.pop(k).set_result(sc)
        for i, s in enumerate(found):
            if s is None:
                found[i] = await asyncio.shield(shared[i]) if i in shared else fresh[keys[i]]
        return [s for s in found if s is not None]

    async def _verdicts(self, scorer: AsyncScorer, fp: str, convs: list[Conversation]) -> list[Verdict]:
        hashes = [conversation_hash(c) for c in convs]
        found: list[Verdict | None] = [None] * len(convs)
        if self.cache:
            found = self.cache.get_verdicts(fp, hashes)
        miss = [i for i, v in enumerate(found) if v is None]
        if miss:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            fresh = await scorer.judge([convs[i] for i in miss])
            for i, v in zip(miss, fresh, strict=True):
                found[i] = v
            if self.cache:
                self.cache.put_verdicts(fp, [(hashes[i], v) for i, v in zip(miss, fresh, strict=True)])
        return [v for v in found if v is not None]


class Prefetcher:
    """Keeps the next `depth` batches' scores in flight on a background event loop."""

    def __init__(
        self,
        make_scorer: Callable[[], AsyncScorer],
        examples: Sequence[Example],
        cache: ScoreCache | None,
        *,
        star: bool = True,
        verdicts: bool = False,
        depth: int = 4,
        delay_s: float = 0.0,
    ) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.examples = examples
        self.star, self.verdicts, self.depth = star, verdicts, depth
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="star-prefetch", daemon=True)
        self._thread.start()
        self._queue: collections.deque[tuple[list[int], concurrent.futures.Future[list[ExampleScores]]]] = (
            collections.deque()
        )
        self._order: Iterator[list[int]] = iter(())
        self.total_wait_s = 0.0
        self.last_ready = False
        """Whether the batch the last `next()` returned had its scores before it was asked for."""
        self.ready_batches = 0
        """How many `next()` calls found their scores already there (a count, not a clock)."""

        async def setup() -> tuple[AsyncScorer, str]:
            s = make_scorer()
            return s, (await s.info()).fingerprint

        self.scorer, self.fingerprint = self._call(setup())
        self.fetcher = ScoreFetcher(self.scorer, self.fingerprint, cache, delay_s)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start(self, order: Iterator[list[int]]) -> None:
        """Set the upcoming batch order (lists of example indices) and fill the window."""
        for _, fut in self._queue:
            fut.cancel()
        self._queue.clear()
        self._order = order
        while len(self._queue) < self.depth and self._submit():
            pass

    def _submit(self) -> bool:
        idx = next(self._order, None)
        if idx is None:
            return False
        exs = [self.examples[i] for i in idx]
        fut = asyncio.run_coroutine_threadsafe(self.fetcher.fetch(exs, self.star, self.verdicts), self._loop)
        self._queue.append((idx, fut))
        return True

    @property
    def ready_ahead(self) -> int:
        """How many of the upcoming batches already have their scores, in order from the next one."""
        n = 0
        for _, fut in self._queue:
            if not fut.done():
                break
            n += 1
        return n

    def next(self) -> tuple[list[int], list[ExampleScores], float]:
        """The next batch's indices and scores, and the seconds this call waited for them."""
        if not self._queue:
            raise StopIteration("no batch left in the prefetch order")
        idx, fut = self._queue.popleft()
        self.last_ready = fut.done()
        self.ready_batches += self.last_ready
        self._submit()
        t0 = time.perf_counter()
        result = fut.result()
        waited = time.perf_counter() - t0
        self.total_wait_s += waited
        return idx, result, waited

    def fetch_now(self, indices: Sequence[int]) -> list[ExampleScores]:
        """The scores of these examples, fetched at once (cache first), outside the prefetch order."""
        exs = [self.examples[i] for i in indices]
        return self._call(self.fetcher.fetch(exs, self.star, self.verdicts))

    def close(self) -> None:
        for _, fut in self._queue:
            fut.cancel()
        self._queue.clear()
        try:
            self._call(self.scorer.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
