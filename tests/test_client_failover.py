"""Faults: a replica SIGKILLed mid-run (restarted, or with a second replica to fail over to)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from star_client import AsyncScorerClient, ClientConfig
from star_contract.types import Conversation, CutSpec, ScoreRequest, StarScores

REQS = [
    ScoreRequest(Conversation.from_pair("q", " ".join(["step"] * (1 + i % 7)) + f" {i}"), CutSpec())
    for i in range(80)
]
CONFIG = ClientConfig(deadline_s=90, max_in_flight=16, reconnect_backoff_max_s=0.5)


async def run_and_kill(
    client: AsyncScorerClient, victim: Any, after: int, then: Any = None
) -> list[StarScores]:
    """Score REQS, SIGKILL `victim` once `after` answers are in, call `then()`, return all answers."""
    done = 0
    killed = asyncio.Event()

    async def one(r: ScoreRequest) -> StarScores:
        nonlocal done
        s = await client.score(r)
        done += 1
        if done >= after and not killed.is_set():
            killed.set()
            victim.kill()
            if then is not None:
                await asyncio.get_running_loop().run_in_executor(None, then)
        return s

    results = await asyncio.gather(*(one(r) for r in REQS))
    assert killed.is_set()
    return list(results)


def check(results: list[StarScores], reference: list[StarScores]) -> None:
    assert len(results) == len(REQS)
    for got, want in zip(results, reference, strict=True):
        assert [s.end for s in got.segments] == [s.end for s in want.segments]
        assert [s.p_safe for s in got.segments] == pytest.approx([s.p_safe for s in want.segments], abs=1e-5)


def test_sigkill_and_restart_resends_what_was_unanswered(start_server: Any) -> None:
    srv = start_server("--max-wait-ms", "20")

    async def main() -> tuple[list[StarScores], list[StarScores]]:
        async with AsyncScorerClient(srv.address, CONFIG) as client:
            reference = await client.score_many(REQS)
            return reference, await run_and_kill(client, srv, after=10, then=lambda: srv.start())

    try:
        reference, results = asyncio.run(main())
        check(results, reference)
    finally:
        srv.stop()


def test_two_replicas_one_killed_mid_run(start_server: Any) -> None:
    a = start_server("--max-wait-ms", "20")
    b = start_server("--max-wait-ms", "20")

    async def main() -> tuple[list[StarScores], list[StarScores]]:
        async with AsyncScorerClient([a.address, b.address], CONFIG) as client:
            reference = await client.score_many(REQS)
            assert all(r.pending == {} for r in client._replicas)
            return reference, await run_and_kill(client, a, after=20)

    try:
        reference, results = asyncio.run(main())
        check(results, reference)
        assert b.proc.poll() is None
    finally:
        a.stop()
        b.stop()
