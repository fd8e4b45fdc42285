"""What every remote engine client shares: a concurrency cap, retries with backoff, endpoint rotation."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from scorer_server.errors import EngineUnavailable

T = TypeVar("T")

RETRY_STATUS = frozenset({429, 503})
"""HTTP answers that mean "busy, try again" (TGI: 429 past MAX_CONCURRENT_REQUESTS; both: 503)."""


class RemoteOverloaded(Exception):
    """The engine said it is busy; the call may be retried after a pause."""


class RemoteEngineError(Exception):
    """The engine answered with something the scorer cannot use (not retried)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for overloaded answers and dropped connections."""

    attempts: int = 6
    """Tries per request, the first included."""
    base_delay_s: float = 0.05
    max_delay_s: float = 5.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Pause before retry number `attempt` (1-based): uniform in [0, min(max, base * 2**(attempt-1))]."""
        return rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))


def is_overloaded(status: int, body: str) -> bool:
    """Whether an HTTP answer means the engine is busy rather than that the request is wrong."""
    return status in RETRY_STATUS or "overloaded" in body.lower()


class Dispatcher:
    """Runs calls against a fleet of base URLs: at most `max_concurrency` at once, round-robin over
    the URLs, each retried on `RemoteOverloaded` / connection errors with the policy's backoff (the
    retry goes to the next URL, so one busy or dead replica does not stall a request). When the tries
    run out on connection errors it raises EngineUnavailable with `retry_after_s` as the hint."""

    def __init__(
        self,
        urls: list[str],
        max_concurrency: int,
        retry: RetryPolicy,
        seed: int | None = None,
        retry_after_s: float = 1.0,
    ) -> None:
        if not urls:
            raise ValueError("a remote backend needs at least one engine URL")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.urls = [u.rstrip("/") for u in urls]
        self.retry = retry
        self._slots = asyncio.Semaphore(max_concurrency)
        self._next = itertools.cycle(range(len(self.urls)))
        self._rng = random.Random(seed)
        self.retry_after_s = retry_after_s
        self.retries = 0
        """How many retries were made (for metrics and tests)."""

    async def call(self, fn: Callable[[str], Awaitable[T]]) -> T:
        """`fn(url)` with the concurrency cap and retries; raises the last error when tries run out."""
        attempt = 0
        while True:
            attempt += 1
            url = self.urls[next(self._next)]
            try:
                async with self._slots:
                    return await fn(url)
            except (TimeoutError, RemoteOverloaded, ConnectionError) as err:
                if attempt >= self.retry.attempts:
                    if isinstance(err, ConnectionError):
                        msg = f"the remote engine is down ({err}); retry in {self.retry_after_s:g} s"
                        raise EngineUnavailable(msg, self.retry_after_s) from err
                    raise
                self.retries += 1
            await asyncio.sleep(self.retry.delay(attempt, self._rng))
