"""Live-moderation sessions on the local backend: tokenised on the planning thread, scored in the batcher.

Each push of a session becomes one `SessionWork` item in the same dynamic batcher as Score traffic, at
`SESSION_PRIORITY` (above any Score priority: a user is waiting on every cut). Work of many sessions
that lands in one batch runs as one forward over their tails (`forward_tails_hidden`). All sessions'
cached keys and values share one byte budget (`SessionPool`); past it, the cache whose next use looks
furthest away is dropped and recomputed on that session's next cut, so a score is never wrong, only
slower.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from scorer_server.batcher import INTERACTIVE
from scorer_server.engine.incremental import CutInput, IncrementalSession, forward_groups
from scorer_server.engine.session_kv import KVState, forward_tails_hidden
from star_contract.errors import NotReady, Overloaded
from star_contract.types import Conversation, ModerateOptions, Segment

SESSION_PRIORITY = INTERACTIVE
"""The batcher priority of moderation work: above any ScoreRequest.priority; while it arrives, batches
of Score work are kept small (`--bulk-batch-tokens-interactive`) so a cut never waits long behind one."""


class SessionObserver(Protocol):
    def on_sessions(self, open_sessions: int, cache_bytes: int, evictions: int) -> None: ...
    def on_session_cut(self, seconds: float) -> None: ...
    def on_session_tokens(self, trunk: int, tail: int) -> None: ...


@dataclass
class _Use:
    """When a session's cache was last used, and the smoothed gap between its uses."""

    last: float
    gap: float | None = None


class SessionPool:
    """The open sessions' keys and values: at most `limit` sessions and `budget_bytes` of cache.

    Over the budget, the cache evicted first is the one whose next use looks furthest away: a session
    that has been quiet for longer than its usual gap between pushes is expected to stay quiet as long
    again, and one within its gap is expected back when the gap is over. Sessions that stream at the
    same pace (the usual case: one generation each) are used in a cycle, where dropping the least
    recently used cache drops the one needed next and every cut recomputes its whole trunk; this rule
    drops the one just used instead, and the others keep theirs (tests/test_session_pool.py).
    """

    def __init__(
        self,
        limit: int,
        budget_bytes: int,
        observer: SessionObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.budget_bytes = budget_bytes
        self.evictions = 0
        self._observer = observer
        self._clock = clock
        self._states: dict[int, KVState] = {}
        self._uses: dict[int, _Use] = {}
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
            self._uses[id(state)] = _Use(self._clock())
            self._report()

    def give(self, state: KVState) -> None:
        with self._lock:
            self._states.pop(id(state), None)
            self._uses.pop(id(state), None)
            self._report()

    def used(self, states: list[KVState]) -> None:
        """Record that `states` were just used, then evict caches over the budget (see the class)."""
        with self._lock:
            now = self._clock()
            for s in states:
                use = self._uses.get(id(s))
                if use is not None:
                    gap = now - use.last
                    use.gap = gap if use.gap is None else 0.5 * use.gap + 0.5 * gap
                    use.last = now
            total = sum(s.nbytes for s in self._states.values())
            if total > self.budget_bytes:
                order = sorted(
                    (k for k, s in self._states.items() if s.ids),
                    key=lambda k: self._next_use(self._uses[k], now),
                    reverse=True,
                )
                for k in order:
                    if total <= self.budget_bytes:
                        break
                    s = self._states[k]
                    total -= s.nbytes
                    s.evict()
                    self.evictions += 1
            self._report(total)

    @staticmethod
    def _next_use(use: _Use, now: float) -> float:
        """How far away the session's next use looks (larger: evicted first)."""
        quiet = now - use.last
        if use.gap is not None and quiet < use.gap:
            return use.gap - quiet
        return quiet

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


def run_session_work(
    works: list[SessionWork], pool: SessionPool, observer: SessionObserver | None = None
) -> list[list[Segment]]:
    """Score a batch's session work: one forward per round, round r holding each session's r-th group
    of cuts (`forward_groups`: the cuts of one push share a row, up to a tail budget)."""
    out: list[list[Segment]] = [[] for _ in works]
    engine = works[0].session.engine
    states = [w.session.state for w in works]
    before = sum(s.trunk_tokens for s in states), sum(s.tail_tokens for s in states)
    groups = [forward_groups(w.inputs) for w in works]
    for r in range(max(len(g) for g in groups)):
        rows = [(k, works[k], g[r]) for k, g in enumerate(groups) if r < len(g)]
        jobs = [job for _, w, group in rows for job in w.session.jobs(group)]
        hidden = forward_tails_hidden(engine.guard, jobs, engine.pad_id, engine.head)
        at = 0
        for k, w, group in rows:
            out[k] += w.session.segments(group, hidden[at : at + len(group)])
            at += len(group)
    pool.used(states)
    if observer is not None:
        trunk, tail = sum(s.trunk_tokens for s in states), sum(s.tail_tokens for s in states)
        observer.on_session_tokens(trunk - before[0], tail - before[1])
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
        self._session = IncrementalSession(
            engine, conversation, options.cuts(), options.temperature, convention=options.convention
        )
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
