"""Moderation sessions as a server resource, against a real `star-scorer serve`: many sessions at once
beside Score traffic, a cache budget small enough that caches are evicted (scores stay exact), the idle
timeout, deadlines, and the session metrics."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scorer_server.engine.engine import StarEngine
from star_contract.convert import conversation_to_pb
from star_contract.types import Conversation, CutKind, CutSpec, ModerateOptions, ScoreRequest, Segment
from star_proto import scorer_pb2 as pb
from star_proto import scorer_pb2_grpc as pb_grpc

PROMPT = "How do I bake bread?"
WORDS = ["mix", "the", "flour,", "then", "knead", "it", "slowly", "and", "bake", "at", "220", "C."]
IDLE_S = 1.5


@pytest.fixture(scope="module")
def server(start_server: Any) -> Iterator[Any]:
    # 0.03 MiB holds about two sessions' caches on the tiny guard: with eight open, caches are evicted.
    srv = start_server("--session-cache-mib", "0.03", "--session-idle-s", str(IDLE_S), "--max-wait-ms", "2")
    yield srv
    srv.stop()


def metric(server: Any, name: str) -> float:
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def wait_metric(server: Any, name: str, value: float, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while metric(server, name) != value and time.monotonic() < end:
        time.sleep(0.05)
    assert metric(server, name) == value


def test_concurrent_sessions_beside_score_traffic_are_exact_with_evictions(
    server: Any, tiny_guard_dir: Path
) -> None:
    from star_client import AsyncScorerClient

    rng = random.Random(7)
    responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(8)]
    bulk = [ScoreRequest(Conversation.from_pair(PROMPT, r), CutSpec(CutKind.WORDS, 1)) for r in responses]

    async def session(client: AsyncScorerClient, text: str, seed: int) -> list[Segment]:
        r = random.Random(seed)
        async with client.moderate(
            Conversation.from_pair(PROMPT, ""), ModerateOptions(every=3, unsafe_below=0)
        ) as s:
            i = 0
            while i < len(text):
                n = r.randint(1, 9)
                await s.push(text[i : i + n])
                i += n
                await asyncio.sleep(r.random() * 0.01)
            await s.close()
        return s.segments

    async def run() -> tuple[list[list[Segment]], int]:
        async with AsyncScorerClient(server.address) as client:
            sessions = [session(client, text, k) for k, text in enumerate(responses)]
            scored = asyncio.gather(*[client.score_many(bulk, priority=0) for _ in range(3)])
            got = await asyncio.gather(*sessions, scored)
            return list(got[:-1]), sum(len(r.segments) for batch in got[-1] for r in batch)

    got, bulk_cuts = asyncio.run(run())
    engine = StarEngine.from_dir(tiny_guard_dir)
    want = engine.score(  # the per-cut oracle: one plain forward per cut, no cache shared with the server's
        [ScoreRequest(Conversation.from_pair(PROMPT, r), CutSpec(CutKind.WORDS, 3)) for r in responses],
        method="per_cut",
    )
    for segs, ref in zip(got, want, strict=True):
        assert [s.end for s in segs] == [s.end for s in ref.segments]
        assert max(abs(a.p_safe - b.p_safe) for a, b in zip(segs, ref.segments, strict=True)) <= 1e-5
    assert bulk_cuts == 3 * sum(len(r.split()) for r in responses)  # nothing of the Score traffic lost
    assert metric(server, "star_session_cache_evictions_total") > 0
    assert metric(server, "star_moderation_cut_seconds_count") >= sum(len(s) for s in got)
    wait_metric(server, "star_moderation_sessions", 0)


def open_msg() -> pb.ModerateRequest:
    conv = conversation_to_pb(Conversation.from_pair(PROMPT, ""))
    return pb.ModerateRequest(open=pb.ModerateOpen(conversation=conv, every=1, unsafe_below=0.0))


def stalled(release: threading.Event) -> Iterator[pb.ModerateRequest]:
    yield open_msg()
    yield pb.ModerateRequest(delta="mix the flour ")
    release.wait(30)


def test_idle_sessions_are_closed_and_their_slot_freed(server: Any) -> None:
    release = threading.Event()
    with grpc.insecure_channel(server.address) as ch:
        call = pb_grpc.ScorerServiceStub(ch).Moderate(stalled(release), timeout=30)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        release.set()
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--session-idle-s" in (err.value.details() or "")
    assert IDLE_S <= time.monotonic() - t0 < IDLE_S + 10
    wait_metric(server, "star_moderation_sessions", 0)


def test_a_caller_deadline_ends_the_session_on_the_server(server: Any) -> None:
    release = threading.Event()
    with grpc.insecure_channel(server.address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.ScorerServiceStub(ch).Moderate(stalled(release), timeout=0.5))
        release.set()
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_metric(server, "star_moderation_sessions", 0)


@pytest.mark.parametrize(("unsafe_below", "code"), [(0.0, 0), (1.0, 3)], ids=["passes", "stops"])
def test_moderate_cli_guards_stdin(server: Any, tiny_guard_dir: Path, unsafe_below: float, code: int) -> None:
    import json
    import subprocess
    import sys

    text = " ".join(WORDS * 3)
    cmd = [sys.executable, "-m", "star_client.cli", "moderate", "--target", server.address]
    cmd += ["--prompt", PROMPT, "--every", "2", "--unsafe-below", str(unsafe_below)]
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=60)
    events = [json.loads(line) for line in proc.stderr.decode().splitlines()]
    assert proc.returncode == code, proc.stderr.decode()
    # every reported cut is Score's cut every 2 words of the same text, with Score's P(safe) (the CLI
    # prints 6 decimals)
    want = (
        StarEngine.from_dir(tiny_guard_dir)
        .score([ScoreRequest(Conversation.from_pair(PROMPT, text), CutSpec(CutKind.WORDS, 2))])[0]
        .segments
    )
    cuts = [e for e in events if "cut" in e]
    if code == 0:
        assert proc.stdout.decode() == text and cuts == events
        assert [e["cut"] for e in cuts] == [w.end for w in want] and cuts[-1]["cut"] == len(text)
        assert [e["p_safe"] for e in cuts] == pytest.approx([w.p_safe for w in want], abs=2e-6)
    else:
        # every P(safe) is below 1.0: the first cut stops the text, at the start of the response
        stop = events[-1]["stop"]
        assert stop["cut"] == want[0].end and stop["offset"] == 0
        assert stop["p_safe"] == pytest.approx(want[0].p_safe, abs=2e-6)
        assert cuts == [{"cut": want[0].end, "p_safe": stop["p_safe"]}] and len(events) == 2


def test_moderate_cli_cuts_every_n_guard_tokens_under_the_published_convention(
    server: Any, tiny_guard_dir: Any
) -> None:
    """`--cut guard-tokens` and `--convention published` reach the session: the cuts are Score's
    guard-token cuts; published with guard-token cuts is refused in one line, exit 2."""
    import json
    import subprocess
    import sys

    from scorer_server.engine.engine import StarEngine
    from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest

    text = " ".join(WORDS * 2)
    cmd = [sys.executable, "-m", "star_client.cli", "moderate", "--target", server.address, "--quiet"]
    cmd += ["--prompt", PROMPT, "--every", "3", "--cut", "guard-tokens", "--unsafe-below", "0"]
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == b"", proc.stderr.decode()
    got = [json.loads(line)["cut"] for line in proc.stderr.decode().splitlines()]
    want = StarEngine.from_dir(tiny_guard_dir).plan(
        ScoreRequest(Conversation.from_pair(PROMPT, text), CutSpec(CutKind.GUARD_TOKENS, 3))
    )
    assert got == want.cuts
    proc = subprocess.run(
        [*cmd, "--convention", "published"], input=text.encode(), capture_output=True, timeout=60
    )
    assert proc.returncode == 2 and "between words" in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()


def test_star_scorer_moderate_is_an_alias_of_star_client_moderate_that_says_it_moved(server: Any) -> None:
    """`star-scorer moderate` (kept for one release) takes the same arguments and does what
    `star-client moderate` does: same stdout, same events, same exit code, after one line on stderr
    saying where the command went."""
    import json
    import subprocess
    import sys

    from scorer_server.cli import MODERATE_MOVED

    text = " ".join(WORDS * 2)
    args = ["moderate", "--target", server.address, "--prompt", PROMPT, "--every", "3", "--unsafe-below", "0"]
    new, old = (
        subprocess.run(
            [sys.executable, "-m", module, *args], input=text.encode(), capture_output=True, timeout=60
        )
        for module in ("star_client.cli", "scorer_server.cli")
    )
    assert new.returncode == old.returncode == 0, (new.stderr.decode(), old.stderr.decode())
    assert new.stdout == old.stdout == text.encode()
    notice, *events = old.stderr.decode().splitlines()
    assert notice == MODERATE_MOVED and "star-client moderate" in notice
    assert events == new.stderr.decode().splitlines()
    assert [json.loads(e)["cut"] for e in events][-1] == len(text)  # every cut's score, up to the end


def test_moderate_help_is_the_client_s_and_the_alias_shows_it_too() -> None:
    import subprocess
    import sys

    from scorer_server.cli import MODERATE_MOVED

    def run(module: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", module, "moderate", "--help"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    new, old = run("star_client.cli"), run("scorer_server.cli")
    assert new.returncode == old.returncode == 0 and new.stderr == ""
    assert new.stdout.startswith("usage: star-client moderate ")
    assert "some-generator | star-client moderate --target" in new.stdout
    for flag in ("--target", "--prompt", "--conversation", "--every", "--cut", "--unsafe-below"):
        assert flag in new.stdout
    for flag in ("--consecutive", "--temperature", "--convention", "--quiet"):
        assert flag in new.stdout
    assert old.stdout == new.stdout and old.stderr.splitlines() == [MODERATE_MOVED]
