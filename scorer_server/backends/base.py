"""The interface the gRPC front end talks to: a local batched engine or a remote engine fleet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from scorer_server.tenants import ANONYMOUS
from star_contract.types import Conversation, GuardInfo, ModerateOptions, ScoreRequest, Segment, Verdict


@dataclass(frozen=True)
class ScorePart:
    """Some of one response's segments, as soon as they are scored (one streamed ScoreResponse)."""

    segments: tuple[Segment, ...]
    """In increasing offset order."""
    part: int
    """This part's position among the response's parts (0-based)."""
    parts: int
    """How many parts the response has; 0 while the backend does not know yet."""
    last: bool
    """No part of this response follows."""
    guard_tokens: int = 0
    """Guard tokens this part cost (0 where the backend does not count them)."""


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

    def score(
        self, request: ScoreRequest, priority: int = 0, tenant: str = ANONYMOUS
    ) -> AsyncIterator[ScorePart]:
        """Yield the response's segments in parts as they finish (all parts together cover every cut
        exactly once; the last one says so). Cancelling the iterator drops queued work. `tenant` is the
        caller's (scorer_server/tenants.py): its work counts against that tenant's limits."""
        ...

    async def judge(self, conversations: list[Conversation], decode: bool = True) -> list[Verdict]:
        """Whole-response verdicts; without `decode`, p_unsafe only (no verdict text or categories)."""
        ...

    def open_session(
        self, conversation: Conversation, options: ModerateOptions, tenant: str = ANONYMOUS
    ) -> Session:
        """A live-moderation session of `tenant` (InvalidRequest where the backend cannot hold one)."""
        ...


class Session(Protocol):
    """A live-moderation session: the STAR scores of the cuts each delta completes."""

    async def push(self, delta: str) -> list[Segment]: ...

    async def close(self) -> list[Segment]: ...

    def release(self) -> None: ...
