"""star.v1 Moderate against a real `star-scorer serve`: scores as deltas arrive, the stop rule, limits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scorer_server.engine.engine import StarEngine
from star_contract.convert import conversation_to_pb
from star_contract.types import Convention, Conversation, CutKind, CutSpec, ScoreRequest
from star_proto import scorer_pb2 as pb
from star_proto import scorer_pb2_grpc as pb_grpc

PROMPT = "How do I bake bread?"
RESPONSE = "Sure,  first mix the flour\n\nthen knead it and bake it at 220 C until it is done."


def open_msg(every: int = 2, **options: Any) -> pb.ModerateRequest:
    conv = conversation_to_pb(Conversation.from_pair(PROMPT, ""))
    return pb.ModerateRequest(open=pb.ModerateOpen(conversation=conv, every=every, **options))


def deltas(text: str, size: int) -> list[pb.ModerateRequest]:
    return [pb.ModerateRequest(delta=text[i : i + size]) for i in range(0, len(text), size)]


@pytest.fixture(scope="module")
def server(start_server: Any) -> Iterator[Any]:
    srv = start_server("--max-sessions", "1", "--max-wait-ms", "2")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server: Any) -> Iterator[pb_grpc.ScorerServiceStub]:
    with grpc.insecure_channel(server.address) as ch:
        yield pb_grpc.ScorerServiceStub(ch)


def test_scores_arrive_per_cut_and_equal_per_cut_scoring(stub: Any, tiny_guard_dir: Path) -> None:
    msgs = [open_msg(2, unsafe_below=0.0), *deltas(RESPONSE, 3), pb.ModerateRequest(close=pb.ModerateClose())]
    replies = list(stub.Moderate(iter(msgs), timeout=60))
    assert replies[-1].complete and not any(r.HasField("stop") for r in replies)
    got = [r.segment for r in replies if r.HasField("segment")]
    engine = StarEngine.from_dir(tiny_guard_dir)
    want = engine.score([ScoreRequest(Conversation.from_pair(PROMPT, RESPONSE), CutSpec(CutKind.WORDS, 2))])[
        0
    ]
    assert [s.end for s in got] == [s.end for s in want.segments]
    assert [s.p_safe for s in got] == pytest.approx([s.p_safe for s in want.segments], abs=1e-5)


def test_guard_token_cuts_equal_per_cut_scoring(stub: Any, tiny_guard_dir: Path) -> None:
    """CUT_KIND_GUARD_TOKENS: a cut after every N of the guard's tokens of the response, the same cuts
    and scores as a Score request with that spacing, though deltas split tokens (1-character deltas)."""
    open_ = open_msg(3, unsafe_below=0.0, cut_kind=pb.CUT_KIND_GUARD_TOKENS)
    replies = list(stub.Moderate(iter([open_, *deltas(RESPONSE, 1)]), timeout=60))
    got = [r.segment for r in replies if r.HasField("segment")]
    engine = StarEngine.from_dir(tiny_guard_dir)
    conv = Conversation.from_pair(PROMPT, RESPONSE)
    want = engine.score([ScoreRequest(conv, CutSpec(CutKind.GUARD_TOKENS, 3))])[0].segments
    assert len(want) > 5 and [s.end for s in got] == [s.end for s in want]
    assert [s.p_safe for s in got] == pytest.approx([s.p_safe for s in want], abs=1e-5)


def test_the_published_convention_over_the_wire(stub: Any, tiny_guard_dir: Path) -> None:
    """STAR_CONVENTION_PUBLISHED on Moderate gives Score's published scores; with guard-token cuts
    it is refused (it cuts between words)."""
    open_ = open_msg(2, unsafe_below=0.0, convention=pb.STAR_CONVENTION_PUBLISHED)
    replies = list(stub.Moderate(iter([open_, *deltas(RESPONSE, 5)]), timeout=60))
    got = [r.segment for r in replies if r.HasField("segment")]
    engine = StarEngine.from_dir(tiny_guard_dir)
    conv = Conversation.from_pair(PROMPT, RESPONSE)
    want = engine.score([ScoreRequest(conv, CutSpec(CutKind.WORDS, 2), convention=Convention.PUBLISHED)])
    assert [s.end for s in got] == [s.end for s in want[0].segments]
    assert [s.p_safe for s in got] == pytest.approx([s.p_safe for s in want[0].segments], abs=1e-4)
    bad = open_msg(2, cut_kind=pb.CUT_KIND_GUARD_TOKENS, convention=pb.STAR_CONVENTION_PUBLISHED)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Moderate(iter([bad]), timeout=30))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "between words" in (
        err.value.details() or ""
    )


@pytest.mark.parametrize(
    ("delta", "every", "says"),
    [("x" * 300_000, 5, "--max-conversation-tokens"), ("a " * 600, 1, "over the limit of 512")],
    ids=["delta-longer-than-any-prompt", "one-delta-of-600-cuts"],
)
def test_hostile_deltas_are_refused_before_the_work(stub: Any, delta: str, every: int, says: str) -> None:
    """A delta no prompt within the token limit can hold is refused before it is tokenised; one that
    would queue more cuts than a Score request may make (--max-cuts) before any is computed. The
    server goes on serving."""
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Moderate(iter([open_msg(every), pb.ModerateRequest(delta=delta)]), timeout=60))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and says in (err.value.details() or "")
    assert time.monotonic() - t0 < 5
    replies = list(stub.Moderate(iter([open_msg(2, unsafe_below=0.0), *deltas(RESPONSE, 9)]), timeout=30))
    assert replies[-1].complete and replies[-2].segment.end == len(RESPONSE)


def test_offset_cuts_are_refused_with_the_kinds_that_work(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Moderate(iter([open_msg(2, cut_kind=pb.CUT_KIND_OFFSETS)]), timeout=30))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "CUT_KIND_GUARD_TOKENS" in (err.value.details() or "")


def test_stop_rule_ends_the_stream_where_the_unsafe_stretch_began(stub: Any) -> None:
    # Every P(safe) is below 1.0, so every cut is unsafe: the rule fires on the second cut and the
    # stretch began at 0; nothing after the stop is scored.
    msgs = [open_msg(2, unsafe_below=1.0, consecutive=2), *deltas(RESPONSE, 4)]
    replies = list(stub.Moderate(iter(msgs), timeout=60))
    segments = [r.segment for r in replies if r.HasField("segment")]
    assert len(segments) == 2 and replies[-1].HasField("stop") and replies[-1].complete
    assert (replies[-1].stop.offset, replies[-1].stop.cut) == (0, segments[1].end)


def test_a_stream_ended_without_close_still_scores_its_last_cut(stub: Any) -> None:
    replies = list(stub.Moderate(iter([open_msg(50, unsafe_below=0.0), *deltas(RESPONSE, 7)]), timeout=60))
    assert [r.segment.end for r in replies if r.HasField("segment")] == [len(RESPONSE)]
    assert replies[-1].complete


@pytest.mark.parametrize(
    "first",
    [pb.ModerateRequest(delta="hello"), pb.ModerateRequest(open=pb.ModerateOpen(every=2))],
    ids=["delta-before-open", "open-without-conversation"],
)
def test_bad_sessions_are_invalid_argument(stub: Any, first: pb.ModerateRequest) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Moderate(iter([first, *deltas(RESPONSE, 5)]), timeout=30))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_sessions_over_the_limit_get_resource_exhausted_and_the_first_goes_on(stub: Any) -> None:
    release = threading.Event()

    def held() -> Iterator[pb.ModerateRequest]:
        yield open_msg(1, unsafe_below=0.0)
        yield pb.ModerateRequest(delta="Hello there ")
        release.wait(30)
        yield pb.ModerateRequest(delta="friend")

    first = stub.Moderate(held(), timeout=60)
    assert next(first).segment.end == len("Hello")  # the session is open on the server
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Moderate(iter([open_msg(), *deltas(RESPONSE, 5)]), timeout=30))
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    rest = list(first)
    assert [r.segment.end for r in rest if r.HasField("segment")] == [
        len("Hello there"),
        len("Hello there friend"),
    ]
    # The slot is free again once the first session ended.
    assert list(stub.Moderate(iter([open_msg(), *deltas(RESPONSE, 9)]), timeout=30))[-1].complete


def test_client_guards_a_stream_of_chunks_and_stops_it(server: Any) -> None:
    from star_client import AsyncScorerClient
    from star_contract.types import ModerateOptions

    async def chunks() -> Any:
        for i in range(0, len(RESPONSE), 4):
            await asyncio.sleep(0.05)  # a generation's pace: the scores keep up
            yield RESPONSE[i : i + 4]

    async def run(options: ModerateOptions) -> tuple[str, Any, list[Any]]:
        async with AsyncScorerClient(server.address) as client:
            async with client.moderate(Conversation.from_pair(PROMPT, ""), options) as session:
                passed = "".join([c async for c in session.guard(chunks())])
            return passed, session.stop, session.segments

    passed, stop, segments = asyncio.run(run(ModerateOptions(every=2, unsafe_below=0.0)))
    assert passed == RESPONSE and stop is None and segments[-1].end == len(RESPONSE)
    passed, stop, segments = asyncio.run(run(ModerateOptions(every=2, unsafe_below=1.0)))
    assert stop is not None and stop.offset == 0 and stop.cut == segments[0].end
    assert len(passed) < len(RESPONSE)  # the rest of the answer was never passed on


def test_a_session_the_server_refused_raises_its_status_not_a_transport_error(server: Any) -> None:
    """The server refuses the open (published convention with guard-token cuts) while the caller goes
    on pushing: whichever write first meets the ended stream, the caller gets the server's
    INVALID_ARGUMENT and its message (a failed write used to surface as INTERNAL)."""
    from star_client import AsyncScorerClient
    from star_contract.types import ModerateOptions

    options = ModerateOptions(every=2, kind=CutKind.GUARD_TOKENS, convention=Convention.PUBLISHED)

    async def run() -> None:
        conv = Conversation.from_pair(PROMPT, "")
        async with AsyncScorerClient(server.address) as client, client.moderate(conv, options) as session:
            for _ in range(300):
                await session.push("word ")
            await session.close()

    with pytest.raises(grpc.RpcError) as err:
        asyncio.run(run())
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "between words" in (
        err.value.details() or ""
    )


def test_stop_rule_names_the_end_of_the_last_safe_cut() -> None:
    """StopRule fires at the `consecutive`-th unsafe cut in a row (P(safe) below `unsafe_below`; at it is
    safe); a safe cut in between resets the run; the stop's offset is the end of the last safe cut, or 0
    when none came before."""
    from star_contract.stop_rule import StopRule
    from star_contract.types import ModerateOptions, ModerationStop, Segment

    rule = StopRule(ModerateOptions(unsafe_below=0.5, consecutive=2))
    # safe, unsafe, safe again (the run restarts), unsafe, unsafe: fires at 50, the stretch began at 30
    seen = [
        rule.observe(Segment(end, p)) for end, p in [(10, 0.9), (20, 0.2), (30, 0.7), (40, 0.1), (50, 0.3)]
    ]
    assert seen == [None, None, None, None, ModerationStop(offset=30, cut=50, p_safe=0.3)]
    rule = StopRule(ModerateOptions(unsafe_below=0.5, consecutive=1))
    assert rule.observe(Segment(5, 0.5)) is None  # exactly at the threshold: safe
    assert rule.observe(Segment(9, 0.49)) == ModerationStop(offset=5, cut=9, p_safe=0.49)
    first = StopRule(ModerateOptions(unsafe_below=0.5, consecutive=1)).observe(Segment(4, 0.1))
    assert first == ModerationStop(offset=0, cut=4, p_safe=0.1)  # nothing safe before it


def test_a_session_may_outlive_the_clients_deadline(server: Any) -> None:
    """`deadline_s` bounds opening a session, not its life: a session moderating a slow generation for
    longer than the deadline goes on and completes (the whole stream used to carry the deadline, so a
    gateway's session died with DEADLINE_EXCEEDED after deadline_s of streaming)."""
    from star_client import AsyncScorerClient, ClientConfig
    from star_contract.types import ModerateOptions

    async def run() -> Any:
        config = ClientConfig(deadline_s=1.0)
        async with AsyncScorerClient(server.address, config=config) as client:
            conv = Conversation.from_pair(PROMPT, "")
            async with client.moderate(conv, ModerateOptions(every=2, unsafe_below=0.0)) as session:
                half = len(RESPONSE) // 2
                await session.push(RESPONSE[:half])
                await asyncio.sleep(2.5)  # a slow generation: past the client's deadline
                await session.push(RESPONSE[half:])
                await session.close()
            return session

    session = asyncio.run(run())
    assert session.stop is None and session.segments[-1].end == len(RESPONSE)
