"""An in-process scorer with the client's async interface, wrapping a StarEngine (tests, benchmarks,
single-machine runs without a server)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from scorer_server.engine.engine import StarEngine
from scorer_server.guards.loader import describe_guard
from scorer_server.types import Conversation, GuardInfo, ScoreRequest, StarScores, Verdict


class LocalScorer:
    """`AsyncScorerClient`-compatible scorer running the engine on a worker thread."""

    def __init__(self, engine: StarEngine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self.guard_calls = 0
        """Engine calls made (scores and judgements); tests count these."""

    @staticmethod
    def from_dir(path: str, preset: str = "llama-guard-3") -> LocalScorer:
        """Load a guard directory in this process."""
        from scorer_server.guards.loader import GuardConfig, load_guard

        return LocalScorer(StarEngine(load_guard(GuardConfig(path=path, preset=preset))))

    async def info(self) -> GuardInfo:
        return describe_guard(self.engine.guard, "in-process")

    def _score(self, requests: list[ScoreRequest]) -> list[StarScores]:
        with self._lock:
            self.guard_calls += 1
            return self.engine.score(requests)

    def _judge(self, conversations: list[Conversation]) -> list[Verdict]:
        with self._lock:
            self.guard_calls += 1
            return self.engine.judge(conversations, decode=False)

    async def score(self, request: ScoreRequest, priority: int = 0) -> StarScores:
        return (await asyncio.to_thread(self._score, [request]))[0]

    async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
        return await asyncio.to_thread(self._score, list(requests))

    async def judge(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        return await asyncio.to_thread(self._judge, list(conversations))

    async def close(self) -> None:
        return None
