"""Fleet faults with real scorer processes: a replica drained with SIGTERM under load, and a live-moderation
session whose replica dies (one clear UNAVAILABLE, then re-opened elsewhere by replaying the text)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from star_client import AsyncScorerClient, ClientConfig, ModerationLost
from star_contract.types import Conversation, CutSpec, ModerateOptions, ScoreRequest, Segment, StarScores
from star_testing.scorer_process import SERVING

NOT_SERVING = 2
"""grpc.health.v1.HealthCheckResponse.NOT_SERVING."""
CONFIG = ClientConfig(deadline_s=60, max_in_flight=8, reconnect_backoff_max_s=0.5)
REQS = [
    ScoreRequest(Conversation.from_pair("q", " ".join(["word"] * (3 + i % 9)) + f" {i}"), CutSpec())
    for i in range(48)
]
PROMPT = "How do I bake bread?"
RESPONSE = "Sure, first mix the flour and the water, then knead it for ten minutes and bake it at 220 C."
OPTIONS = ModerateOptions(every=2, unsafe_below=0.0)  # never stops: every cut is scored


def same_scores(got: list[StarScores], want: list[StarScores]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert [s.end for s in g.segments] == [s.end for s in w.segments]
        assert [s.p_safe for s in g.segments] == pytest.approx([s.p_safe for s in w.segments], abs=1e-5)


def test_sigterm_drain_under_load_loses_nothing(start_server: Any) -> None:
    """SIGTERM on one of two replicas while requests stream: the requests it holds finish there, new ones
    go to the other, and its health says NOT_SERVING while its listener still answers."""
    a = start_server("--max-wait-ms", "300", "--grace-s", "20")  # holds work long enough to drain it
    b = start_server("--max-wait-ms", "5")
    seen: list[int | None] = []
    stop_polling = threading.Event()

    def poll_health() -> None:  # what a kubelet probe or a load balancer sees of a
        while not stop_polling.is_set() and a.proc.poll() is None:
            seen.append(a.health())

    async def main() -> tuple[list[StarScores], list[StarScores]]:
        async with AsyncScorerClient(b.address, CONFIG) as one:
            reference = await one.score_many(REQS)
        async with AsyncScorerClient([a.address, b.address], CONFIG) as client:
            tasks = [asyncio.ensure_future(client.score(r)) for r in REQS]
            while a.metric("star_queue_depth") < 1:  # a holds requests in its batcher
                await asyncio.sleep(0.005)
            poller = threading.Thread(target=poll_health)
            poller.start()
            a.signal(signal.SIGTERM)
            try:
                results = await asyncio.gather(*tasks)
            finally:
                stop_polling.set()
                poller.join(10)
            return reference, list(results)

    reference, results = asyncio.run(main())
    same_scores(results, reference)
    assert a.proc.wait(30) == 0
    assert '"drained": true' in a.log(), a.log()
    # health flipped to NOT_SERVING while the listener still answered, and never back
    assert NOT_SERVING in seen, seen
    flipped = seen.index(NOT_SERVING)
    assert SERVING not in seen[flipped:], seen
    assert None not in seen[: flipped + 1], seen


async def _chunks(text: str, size: int) -> AsyncIterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


def _holder(servers: list[Any]) -> Any:
    """The replica whose gauge counts the open session."""
    holders = [s for s in servers if s.metric("star_moderation_sessions") == 1]
    assert len(holders) == 1
    return holders[0]


@pytest.fixture(scope="module")
def moderation_reference(start_server: Any) -> list[Segment]:
    """The session's cuts and scores on a replica that stays up."""
    srv = start_server("--max-wait-ms", "2")

    async def main() -> list[Segment]:
        async with (
            AsyncScorerClient(srv.address, CONFIG) as client,
            client.moderate(Conversation.from_pair(PROMPT, ""), OPTIONS) as session,
        ):
            async for _ in session.guard(_chunks(RESPONSE, 7)):
                pass
            return list(session.segments)

    try:
        return asyncio.run(main())
    finally:
        srv.stop()


def _same_segments(got: list[Segment], want: list[Segment]) -> None:
    assert len(want) > 5
    assert [s.end for s in got] == [s.end for s in want]  # each cut once, none lost, none twice
    assert [s.p_safe for s in got] == pytest.approx([s.p_safe for s in want], abs=1e-5)


def test_moderation_session_lost_with_its_replica_then_reopened(
    start_server: Any, moderation_reference: list[Segment]
) -> None:
    servers = [start_server("--max-wait-ms", "2") for _ in range(2)]
    half = len(RESPONSE) // 2

    async def main() -> tuple[list[Segment], ModerationLost, int]:
        async with (
            AsyncScorerClient([s.address for s in servers], CONFIG) as client,
            client.moderate(Conversation.from_pair(PROMPT, ""), OPTIONS) as session,
        ):
            await session.push(RESPONSE[:half])
            while len(session.segments) < 3:  # some cuts delivered before the fault
                await asyncio.sleep(0.005)
            victim = _holder(servers)
            victim.kill()
            with pytest.raises(ModerationLost) as lost:
                await session.push(RESPONSE[half:])
                await session.close()
            before = len(session.segments)
            await session.reopen()
            if session.text != RESPONSE:
                await session.push(RESPONSE[len(session.text) :])
            await session.close()
            return list(session.segments), lost.value, before

    segments, lost, before = asyncio.run(main())
    assert lost.code is grpc.StatusCode.UNAVAILABLE
    assert "reopen()" in str(lost) and "went away" in str(lost)
    assert 3 <= before < len(moderation_reference)
    _same_segments(segments, moderation_reference)


def test_guard_reopens_by_itself_when_asked(start_server: Any, moderation_reference: list[Segment]) -> None:
    servers = [start_server("--max-wait-ms", "2") for _ in range(2)]
    killed = asyncio.Event()

    async def stream(session: Any) -> AsyncIterator[str]:
        async for chunk in _chunks(RESPONSE, 7):
            if not killed.is_set() and len(session.segments) >= 2:
                _holder(servers).kill()
                killed.set()
            yield chunk
            await asyncio.sleep(0.01)  # a model generating: time for cuts to come back

    async def main() -> tuple[list[Segment], str, int]:
        async with (
            AsyncScorerClient([s.address for s in servers], CONFIG) as client,
            client.moderate(Conversation.from_pair(PROMPT, ""), OPTIONS) as session,
        ):
            passed = "".join([c async for c in session.guard(stream(session), reopen=1)])
            return list(session.segments), passed, session.reopened

    t0 = time.monotonic()
    segments, passed, reopened = asyncio.run(main())
    assert passed == RESPONSE and reopened == 1
    _same_segments(segments, moderation_reference)
    assert time.monotonic() - t0 < 60
