"""A blocking wrapper around AsyncScorerClient for scripts, running its own event-loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from star_client.aio import AsyncScorerClient
from star_client.config import ClientConfig
from star_contract.types import Conversation, GuardInfo, ScoreRequest, StarScores, Verdict

T = TypeVar("T")


class ScorerClient:
    """Same methods as AsyncScorerClient, blocking. Thread-safe: calls from several threads share one
    connection set."""

    def __init__(self, addresses: str | list[str] | None = None, config: ClientConfig | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="star-client", daemon=True)
        self._thread.start()
        self._client = AsyncScorerClient(addresses, config)
        self.config = self._client.config

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def info(self) -> GuardInfo:
        return self._run(self._client.info())

    def score(self, request: ScoreRequest, priority: int = 0) -> StarScores:
        return self._run(self._client.score(request, priority))

    def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
        return self._run(self._client.score_many(requests, priority))

    def judge(self, conversations: Sequence[Conversation], p_unsafe_only: bool = False) -> list[Verdict]:
        """Whole-response verdicts (AsyncScorerClient.judge)."""
        return self._run(self._client.judge(conversations, p_unsafe_only))

    def close(self) -> None:
        """Close the connections, finish every task on the client's loop, then stop the loop."""
        if self._loop.is_closed():
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _shutdown(self, grace_s: float = 5.0) -> None:
        await self._client.close()
        # A loop stopped with tasks still pending (gRPC's own included) warns "Task was destroyed but it
        # is pending!" when they are collected: give them time to end, then cancel what is left.
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        if rest:
            await asyncio.wait(rest, timeout=grace_s)
        rest = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await self._loop.shutdown_asyncgens()

    def __enter__(self) -> ScorerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
