"""The watchdog's health flips, and the progress clocks it reads (batcher forwards)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from scorer_server.batcher import Batcher, BatcherConfig
from scorer_server.watchdog import Watchdog


def test_health_follows_the_stall_and_holds_while_draining() -> None:
    stalled = [0.0]
    draining = [False]
    flips: list[bool] = []

    async def set_serving(serving: bool) -> None:
        flips.append(serving)

    async def main() -> None:
        dog = Watchdog(lambda: stalled[0], 10.0, set_serving, lambda: draining[0])
        await dog.check()
        assert flips == []  # no change from SERVING
        stalled[0] = 11.0
        await dog.check()
        await dog.check()
        assert flips == [False]  # once
        stalled[0] = 0.0
        await dog.check()
        assert flips == [False, True]
        stalled[0], draining[0] = 50.0, True
        await dog.check()
        assert flips == [False, True]  # drain owns health

    asyncio.run(main())


def test_batcher_stall_clock() -> None:
    import threading

    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    async def main() -> None:
        b: Batcher[int, int] = Batcher(
            BatcherConfig(max_wait_s=0.0), run, cost=lambda i: 1, executor=ThreadPoolExecutor(1)
        )
        b.start()
        assert b.stalled_s() == 0.0  # idle is not stalled
        ticket = b.submit([1])
        await asyncio.sleep(0.3)
        assert b.stalled_s() >= 0.25  # the forward hangs
        gate.set()
        await asyncio.gather(*ticket.futures)
        assert b.stalled_s() == 0.0
        t = b.submit([2])
        assert b.stalled_s() < 0.1  # the clock restarts with new work after idling
        await asyncio.gather(*t.futures)
        await b.stop()

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < 5
