"""Health follows what the scorer can do: NOT_SERVING while waiting work has made no progress for
`limit_s` (`Watchdog`), or while no remote engine answers (`EngineWatch`).

A guard forward or a planning step that hangs (a driver fault, a pathological template), or a vLLM /
TGI fleet that went away, would otherwise leave health SERVING while every call fails or times out,
so no probe or load balancer would notice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("star.watchdog")


class Watchdog:
    """Polls `stalled_s()` and reports a stall (and the recovery) through `set_serving`."""

    def __init__(
        self,
        stalled_s: Callable[[], float],
        limit_s: float,
        set_serving: Callable[[bool], Awaitable[None]],
        draining: Callable[[], bool],
    ) -> None:
        self.stalled_s = stalled_s
        self.limit_s = limit_s
        self.set_serving = set_serving
        self.draining = draining
        self.stalled = False

    async def check(self) -> None:
        """One look: flip health when the stall state changes (never while draining)."""
        if self.draining():
            return
        waited = self.stalled_s()
        now_stalled = waited > self.limit_s
        if now_stalled == self.stalled:
            return
        self.stalled = now_stalled
        if now_stalled:
            log.warning("no progress; health NOT_SERVING", extra={"stalled_s": round(waited, 1)})
        else:
            log.info("progress again; health SERVING")
        await self.set_serving(not now_stalled)

    async def run(self) -> None:
        period = min(1.0, self.limit_s / 4)
        while True:
            await asyncio.sleep(period)
            await self.check()


class EngineWatch:
    """Polls a remote backend's `reachable()` every `interval_s` and flips health when it changes."""

    def __init__(
        self,
        reachable: Callable[[], Awaitable[bool]],
        interval_s: float,
        set_serving: Callable[[bool], Awaitable[None]],
        draining: Callable[[], bool],
    ) -> None:
        self.reachable = reachable
        self.interval_s = interval_s
        self.set_serving = set_serving
        self.draining = draining
        self.up = True

    async def check(self) -> None:
        up = await self.reachable()
        if self.draining() or up == self.up:
            return
        self.up = up
        if up:
            log.info("remote engine reachable again; health SERVING")
        else:
            log.warning("no remote engine answers; health NOT_SERVING")
        await self.set_serving(up)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()
