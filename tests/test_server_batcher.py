"""The dynamic batcher on its own: budget, priority, max wait, backpressure, cancellation, OOM splits."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from scorer_server.batcher import Batcher, BatcherConfig
from scorer_server.budget import TokenBudget
from star_contract.errors import Overloaded


class Recorder:
    """A fake model: records each forward's items; optionally 'runs out of memory' above a size."""

    def __init__(self, oom_above: int | None = None, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.oom_above = oom_above
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(5)
        if self.oom_above is not None and len(items) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(self.delay)
        self.batches.append(list(items))
        return [i * 10 for i in items]


def make(rec: Recorder, **kw: float) -> Batcher[int, int]:
    cfg = BatcherConfig(
        TokenBudget(max_batch_tokens=int(kw.get("budget", 100))),
        max_wait_s=kw.get("wait", 0.01),
        max_queue=int(kw.get("queue", 100)),
        max_pending_tokens=int(kw.get("pending", 1_000_000)),
    )
    b: Batcher[int, int] = Batcher(cfg, rec, cost=lambda i: 10, executor=ThreadPoolExecutor(1))
    b.start()
    return b


def test_budget_and_results() -> None:
    async def main() -> None:
        rec = Recorder()
        b = make(rec, budget=40)
        tickets = [b.submit([i], 0) for i in range(10)]
        results = [await t.futures[0] for t in tickets]
        assert results == [i * 10 for i in range(10)]
        assert all(len(batch) <= 4 for batch in rec.batches)  # 4 rows x 10 tokens fill the budget
        assert sorted(i for batch in rec.batches for i in batch) == list(range(10))
        await b.stop()

    asyncio.run(main())


def test_rows_of_very_different_lengths_are_not_padded_into_one_forward() -> None:
    """A short live-moderation row beside a long Score row would be padded to the long one: the
    batcher keeps a forward's padded tokens within `max_padding` (2) times its real ones."""

    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()  # hold the first forward so everything below queues together
        cfg = BatcherConfig(TokenBudget(max_batch_tokens=100_000), max_wait_s=0.0)
        b: Batcher[int, int] = Batcher(cfg, rec, cost=lambda i: i, executor=ThreadPoolExecutor(1))
        b.start()
        first = b.submit([1], 0)
        await asyncio.sleep(0.05)
        tickets = [b.submit([n], 0) for n in (70, 60, 3000, 80)]
        rec.gate.set()
        await asyncio.gather(first.futures[0], *[t.futures[0] for t in tickets])
        assert sorted(map(sorted, rec.batches[1:])) == [[60, 70, 80], [3000]]
        await b.stop()

    asyncio.run(main())


def test_priority_first_and_max_wait_batches_callers() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()  # hold the first forward so the rest queue up behind it
        b = make(rec, budget=30, wait=0.05)
        first = b.submit([0], 0)
        await asyncio.sleep(0.1)
        low = [b.submit([i], 0) for i in (1, 2, 3)]
        high = b.submit([99], 5)
        rec.gate.set()
        await asyncio.gather(first.futures[0], high.futures[0], *(t.futures[0] for t in low))
        assert rec.batches[0] == [0]
        assert rec.batches[1][0] == 99  # the high-priority item goes into the next forward, first
        assert len(rec.batches[1]) == 3  # and callers are merged up to the budget
        await b.stop()

    asyncio.run(main())


def test_bounded_queue_overloaded_with_hint() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        b = make(rec, queue=3)
        tickets = [b.submit([i]) for i in range(3)]
        with pytest.raises(Overloaded) as err:
            b.submit([9])
        assert err.value.retry_after_s > 0
        rec.gate.set()
        await asyncio.gather(*(t.futures[0] for t in tickets))
        assert b.depth == 0
        b.submit([9])  # room again
        await b.stop()

    asyncio.run(main())


def test_pending_token_budget_overloaded_then_room_again() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        b = make(rec, pending=50)  # every item costs 10 tokens
        big = b.submit([1, 2, 3, 4])  # 40 tokens
        with pytest.raises(Overloaded, match=r"40 guard tokens of pending work.*limit of 50") as err:
            b.submit([5, 6])  # 20 more would pass 50
        assert err.value.retry_after_s > 0
        small = b.submit([7])  # 10 more fit exactly
        assert b.pending_tokens == 50
        rec.gate.set()
        await asyncio.gather(*big.futures, *small.futures)
        assert b.pending_tokens == 0
        alone = b.submit(list(range(8)))  # over the budget on its own: admitted when nothing else waits
        await asyncio.gather(*alone.futures)
        await b.stop()

    asyncio.run(main())


def test_cancelled_work_never_reaches_the_model() -> None:
    async def main() -> None:
        rec = Recorder()
        b = make(rec, wait=0.2)
        t = b.submit([1, 2, 3])
        keep = b.submit([4])
        t.cancel()
        assert await keep.futures[0] == 40
        assert all(i == 4 for batch in rec.batches for i in batch)
        assert b.depth == 0
        await b.stop()

    asyncio.run(main())


def test_oom_splits_the_batch_and_retries() -> None:
    async def main() -> None:
        rec = Recorder(oom_above=2)
        b = make(rec, budget=100, wait=0.05)
        tickets = [b.submit([i]) for i in range(8)]
        assert [await t.futures[0] for t in tickets] == [i * 10 for i in range(8)]
        assert all(len(batch) <= 2 for batch in rec.batches)
        await b.stop()

    asyncio.run(main())


def test_non_oom_errors_reach_their_callers_only() -> None:
    def boom(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("bad row")
        return items

    async def main() -> None:
        cfg = BatcherConfig(TokenBudget(max_batch_tokens=10), max_wait_s=0.0, max_queue=10)
        b: Batcher[int, int] = Batcher(cfg, boom, cost=lambda i: 10, executor=ThreadPoolExecutor(1))
        b.start()
        bad, good = b.submit([13]), b.submit([1])
        with pytest.raises(ValueError):
            await bad.futures[0]
        assert await good.futures[0] == 1
        await b.stop()

    asyncio.run(main())
