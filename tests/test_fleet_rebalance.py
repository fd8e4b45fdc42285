"""A long run behind one Service address spreads over the replicas: the server limits its connections'
age (GOAWAY), the client moves new requests to a fresh stream, and the fresh stream's new connection may
reach another replica. Nothing is lost on the way.

The Service is a round-robin TCP proxy on 127.0.0.1 that sends each new connection to the next replica:
what kube-proxy does for a ClusterIP Service (an L4 balancer that picks a backend per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from star_client import AsyncScorerClient, ClientConfig
from star_contract.types import Conversation, CutSpec, ScoreRequest
from star_testing.scorer_process import free_port

REQS = [ScoreRequest(Conversation.from_pair("q", f"alpha beta gamma delta {i}"), CutSpec()) for i in range(8)]


class RoundRobinProxy:
    """Forwards each TCP connection on 127.0.0.1:port to the next backend, in turn."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self.connections = [0] * len(backends)
        self._next = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        k = next(self._next) % len(self.backends)
        self.connections[k] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backends[k])
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    with contextlib.suppress(OSError):
        dst.close()


@pytest.fixture()
def proxy_and_replicas(start_server: Any) -> Iterator[tuple[RoundRobinProxy, list[Any]]]:
    age = ("--max-connection-age-s", "1", "--max-connection-age-grace-s", "300", "--max-wait-ms", "2")
    replicas = [start_server(*age) for _ in range(2)]
    proxy = RoundRobinProxy([r.port for r in replicas])
    try:
        yield proxy, replicas
    finally:
        proxy.close()
        for r in replicas:
            r.stop()


def _served(server: Any) -> float:
    return float(server.metric("star_requests_total", code="OK", method="ScoreStreamRequest"))


def test_a_long_run_behind_one_address_reaches_every_replica(
    proxy_and_replicas: tuple[RoundRobinProxy, list[Any]],
) -> None:
    proxy, replicas = proxy_and_replicas
    config = ClientConfig(stream_max_age_s=0.5, deadline_s=60)

    async def main() -> int:
        async with AsyncScorerClient(f"127.0.0.1:{proxy.port}", config) as client:
            reference = await client.score_many(REQS)
            rounds = 0
            while min(_served(r) for r in replicas) == 0:  # bounded below
                rounds += 1
                assert rounds <= 400, "the run never reached the second replica"
                got = await client.score_many(REQS)
                assert [s.p_safe for g in got for s in g.segments] == pytest.approx(
                    [s.p_safe for w in reference for s in w.segments], abs=1e-5
                )
                await asyncio.sleep(0.05)  # a training step between two batches of scores
            assert client._replicas[0].streams_opened >= 2
            return rounds

    asyncio.run(main())
    assert min(proxy.connections) >= 1
    # every request was answered exactly once by some replica: none lost, none answered twice
    assert all(_served(r) > 0 for r in replicas)
