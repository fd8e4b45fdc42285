"""The prefetcher: follows the sampler's order, keeps N batches in flight, uses the cache, dedupes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from star_contract.types import Conversation, GuardInfo, ScoreRequest, Segment, StarScores, Verdict
from star_testing.waiting import wait_until
from trainer_client.alignment import cut_spec
from trainer_client.data import Example, ScoredTurn, guard_view
from trainer_client.scoring.cache import ScoreCache
from trainer_client.scoring.prefetch import Prefetcher


class FakeScorer:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[ScoreRequest] = []
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def info(self) -> GuardInfo:
        return GuardInfo("fake", "fake", "safe", "unsafe", 1, 2, "fp-fake")

    async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight -= 1
        self.requests.extend(requests)
        return [StarScores(tuple(Segment(c, c / 100) for c in r.cuts.offsets)) for r in requests]

    async def judge(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        return [Verdict(0.9 if "bad" in c.response else 0.1) for c in conversations]

    async def close(self) -> None:
        return None


def _examples(n: int, distinct: int | None = None) -> list[Example]:
    out = []
    for i in range(n):
        k = i % (distinct or n)
        resp = f"answer number {k} is bad" if k % 2 else f"answer number {k}"
        conv = Conversation.from_pair(f"q{k}", resp)
        req = ScoreRequest(guard_view(conv), cut_spec((6, len(resp))))
        out.append(Example(i, (1, 2, 3), (0, 1, 1), (ScoredTurn(req, (1, 2), (6, len(resp))),), conv))
    return out


def test_follows_order_and_uses_cache(tmp_path: Path) -> None:
    exs = _examples(8)
    cache = ScoreCache(tmp_path / "c.sqlite")
    fake = FakeScorer()
    order = [[3, 1], [0, 7], [2, 6], [5, 4]]
    pf = Prefetcher(lambda: fake, exs, cache, depth=2)
    pf.start(iter(order))
    for want in order:
        idx, scores, _ = pf.next()
        assert idx == want
        for i, s in zip(idx, scores, strict=True):
            assert s.scores[0].segments[-1].end == len(exs[i].conversation.response)
    assert len(fake.requests) == 8
    pf.start(iter(order))  # a second epoch: everything from the cache
    for _ in order:
        pf.next()
    assert len(fake.requests) == 8
    with pytest.raises(StopIteration):
        pf.next()
    pf.close()
    assert cache.count() == 8


def test_duplicates_in_flight_are_scored_once() -> None:
    exs = _examples(12, distinct=3)
    fake = FakeScorer(delay=0.05)
    pf = Prefetcher(lambda: fake, exs, None, depth=4)
    pf.start(iter([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]))
    for _ in range(4):
        _, scores, _ = pf.next()
        assert len(scores) == 3
    pf.close()
    assert len(fake.requests) == 3


class GatedScorer(FakeScorer):
    """A scorer whose answers are held until the test opens the gate: stands for a real scorer that is
    slower than the training step (closed) or faster (open), without any clock in the test."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.answered = 0

    async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.to_thread(self.gate.wait)
        self.in_flight -= 1
        self.requests.extend(requests)
        self.answered += 1
        return [StarScores(tuple(Segment(c, c / 100) for c in r.cuts.offsets)) for r in requests]


def test_keeps_depth_batches_in_flight_and_records_waits() -> None:
    exs = _examples(10)
    fake = GatedScorer()
    pf = Prefetcher(lambda: fake, exs, None, depth=3)
    try:
        pf.start(iter([[i] for i in range(10)]))
        wait_until(lambda: fake.in_flight == 3, what="three batches in flight")
        assert fake.max_in_flight == 3 and fake.calls == 3  # depth 3, and nothing beyond it
        # The scorer is behind: next() finds no scores, refills the window (a fourth call in flight
        # while it waits) and returns once the gate opens, having recorded a wait.
        first: list[tuple[list[int], Any, float]] = []
        taker = threading.Thread(target=lambda: first.append(pf.next()))
        taker.start()
        wait_until(lambda: fake.in_flight == 4, what="the window refilled by next()")
        assert not first, "next() returned scores the scorer has not given yet"
        fake.gate.set()
        taker.join(30)
        (idx, scores, waited) = first[0]
        assert idx == [0] and len(scores) == 1 and waited > 0.0
        assert not pf.last_ready and pf.ready_batches == 0
        # The scorer is ahead (every call in flight answered): the next batch is there when asked.
        wait_until(lambda: fake.answered == 4, what="the scorer to answer every call in flight")
        # answered is counted inside the scorer's call: wait for the prefetcher to hold the scores too
        wait_until(lambda: pf.ready_ahead >= 1, what="the next batch's scores in the prefetcher")
        idx, _, _ = pf.next()
        assert idx == [1] and pf.last_ready and pf.ready_batches == 1
    finally:
        fake.gate.set()
        pf.close()


def test_rs_verdicts() -> None:
    exs = _examples(4)
    pf = Prefetcher(lambda: FakeScorer(), exs, None, star=False, verdicts=True, depth=2)
    pf.start(iter([[0, 1, 2, 3]]))
    _, scores, _ = pf.next()
    pf.close()
    assert [s.keep for s in scores] == [1.0, 0.0, 1.0, 0.0]
    assert all(s.scores == () for s in scores)


def test_scorer_errors_reach_the_step() -> None:
    class Broken(FakeScorer):
        async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
            raise ConnectionError("scorer down")

    pf = Prefetcher(lambda: Broken(), _examples(2), None, depth=1)
    pf.start(iter([[0], [1]]))
    with pytest.raises(ConnectionError, match="scorer down"):
        pf.next()
    pf.close()
