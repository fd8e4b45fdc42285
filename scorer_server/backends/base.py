"""The interface the gRPC front end talks to: a local batched engine or a remote engine fleet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from star_contract.types import Conversation, GuardInfo, ScoreRequest, Segment, Verdict


class ScoringBackend(Protocol):
    """Produces STAR segments and verdicts. Implementations: the local engine behind the dynamic
    batcher, and remote engines (vLLM, TGI) that receive one request per cut."""

    def info(self) -> GuardInfo:
        """What this backend serves."""
        ...

    async def start(self) -> None:
        """Load and warm up; the server reports SERVING only after this returns."""
        ...

    async def stop(self, grace_s: float) -> None:
        """Finish in-flight work within `grace_s`, then release resources."""
        ...

    def score(self, request: ScoreRequest, priority: int = 0) -> AsyncIterator[list[Segment]]:
        """Yield the response's segments in parts as they finish (each part in increasing offset order;
        all parts together cover every cut exactly once). Cancelling the iterator drops queued work."""
        ...

    async def judge(self, conversations: list[Conversation]) -> list[Verdict]:
        """Whole-response verdicts."""
        ...
