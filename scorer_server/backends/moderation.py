"""Live-moderation sessions on the local backend: tokenised on the planning thread, scored in the batcher.

Each push of a session becomes one `SessionWork` item in the same dynamic batcher as Score traffic, at
`SESSION_PRIORITY` (above any Score priority: a user is waiting on every cut). Work of many sessions that
lands in one batch runs as one forward over their tails (`forward_tails`). All sessions' cached keys and
values share one byte budget (`SessionPool`); past it, the least recently used session's are dropped and
recomputed on its next cut, so a score is never wrong, only slower.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from scorer_server.batcher import INTERACTIVE
from scorer_server.engine.incremental import CutInput, IncrementalSession
from scorer_server.engine.session_kv import KVState, forward_tails
from star_contract.errors import InvalidRequest, NotReady, Overloaded
from star_contract.types import Conversation, ModerateOptions, Segment

SESSION_PRIORITY = INTERACTIVE
"""The batcher priority of moderation work: above any ScoreRequest.priority; while it arrives, batches
of Score work are kept small (`--bulk-batch-tokens-interactive`) so a cut never waits long behind one."""


class SessionObserver(Protocol):
    def on_sessions(self, open_sessions: int, cache_bytes: int, evictions: int) -> None: ...
    def on_session_cut(self, seconds: float) -> None: ...


class SessionPool:
    """The open sessions' keys and values: at most `limit` sessions and `budget_bytes` of cache."""

    def __init__(self, limit: int, budget_bytes: int, observer: SessionObserver | None = None) -> None:
        self.limit = limit
        self.budget_bytes = budget_bytes
        self.evictions = 0
        self._observer = observer
        self._states: OrderedDict[int, KVState] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # opened and closed on the event loop, evicted on the forward thread

    def take(self, state: KVState) -> None:
        with self._lock:
            if len(self._states) >= self.limit:
                raise Overloaded(
                    f"{len(self._states)} moderation sessions are open, the limit (--max-sessions); "
                    "retry shortly",
                    1.0,
                )
            self._states[id(state)] = state
            self._report()

    def give(self, state: KVState) -> None:
        with self._lock:
            self._states.pop(id(state), None)
            self._report()

    def used(self, states: list[KVState]) -> None:
        """Mark `states` most recently used, then evict least recently used caches over the budget."""
        with self._lock:
            for s in states:
                if id(s) in self._states:
                    self._states.move_to_end(id(s))
            total = sum(s.nbytes for s in self._states.values())
            for s in list(self._states.values()):
                if total <= self.budget_bytes:
                    break
                if s.ids:
                    total -= s.nbytes
                    s.evict()
                    self.evictions += 1
            self._report(total)

    def _report(self, total: int | None = None) -> None:
        """Tell the observer (under the lock, so counts arrive in order)."""
        if self._observer is not None:
            nbytes = total if total is not None else sum(s.nbytes for s in self._states.values())
            self._observer.on_sessions(len(self._states), nbytes, self.evictions)


@dataclass(frozen=True, eq=False)
class SessionWork:
    """One push of one session in the batcher: the cuts it completed, scored in order."""

    session: IncrementalSession
    inputs: list[CutInput]

    @property
    def tokens(self) -> int:
        """Guard tokens to compute, as the batcher budgets them (the cache may shrink before it runs)."""
        cached = len(self.session.state.ids)
        return max(1, sum(len(i.ids) - min(cached, i.stable) for i in self.inputs))


def run_session_work(works: list[SessionWork], pool: SessionPool) -> list[list[Segment]]:
    """Score a batch's session work: one forward per round, round r holding each session's r-th cut."""
    out: list[list[Segment]] = [[] for _ in works]
    engine = works[0].session.engine
    for r in range(max(len(w.inputs) for w in works)):
        rows = [(k, w) for k, w in enumerate(works) if r < len(w.inputs)]
        jobs = [w.session.jobs([w.inputs[r]])[0] for _, w in rows]
        diffs = forward_tails(engine.guard, jobs, engine.pad_id)
        for (k, w), diff in zip(rows, diffs, strict=True):
            out[k].append(w.session.segment(w.inputs[r], diff))
    pool.used([w.session.state for w in works])
    return out


class ModerationSession:
    """One caller's session: `push` and `close` return the STAR scores of the cuts they complete."""

    def __init__(
        self,
        engine: Any,
        conversation: Conversation,
        options: ModerateOptions,
        plan_pool: Executor,
        batcher: Any,
        pool: SessionPool,
        observer: SessionObserver | None = None,
    ) -> None:
        if options.every < 1:
            raise InvalidRequest(f"open.every must be >= 1, got {options.every}")
        self._session = IncrementalSession(engine, conversation, options.cuts(), options.temperature)
        self._plan_pool = plan_pool
        self._batcher = batcher
        self._pool = pool
        self._observer = observer
        self._lock = asyncio.Lock()
        self._done = False
        pool.take(self._session.state)

    async def push(self, delta: str) -> list[Segment]:
        return await self._run(self._session.plan_push, delta)

    async def close(self) -> list[Segment]:
        return await self._run(self._session.plan_close)

    def release(self) -> None:
        """Give the session's slot and its keys and values back (idempotent)."""
        if not self._done:
            self._done = True
            self._pool.give(self._session.state)

    async def _run(self, plan: Any, *args: Any) -> list[Segment]:
        async with self._lock:
            t0 = time.monotonic()
            loop = asyncio.get_running_loop()
            inputs: list[CutInput] = await loop.run_in_executor(self._plan_pool, plan, *args)
            if not inputs:
                return []
            ticket = self._batcher.submit([SessionWork(self._session, inputs)], SESSION_PRIORITY)
            future = ticket.futures[0]
            try:
                await asyncio.wait([future])
            finally:
                ticket.cancel()  # no-op once done; drops the work if the caller went away first
            if future.cancelled():
                raise NotReady("the scorer is shutting down; retry on another replica")
            segments: list[Segment] = future.result()
            if self._observer is not None:
                seconds = time.monotonic() - t0  # each cut's score waited this long after its delta
                for _ in segments:
                    self._observer.on_session_cut(seconds)
            return segments
