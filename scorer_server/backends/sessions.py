"""Live-moderation sessions on the local backend: tokenised on the planning thread, scored in the batcher.

Each push of a session becomes `SessionPush` work (engine/incremental.py) in the same dynamic batcher as
Score traffic, at `SESSION_PRIORITY` (above any Score priority: a user is waiting on every cut). The
engine runs it like a Score item: one row over the session's cached trunk, in the same forward as
whatever else is in the batch. All sessions' cached keys and values share one byte budget
(`SessionPool`); past it, the cache whose next use looks furthest away is dropped and recomputed on that
session's next cut, so a score is never wrong, only slower.
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
from scorer_server.engine.caches import KVState
from scorer_server.engine.incremental import CutInput, IncrementalSession
from scorer_server.engine.work import Row
from scorer_server.errors import LimitReached
from scorer_server.tenants import ANONYMOUS
from star_contract.errors import NotReady
from star_contract.types import Segment

SESSION_PRIORITY = INTERACTIVE
"""The batcher priority of moderation work: above any ScoreRequest.priority; while it arrives, batches
of Score work are kept small (`--bulk-batch-tokens-interactive`) so a cut never waits long behind one."""


class SessionObserver(Protocol):
    def on_sessions(self, open_sessions: int, cache_bytes: int, evictions: int) -> None: ...
    def on_session_cut(self, seconds: float) -> None: ...
    def on_session_tokens(self, trunk: int, tail: int) -> None: ...
    def on_tenant_sessions(self, tenant: str, open_sessions: int) -> None: ...


@dataclass
class _Use:
    """When a session's cache was last used, and the smoothed gap between its uses."""

    last: float
    gap: float | None = None


class SessionPool:
    """The open sessions' keys and values: at most `limit` sessions (`tenant_limit` of one tenant, when
    not 0) and `budget_bytes` of cache.

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
        tenant_limit: int = 0,
    ) -> None:
        self.limit = limit
        self.tenant_limit = tenant_limit
        self.budget_bytes = budget_bytes
        self.evictions = 0
        self._observer = observer
        self._clock = clock
        self._states: dict[int, KVState] = {}
        self._uses: dict[int, _Use] = {}
        self._tenant_of: dict[int, str] = {}
        self._lock = threading.Lock()  # opened and closed on the event loop, evicted on the forward thread

    def take(self, state: KVState, tenant: str = ANONYMOUS) -> None:
        """Hold a slot for `tenant`'s new session (LimitReached past the tenant's or the server's limit)."""
        with self._lock:
            held = self.held(tenant)
            if self.tenant_limit and held >= self.tenant_limit:
                raise LimitReached(
                    f"tenant {tenant} has {held} moderation sessions open, its limit "
                    "(--tenant-max-sessions); close one or retry shortly",
                    1.0,
                    "tenant_max_sessions",
                )
            if len(self._states) >= self.limit:
                raise LimitReached(
                    f"{len(self._states)} moderation sessions are open, the limit (--max-sessions); "
                    "retry shortly",
                    1.0,
                    "max_sessions",
                )
            self._states[id(state)] = state
            self._uses[id(state)] = _Use(self._clock())
            self._tenant_of[id(state)] = tenant
            self._report(tenant=tenant)

    def give(self, state: KVState) -> None:
        with self._lock:
            self._states.pop(id(state), None)
            self._uses.pop(id(state), None)
            self._report(tenant=self._tenant_of.pop(id(state), None))

    def held(self, tenant: str) -> int:
        """Sessions `tenant` has open."""
        return sum(1 for t in self._tenant_of.values() if t == tenant)

    def after_forward(self, rows: list[Row]) -> None:
        """The books after a forward (on the forward thread): the tokens computed over session caches
        (the rows that stored their trunk), and `used` on those caches."""
        stored = [r for r in rows if r.store and r.cache is not None]
        if not stored:
            return
        if self._observer is not None:
            tail = sum(len(t.ids) for r in stored for t in r.tails)
            self._observer.on_session_tokens(sum(len(r.trunk) for r in stored), tail)
        self.used([r.cache for r in stored if r.cache is not None])

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

    def _report(self, total: int | None = None, tenant: str | None = None) -> None:
        """Tell the observer (under the lock, so counts arrive in order)."""
        if self._observer is not None:
            nbytes = total if total is not None else sum(s.nbytes for s in self._states.values())
            self._observer.on_sessions(len(self._states), nbytes, self.evictions)
            if tenant is not None:
                self._observer.on_tenant_sessions(tenant, self.held(tenant))


class LiveSession:
    """One caller's session on the local backend: `push` and `close` return the STAR scores of the cuts
    they complete (implements scorer_server.backends.base.Session)."""

    def __init__(
        self,
        session: IncrementalSession,
        max_row_tokens: int,
        plan_pool: Executor,
        batcher: Any,
        pool: SessionPool,
        observer: SessionObserver | None = None,
        tenant: str = ANONYMOUS,
    ) -> None:
        self._session = session
        self._max_row_tokens = max_row_tokens
        self._plan_pool = plan_pool
        self._batcher = batcher
        self._pool = pool
        self._observer = observer
        self._lock = asyncio.Lock()
        self._done = False
        self._tenant = tenant
        pool.take(self._session.state, tenant)

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
            segments: list[Segment] = []
            # one push after the other: each starts from the trunk the one before stored
            for push in self._session.pushes(inputs, self._max_row_tokens):
                ticket = self._batcher.submit([push], SESSION_PRIORITY, self._tenant)
                future = ticket.futures[0]
                try:
                    await asyncio.wait([future])
                finally:
                    ticket.cancel()  # no-op once done; drops the work if the caller went away first
                if future.cancelled():
                    raise NotReady("the scorer is shutting down; retry on another replica")
                segments += future.result()
            if self._observer is not None:
                seconds = time.monotonic() - t0  # each cut's score waited this long after its delta
                for _ in segments:
                    self._observer.on_session_cut(seconds)
            return segments
