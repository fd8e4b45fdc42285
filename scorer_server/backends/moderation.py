"""Live-moderation sessions on the local backend: an IncrementalSession whose forwards run on the
backend's forward thread (between batches of ordinary Score work), under a cap on open sessions."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from star_contract.errors import InvalidRequest, Overloaded
from star_contract.types import Conversation, CutKind, CutSpec, ModerateOptions, Segment


class SessionSlots:
    """At most `limit` sessions open at once; the rest get RESOURCE_EXHAUSTED with a retry hint."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> None:
        if self.open >= self.limit:
            raise Overloaded(
                f"{self.open} moderation sessions are open, the limit (--max-sessions); retry shortly", 1.0
            )
        self.open += 1

    def give(self) -> None:
        self.open -= 1


class ModerationSession:
    """One caller's session: `push` and `close` return the STAR scores of the cuts they complete."""

    def __init__(
        self,
        engine: Any,
        conversation: Conversation,
        options: ModerateOptions,
        executor: Executor,
        slots: SessionSlots,
    ) -> None:
        from scorer_server.engine.incremental import IncrementalSession

        if options.every < 1:
            raise InvalidRequest(f"open.every must be >= 1, got {options.every}")
        self._session = IncrementalSession(
            engine, conversation, CutSpec(CutKind.WORDS, options.every), options.temperature
        )
        self._executor = executor
        self._slots = slots
        self._lock = asyncio.Lock()
        self._done = False
        slots.take()

    async def push(self, delta: str) -> list[Segment]:
        return await self._run(self._session.push, delta)

    async def close(self) -> list[Segment]:
        return await self._run(self._session.close)

    def release(self) -> None:
        """Give the session's slot back (idempotent); its keys and values go with the session."""
        if not self._done:
            self._done = True
            self._slots.give()

    async def _run(self, fn: Any, *args: Any) -> list[Segment]:
        async with self._lock:
            out: list[Segment] = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
            return out
