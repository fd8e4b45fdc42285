"""The gateway's probes: `/healthz` (the process answers: liveness) and `/readyz` (the scorer answers
GetInfo, so answers can be moderated: readiness). A gateway that fails open is ready without a scorer.
A readiness answer is reused for `cache_s`, so frequent probes cost the scorer one call per period."""

from __future__ import annotations

import asyncio
import time

from star_client import AsyncScorerClient


class Readiness:
    """Checks the scorer for `/readyz`, at most once per `cache_s`, each check bounded by `timeout_s`."""

    def __init__(
        self, client: AsyncScorerClient, timeout_s: float, fail_open: bool, cache_s: float = 2.0
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.fail_open = fail_open
        self.cache_s = cache_s
        self._last: tuple[float, bool, str] | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> tuple[bool, str]:
        """(ready, why): ready when the scorer answered (or the gateway fails open)."""
        if self.fail_open:
            return True, "fail-open: answers pass unmoderated while the scorer is away"
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.cache_s:
                return self._last[1], self._last[2]
            try:
                info = await asyncio.wait_for(self.client.info(), self.timeout_s)
                ready, why = True, f"the scorer serves {info.name}"
            except Exception as exc:  # any failure to answer means not ready
                ready, why = False, f"the scorer did not answer: {type(exc).__name__}: {exc}"
            self._last = (time.monotonic(), ready, why)
            return ready, why
