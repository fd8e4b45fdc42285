"""The local ScoringBackend: a StarEngine in this process behind the dynamic batcher.

Planning (template rendering and tokenisation) runs on one worker thread, forwards on another, so the
next requests are tokenised while the model runs; the event loop only moves results around.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from scorer_server import __version__
from scorer_server.backends.base import ScorePart
from scorer_server.backends.sessions import LiveSession, SessionObserver, SessionPool
from scorer_server.batcher import Batcher, BatchObserver
from scorer_server.config import BatchingSettings
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import describe_guard
from scorer_server.limits import Limits
from scorer_server.tenants import ANONYMOUS, TenantSettings
from star_contract.errors import NotReady
from star_contract.types import Conversation, GuardInfo, ModerateOptions, ScoreRequest, Segment, Verdict

log = logging.getLogger("star.backend")
WARMUP = Conversation.from_pair("How do I bake bread?", "Mix flour, water and yeast, then bake it.")


@dataclass(frozen=True)
class LocalBackendConfig:
    """The local engine's part of `ServerConfig`: its guard, batching, request and tenant limits."""

    guard: GuardConfig
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    limits: Limits = field(default_factory=Limits)
    tenants: TenantSettings = field(default_factory=TenantSettings)


class EngineObserver(BatchObserver, SessionObserver, Protocol):
    """What the local backend reports besides batches: the head cache's size and its reuse, and the
    live-moderation sessions."""

    def on_head_cache(self, tokens: int, nbytes: int) -> None: ...
    def on_head_reused(self, tokens: int) -> None: ...


class LocalBackend:
    """Implements scorer_server.backends.base.ScoringBackend over a StarEngine."""

    def __init__(self, config: LocalBackendConfig, observer: EngineObserver | None = None) -> None:
        self.config = config
        self._observer = observer
        self._plan_pool = ThreadPoolExecutor(1, thread_name_prefix="star-plan")
        self._planning_since: float | None = None
        self._forward_pool = ThreadPoolExecutor(1, thread_name_prefix="star-forward")
        self._engine: Any = None
        self._batcher: Batcher[Any, list[Segment]] | None = None
        self._info: GuardInfo | None = None
        budget = int(config.batching.session_cache_mib * 2**20)
        self._sessions = SessionPool(
            config.batching.max_sessions, budget, observer, tenant_limit=config.tenants.max_sessions
        )

    def info(self) -> GuardInfo:
        if self._info is None:
            raise NotReady("the guard is still loading")
        return self._info

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._engine = await loop.run_in_executor(self._forward_pool, self._load)
        self._batcher = Batcher(
            self.config.batching.batcher_config(self.config.tenants.max_pending_tokens),
            run=self._run,
            cost=lambda item: int(item.tokens),
            executor=self._forward_pool,
            observer=self._observer,
            on_oom=_empty_cache,
        )
        self._batcher.start()
        if self.config.batching.warmup:
            async for _ in self.score(ScoreRequest(WARMUP)):
                pass
            await self.judge([WARMUP])
        g = self._engine.guard
        self._info = describe_guard(
            g,
            "local",
            max_conversation_tokens=self.config.limits.max_conversation_tokens,
            max_cuts=self.config.limits.max_cuts,
            server_version=__version__,
        )

    def _run(self, works: list[Any]) -> list[list[Segment]]:
        """One forward over a batch (Score items and session pushes alike), then the sessions' books."""
        head = self._engine.head
        before = head.reused if head is not None else 0
        ran = self._engine.run(works)
        self._sessions.after_forward(ran.rows)
        if head is not None and self._observer is not None:
            self._observer.on_head_reused(head.reused - before)
        return list(ran.segments)

    def _load(self) -> Any:
        import torch

        from scorer_server.engine.engine import EngineConfig, StarEngine
        from scorer_server.guards.loader import load_guard

        if self.config.batching.threads > 0:
            torch.set_num_threads(self.config.batching.threads)
        guard = load_guard(self.config.guard)
        engine_config = EngineConfig(
            budget=self.config.batching.budget(),
            limits=self.config.limits,
            head_cache=self.config.batching.head_cache,
        )
        engine = StarEngine(guard, engine_config)
        head = engine.head
        head_tokens, head_bytes = (head.tokens, head.nbytes) if head is not None else (0, 0)
        if self._observer is not None:
            self._observer.on_head_cache(head_tokens, head_bytes)
        log.info(
            "guard loaded",
            extra={
                "guard": guard.name,
                "fingerprint": guard.fingerprint,
                "head_cache_tokens": head_tokens,
                "head_cache_bytes": head_bytes,
            },
        )
        return engine

    def open_session(
        self, conversation: Conversation, options: ModerateOptions, tenant: str = ANONYMOUS
    ) -> LiveSession:
        """A live-moderation session on this backend's guard (its work goes through the batcher)."""
        from scorer_server.engine.caches import attention_layout
        from scorer_server.engine.incremental import IncrementalSession

        if self._engine is None or self._batcher is None:
            raise NotReady("the guard is still loading")
        guard = self._engine.guard
        session = IncrementalSession(
            guard,
            conversation,
            options.cuts(),
            options.temperature,
            options.convention,
            self.config.limits,
            attention_layout(guard.model).window,
            options.safe_classes,
        )
        return LiveSession(
            session,
            self._engine.config.budget.max_row_tokens,
            self._plan_pool,
            self._batcher,
            self._sessions,
            self._observer,
            tenant,
        )

    async def stop(self, grace_s: float) -> None:
        if self._batcher is not None:
            await self._batcher.drain(grace_s)
            await self._batcher.stop()
        self._plan_pool.shutdown(wait=False, cancel_futures=True)
        self._forward_pool.shutdown(wait=False, cancel_futures=True)

    def stalled_s(self) -> float:
        """Seconds the forward or the planning thread has gone without progress while work waits."""
        planning = time.monotonic() - self._planning_since if self._planning_since is not None else 0.0
        forward = self._batcher.stalled_s() if self._batcher is not None else 0.0
        return max(planning, forward)

    def _plan(self, request: ScoreRequest) -> list[Any]:
        self._planning_since = time.monotonic()
        try:
            plan = self._engine.plan(request)
        finally:
            self._planning_since = None
        return list(self._engine.work_items(plan))

    async def score(
        self, request: ScoreRequest, priority: int = 0, tenant: str = ANONYMOUS
    ) -> AsyncIterator[ScorePart]:
        if self._batcher is None:
            raise NotReady("the guard is still loading")
        items = await asyncio.get_running_loop().run_in_executor(self._plan_pool, self._plan, request)
        ticket = self._batcher.submit(items, priority, tenant)
        index = {id(f): k for k, f in enumerate(ticket.futures)}
        pending: set[asyncio.Future[list[Segment]]] = set(ticket.futures)
        left = len(items)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: index[id(f)]):
                    if fut.cancelled():
                        raise NotReady("the scorer is shutting down; retry on another replica")
                    it = items[index[id(fut)]]
                    segments = tuple(sorted(fut.result(), key=lambda s: s.end))
                    left -= 1
                    yield ScorePart(segments, it.part, it.parts, left == 0, int(it.tokens))
        finally:
            ticket.cancel()  # no-op when every part finished; drops queued parts otherwise

    async def judge(self, conversations: list[Conversation], decode: bool = True) -> list[Verdict]:
        if self._engine is None:
            raise NotReady("the guard is still loading")
        loop = asyncio.get_running_loop()
        judge = functools.partial(self._engine.judge, decode=decode)
        verdicts: list[Verdict] = await loop.run_in_executor(self._forward_pool, judge, conversations)
        return verdicts


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
