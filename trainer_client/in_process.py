"""The scorer's engine in the trainer's own process: the one trainer module that imports `scorer_server`.

For tests, benchmarks and single-machine runs without a service. Everything else in `trainer_client`
talks to a scorer through `star_client` and `star_contract`, so a trainer machine needs the scorer
package only when it picks an in-process scorer or judge (tests/test_package_boundaries.py holds it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scorer_server.engine.engine import StarEngine
from scorer_server.guards.loader import describe_guard
from star_contract.types import Conversation, GuardInfo, ScoreRequest, StarScores, Verdict


def load_engine(path: str | Path, preset: str = "llama-guard-3", **guard: Any) -> StarEngine:
    """The STAR engine on the guard directory `path` (`guard`: device, dtype, template_kwargs, ...)."""
    return StarEngine.from_dir(path, preset, **guard)


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

        return LocalScorer(StarEngine.from_dir(path, preset))

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
