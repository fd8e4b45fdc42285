"""Dynamic batcher: merges work from all callers into forwards by token budget and a maximum wait.

Work arrives as tickets (one per request, each from one tenant), each holding one or more items (rows
of a forward). Live-moderation items go first; otherwise tenants take turns leading a forward, and
within a tenant items are taken highest priority first, then oldest first (scorer_server/fairness.py),
packed until the padded-token budget is full. A forward starts when the budget can be filled or the
oldest item has waited `max_wait_s`; while one forward runs on the worker thread the next batch
accumulates. Outstanding work is bounded in tickets and in tokens, server-wide and per tenant: beyond a
bound `submit` raises LimitReached (Overloaded) with a retry hint. Cancelled tickets' items are dropped
before they reach the model. A batch that runs out of memory is split in halves and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from scorer_server.budget import TokenBudget
from scorer_server.errors import LimitReached
from scorer_server.fairness import fill_order
from scorer_server.tenants import ANONYMOUS
from star_contract.errors import NotReady

INTERACTIVE = 2**31 - 1
"""The priority of live-moderation work (the largest int32: above any ScoreRequest.priority)."""
INTERACTIVE_HOLD_S = 1.0
"""How long after the last interactive item batches of other work stay capped (see `_take`)."""
I = TypeVar("I")  # noqa: E741
R = TypeVar("R")
log = logging.getLogger("star.batcher")


@dataclass(frozen=True)
class BatcherConfig:
    """Batching and backpressure limits."""

    budget: TokenBudget = field(default_factory=TokenBudget)
    """What one forward may hold (the engine packs by the same budget)."""
    max_wait_s: float = 0.005
    """Longest a queued item waits for company before its forward starts anyway."""
    max_queue: int = 1024
    """Tickets (requests) queued or running; more get Overloaded."""
    max_pending_tokens: int = 2_000_000
    """Guard tokens of all outstanding requests' rows (what their plans hold in memory); a request that
    would go beyond it gets Overloaded, unless nothing else is outstanding."""
    bulk_batch_tokens_interactive: int = 2048
    """Padded tokens of a batch of non-interactive work while interactive work is arriving: a forward
    cannot be interrupted, so this bounds how long a moderation cut waits behind bulk work."""
    tenant_max_pending_tokens: int = 0
    """Guard tokens of one tenant's outstanding requests; a request of a tenant that would go beyond it
    gets Overloaded, unless the tenant has nothing else outstanding. 0: no per-tenant bound."""


class BatchObserver(Protocol):
    def on_batch(self, rows: int, tokens: int, seconds: float) -> None: ...
    def on_queue(self, depth: int) -> None: ...
    def on_tenant_pending(self, tenant: str, tokens: int) -> None: ...


class Ticket(Generic[R]):
    """One request's items in the batcher; `futures[i]` resolves to item i's result."""

    def __init__(
        self, futures: list[asyncio.Future[R]], priority: int, tenant: str = ANONYMOUS, tokens: int = 0
    ) -> None:
        self.futures = futures
        self.priority = priority
        self.tenant = tenant
        self.tokens = tokens
        self.cancelled = False

    def cancel(self) -> None:
        """Drop whatever has not reached the model yet."""
        self.cancelled = True
        for f in self.futures:
            f.cancel()

    @property
    def done(self) -> bool:
        return all(f.done() for f in self.futures)


@dataclass
class _Entry(Generic[I, R]):
    priority: int
    seq: int
    item: I
    tokens: int
    ticket: Ticket[R]
    future: asyncio.Future[R]
    enqueued: float

    @property
    def tenant(self) -> str:
        return self.ticket.tenant


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a forward failed for lack of accelerator memory (torch's OOM error or its message)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class Batcher(Generic[I, R]):
    """Token-budgeted, priority-ordered batching of items into `run(items) -> results` calls."""

    def __init__(
        self,
        config: BatcherConfig,
        run: Callable[[list[I]], list[R]],
        cost: Callable[[I], int],
        executor: Executor,
        observer: BatchObserver | None = None,
        on_oom: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._run = run
        self._cost = cost
        self._executor = executor
        self._observer = observer
        self._on_oom = on_oom
        self._queue: list[_Entry[I, R]] = []
        self._seq = itertools.count()
        self._outstanding: set[Ticket[R]] = set()
        self.pending_tokens = 0
        """Tokens of the outstanding tickets' items."""
        self._tenants: dict[str, tuple[int, int]] = {}  # tenant -> (outstanding tickets, their tokens)
        self._turns: dict[str, int] = {}
        self._forwards = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._forward_s = 0.05  # running estimate, for retry hints
        self._progress_at = time.monotonic()
        self._interactive_at = -INTERACTIVE_HOLD_S

    # -- submitting --
    def submit(self, items: list[I], priority: int = 0, tenant: str = ANONYMOUS) -> Ticket[R]:
        """Queue one request's items for `tenant`; raises LimitReached (Overloaded) past a limit."""
        if self._closed:
            raise NotReady("the scorer is shutting down; retry on another replica")
        costs = [self._cost(item) for item in items]
        total = sum(costs)
        self._admit(tenant, total)
        loop = asyncio.get_running_loop()
        ticket: Ticket[R] = Ticket([loop.create_future() for _ in items], priority, tenant, total)
        now = time.monotonic()
        if priority >= INTERACTIVE:
            self._interactive_at = now
        for item, cost, fut in zip(items, costs, ticket.futures, strict=True):
            self._queue.append(_Entry(priority, next(self._seq), item, cost, ticket, fut, now))
        if not self._outstanding:
            self._progress_at = time.monotonic()  # idle until now: the stall clock starts here
        self._outstanding.add(ticket)
        self.pending_tokens += total
        self._book(tenant, 1, total)
        settle = functools.partial(self._settle, ticket)
        for fut in ticket.futures:
            fut.add_done_callback(settle)
        self._report_queue()
        self._wake.set()
        return ticket

    def _admit(self, tenant: str, tokens: int) -> None:
        """Raise LimitReached when a request of `tokens` from `tenant` would pass a limit: the tenant's
        own first (what it holds is its own doing), then the server's."""
        tickets, own = self._tenants.get(tenant, (0, 0))
        cap = self.config.tenant_max_pending_tokens
        if cap and tickets and own + tokens > cap:
            raise LimitReached(
                f"tenant {tenant} holds {own} guard tokens of pending work; this request's {tokens} would "
                f"pass its limit of {cap} (--tenant-max-pending-tokens); retry shortly",
                self.retry_hint(),
                "tenant_max_pending_tokens",
            )
        if len(self._outstanding) >= self.config.max_queue:
            raise LimitReached(
                f"the scorer queue is full ({self.config.max_queue} requests, --max-queue); retry shortly",
                self.retry_hint(),
                "max_queue",
            )
        if self._outstanding and self.pending_tokens + tokens > self.config.max_pending_tokens:
            raise LimitReached(
                f"the scorer holds {self.pending_tokens} guard tokens of pending work; this request's "
                f"{tokens} would pass the limit of {self.config.max_pending_tokens} (--max-pending-tokens); "
                "retry shortly",
                self.retry_hint(),
                "max_pending_tokens",
            )

    def _book(self, tenant: str, tickets: int, tokens: int) -> None:
        """Add to (negative: take off) a tenant's outstanding tickets and tokens, and report them."""
        n, t = self._tenants.pop(tenant, (0, 0))
        if n + tickets:
            self._tenants[tenant] = (n + tickets, t + tokens)
        if self._observer is not None:
            self._observer.on_tenant_pending(tenant, self.tenant_tokens(tenant))

    def tenant_tokens(self, tenant: str) -> int:
        """Guard tokens of the tenant's outstanding requests."""
        return self._tenants.get(tenant, (0, 0))[1]

    def _settle(self, ticket: Ticket[R], _future: object = None) -> None:
        if ticket in self._outstanding and ticket.done:
            self._outstanding.discard(ticket)
            self.pending_tokens -= ticket.tokens
            self._book(ticket.tenant, -1, -ticket.tokens)
            self._report_queue()

    def _report_queue(self) -> None:
        if self._observer is not None:
            self._observer.on_queue(len(self._outstanding))

    @property
    def depth(self) -> int:
        """Requests queued or running."""
        return len(self._outstanding)

    def stalled_s(self) -> float:
        """Seconds outstanding work has waited without a forward finishing (0 when idle)."""
        return time.monotonic() - self._progress_at if self._outstanding else 0.0

    def retry_hint(self) -> float:
        queued = sum(e.tokens for e in self._queue)
        batches = 1 + queued / max(1, self.config.budget.max_batch_tokens)
        return round(min(5.0, max(0.05, batches * self._forward_s)), 3)

    # -- lifecycle --
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="star-batcher")

    async def drain(self, timeout: float) -> bool:
        """Refuse new work and wait up to `timeout` for outstanding tickets; True if all finished."""
        self._closed = True
        end = time.monotonic() + timeout
        while self._outstanding and time.monotonic() < end:
            await asyncio.sleep(0.02)
        return not self._outstanding

    async def stop(self) -> None:
        self._closed = True
        for e in self._queue:
            e.future.cancel()
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the loop --
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._fill(loop)
            batch = self._take()
            if not batch:
                continue
            tokens = len(batch) * max(e.tokens for e in batch)
            t0 = time.monotonic()
            try:
                items = [e.item for e in batch]
                results = await loop.run_in_executor(self._executor, self._run_splitting, items)
            except Exception as exc:  # reaches callers as their error; the loop goes on
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(exc)
                continue
            seconds = time.monotonic() - t0
            self._progress_at = time.monotonic()
            self._forward_s = 0.8 * self._forward_s + 0.2 * seconds
            if self._observer is not None:
                self._observer.on_batch(len(batch), tokens, seconds)
            log.debug("forward", extra={"rows": len(batch), "tokens": tokens, "seconds": round(seconds, 3)})
            for e, r in zip(batch, results, strict=True):
                if not e.future.done():
                    e.future.set_result(r)

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the budget can be filled or the oldest item has waited long enough."""
        while True:
            self._drop_cancelled()
            if not self._queue:
                return
            if sum(e.tokens for e in self._queue) >= self.config.budget.max_batch_tokens:
                return
            oldest = min(e.enqueued for e in self._queue)
            left = oldest + self.config.max_wait_s - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Entry[I, R]]:
        """The next forward's items in `fill_order` (fairness.py): the leading item always goes, the
        rest as the budget admits them. Padded tokens stay within the budget and within `max_padding`
        times the real ones (a lone oversize row still runs on its own). While interactive work
        arrives, a batch led by other work gets the smaller `bulk_batch_tokens_interactive`."""
        self._drop_cancelled()
        if not self._queue:
            return []
        self._queue = fill_order(self._queue, self._turns, INTERACTIVE)
        head = self._queue[0]
        self._turns[head.tenant] = next(self._forwards)
        batch: list[_Entry[I, R]] = []
        rest: list[_Entry[I, R]] = []
        longest = total = 0
        cap = None
        if head.priority < INTERACTIVE and time.monotonic() - self._interactive_at < INTERACTIVE_HOLD_S:
            cap = self.config.bulk_batch_tokens_interactive
        for e in self._queue:
            padded = (len(batch) + 1, max(longest, e.tokens))
            if not batch or self.config.budget.admits(*padded, cap, total + e.tokens):
                batch.append(e)
                longest, total = max(longest, e.tokens), total + e.tokens
            else:
                rest.append(e)
        self._queue = rest
        return batch

    def _drop_cancelled(self) -> None:
        if any(e.ticket.cancelled or e.future.done() for e in self._queue):
            self._queue = [e for e in self._queue if not (e.ticket.cancelled or e.future.done())]

    def _run_splitting(self, items: list[I]) -> list[R]:
        """Run one forward; on out-of-memory split the batch in halves and retry each."""
        try:
            return self._run(items)
        except Exception as exc:
            if not is_out_of_memory(exc) or len(items) == 1:
                raise
            if self._on_oom is not None:
                self._on_oom()
            log.warning("out of memory on a batch of %d rows; splitting it", len(items))
            half = len(items) // 2
            return self._run_splitting(items[:half]) + self._run_splitting(items[half:])
