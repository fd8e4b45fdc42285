"""Fleet membership follows the fleet: `dns:///` names are resolved again periodically and when no replica
is usable, so replicas that appear get traffic and replicas that go away are dropped.

The replicas are real scorer processes on 127.0.0.2, 127.0.0.3 and 127.0.0.4, all on one port, as the
pods behind a Kubernetes headless Service are. The resolver is the test's: its answer stands for the
Service's DNS records (one address per ready pod), which the test changes as an autoscaler would.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from star_client import AsyncScorerClient, ClientConfig
from star_contract.types import Conversation, CutSpec, ScoreRequest
from star_testing.scorer_process import ScorerProcess, free_port

NAME = "scorers.star.svc.cluster.local"
REQS = [ScoreRequest(Conversation.from_pair("q", f"one two three {i}"), CutSpec()) for i in range(12)]
pytestmark = pytest.mark.slow


class Records:
    """A DNS answer the test controls; counts the client's lookups."""

    def __init__(self, *ips: str) -> None:
        self.ips = list(ips)
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        assert host == NAME
        self.lookups += 1
        return list(self.ips)


def ok_requests(server: ScorerProcess) -> float:
    return server.metric("star_requests_total", code="OK", method="ScoreStreamRequest")


@pytest.fixture(scope="module")
def replicas(tiny_guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ScorerProcess]]:
    logs = tmp_path_factory.mktemp("membership")
    port = free_port()
    args = ["--guard", str(tiny_guard_dir), "--preset", "llama-guard-3", "--max-wait-ms", "2"]
    procs = [
        ScorerProcess(args, logs / f"{ip}.log", port, free_port(), host=ip)
        for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    ]
    for p in procs:
        p.launch()
    try:
        for p in procs:
            p.wait_serving()
        yield procs
    finally:
        for p in procs:
            p.stop(10)


async def _until_resolved_again(client: AsyncScorerClient, records: Records) -> None:
    """Keep scoring, as a training run does, until the client has resolved the name again (bounded)."""
    seen = records.lookups
    for _ in range(2000):
        await client.score(REQS[0])
        if records.lookups > seen:
            return
    raise TimeoutError("the client did not resolve the name again")


def test_replicas_added_get_traffic_and_removed_ones_are_dropped(replicas: list[ScorerProcess]) -> None:
    a, b, _ = replicas
    records = Records("127.0.0.2")
    config = ClientConfig(resolve_every_s=0.2, deadline_s=60)

    async def main() -> None:
        async with AsyncScorerClient(f"dns:///{NAME}:{a.port}", config, resolver=records) as client:
            await client.score_many(REQS)
            assert client.addresses == [a.address]
            b0 = ok_requests(b)
            records.ips = ["127.0.0.2", "127.0.0.3"]  # scaled up
            await _until_resolved_again(client, records)
            await client.score_many(REQS)
            assert client.addresses == [a.address, b.address]
            assert ok_requests(b) - b0 >= len(REQS) // 2 - 1  # round-robin over both
            records.ips = ["127.0.0.3"]  # scaled down: a is gone from the Service
            await _until_resolved_again(client, records)
            a0 = ok_requests(a)
            await client.score_many(REQS)
            assert client.addresses == [b.address]
            assert ok_requests(a) == a0

    asyncio.run(main())


def test_the_name_is_resolved_again_when_no_replica_answers(replicas: list[ScorerProcess]) -> None:
    """No periodic resolution: the known replica is down, and the client asks DNS again at once."""
    _, b, c = replicas
    records = Records("127.0.0.3")
    config = ClientConfig(resolve_every_s=0, deadline_s=60)

    async def main() -> None:
        async with AsyncScorerClient(f"dns:///{NAME}:{b.port}", config, resolver=records) as client:
            await client.score_many(REQS)
            b.signal(signal.SIGSTOP)  # b hangs ...
            try:
                records.ips = ["127.0.0.4"]  # ... and the Service now lists c only
                client._replicas[0].mark_down(30.0)  # what a failed call does to it
                c0 = ok_requests(c)
                await client.score_many(REQS)
                assert client.addresses == [c.address]
                assert ok_requests(c) - c0 == len(REQS)
            finally:
                b.signal(signal.SIGCONT)

    asyncio.run(main())
