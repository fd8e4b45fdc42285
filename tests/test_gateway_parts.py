"""The gateway's pure parts: the hold-back gate, SSE splitting, per-request options, the config's flags
and variables (no processes; the behaviour through real components is in tests/test_gateway.py)."""

from __future__ import annotations

import asyncio

import pytest

from star_contract.types import ModerateOptions, ModerationStop, Segment
from star_gateway.config import GatewayConfig, from_argv
from star_gateway.errors import GatewayError
from star_gateway.options import take_options
from star_gateway.release import ReleaseGate, words_end
from star_gateway.sse import Event, events


def test_words_end_counts_whitespace_separated_words() -> None:
    assert words_end("a bb  ccc d", 0, 2) == 4
    assert words_end("a bb  ccc d", 4, 1) == 9
    assert words_end("a bb", 0, 0) == 0 and words_end("a bb", 0, 5) == 4


def _ev(i: int) -> Event:
    return Event(f"data: {i}\n\n".encode(), str(i))


def test_the_gate_releases_only_scored_text_at_zero_and_n_words_at_n() -> None:
    gate = ReleaseGate(ModerateOptions(every=2), hold_back_words=0)
    for i, t in enumerate(["one", " two", " three", " four"]):
        gate.add(_ev(i), t)
    assert gate.release() == []
    gate.score(Segment(7, 0.9))  # "one two" scored safe
    assert [e.data for e in gate.release()] == ["0", "1"]
    wide = ReleaseGate(ModerateOptions(every=2), hold_back_words=1)
    for i, t in enumerate(["one", " two", " three"]):
        wide.add(_ev(i), t)
    assert [e.data for e in wide.release()] == ["0"]
    wide.score(Segment(7, 0.2))  # unsafe: the safe end stays 0
    assert wide.release() == []
    whole, straddling = wide.stop_release(ModerationStop(5, 7, 0.2))
    assert [e.data for e in whole] == [] and straddling is not None and straddling.start == 3


def test_the_gate_releases_everything_once_the_session_ends_or_unbounded() -> None:
    gate = ReleaseGate(ModerateOptions(), hold_back_words=0)
    gate.add(_ev(0), "x y z")
    gate.finish()
    assert len(gate.release()) == 1
    free = ReleaseGate(ModerateOptions(), hold_back_words=-1)
    free.add(_ev(0), "x y z")
    assert len(free.release()) == 1


def test_events_keep_the_exact_bytes_whatever_the_network_chunking() -> None:
    raw = b'data: {"a": 1}\n\n: comment\n\ndata: [DONE]\r\n\r\n'

    async def split(size: int) -> list[Event]:
        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(raw), size):
                yield raw[i : i + size]

        return [e async for e in events(chunks())]

    for size in (1, 3, len(raw)):
        got = asyncio.run(split(size))
        assert b"".join(e.raw for e in got) == raw
        assert got[0].json() == {"a": 1} and got[1].json() is None and got[2].done


def test_request_options_are_stripped_checked_and_honoured() -> None:
    config = GatewayConfig()
    body = {"model": "m", "star_moderation": {"every": 3, "hold_back_words": 2, "cut": "guard_tokens"}}
    opts = take_options(body, config)
    assert "star_moderation" not in body
    assert (
        opts.moderate.every == 3 and opts.hold_back_words == 2 and opts.moderate.kind.value == "guard_tokens"
    )
    for bad in ({"every": 0}, {"nope": 1}, {"enabled": "yes"}, {"cut": "lines"}, []):
        with pytest.raises(GatewayError) as err:
            take_options({"star_moderation": bad}, config)
        assert err.value.status == 400
    locked = GatewayConfig(request_overrides=False)
    body = {"star_moderation": {"enabled": False}}
    assert take_options(body, locked).enabled and body == {}


def test_config_reads_flags_then_variables_then_defaults() -> None:
    env = {"STAR_GATEWAY_EVERY": "7", "STAR_GATEWAY_FAIL_OPEN": "true", "STAR_GATEWAY_PORT": "9"}
    config = from_argv(["--port", "8081"], env)
    assert (config.every, config.fail_open, config.port) == (7, True, 8081)
    with pytest.raises(ValueError, match="--every"):
        from_argv(["--every", "0"], {})
    with pytest.raises(ValueError, match="STAR_GATEWAY_FAIL_OPEN"):
        from_argv([], {"STAR_GATEWAY_FAIL_OPEN": "maybe"})


def test_the_reaper_never_closes_a_session_a_call_is_using() -> None:
    """A guardrail call can wait on the scorer longer than the idle timeout (a loaded scorer): its
    session must stay open until the call ends, and count as idle only from then. The session here
    stands for a real Moderate session only in being closable (the reaper's one use of it)."""
    from star_gateway.guardrail_sessions import Entry, GuardrailSessions
    from star_gateway.metrics import GatewayMetrics

    class Closable:
        closed = False

        async def __aexit__(self, *exc: object) -> None:
            self.closed = True

    async def scenario() -> tuple[bool, bool, int]:
        sessions = GuardrailSessions(None, GatewayMetrics(), idle_s=1.0, max_sessions=4, wait_s=1.0)  # type: ignore[arg-type]
        busy, idle = Closable(), Closable()
        sessions.entries[("busy", 0)] = Entry(busy, ModerateOptions(), used=0.0)  # type: ignore[arg-type]
        sessions.entries[("idle", 0)] = Entry(idle, ModerateOptions(), used=0.0)  # type: ignore[arg-type]
        async with sessions.entries[("busy", 0)].lock:  # a call in progress
            reaped = await sessions.reap(now=100.0)
        return busy.closed, idle.closed, reaped

    assert asyncio.run(scenario()) == (False, True, 1)
