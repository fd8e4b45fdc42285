"""star-gateway over two scorer replicas, one of which is SIGKILLed while it holds a streaming session
mid-answer. Real processes on loopback: two `star-scorer serve` on the shipped toy guard, the finetuned
toy chat model behind star_testing's OpenAI-compatible server (slowed to 40 ms a token so the answer is
still streaming when the kill lands), two gateways over both replicas (`--reopen 1`, the default, and
`--reopen 0`), and the real `openai` client.

The tests run in order and share the replicas: the first kills one of them, the second the other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from star_client import ScorerClient
from star_contract.stop_rule import first_stop
from star_contract.types import Conversation, CutSpec, ModerateOptions, ModerationStop, ScoreRequest
from star_testing.http_process import HttpProcess
from star_testing.scorer_process import ScorerProcess, free_port
from tests.gateway_parts import (
    API_KEY,
    BENIGN,
    HARMFUL,
    MODEL,
    gateway_process,
    start_scorer,
    upstream_process,
)

KILL_WAIT_S = 10.0
"""The longest a client may wait for the end of its stream after the kill (it must never hang)."""


@dataclass
class Fleet:
    replicas: list[ScorerProcess]
    upstream: HttpProcess
    reopening: HttpProcess
    """The gateway with --reopen 1."""
    closing: HttpProcess
    """The gateway with --reopen 0."""

    def live(self) -> list[ScorerProcess]:
        return [r for r in self.replicas if r.proc is not None and r.proc.poll() is None]

    def holder(self) -> ScorerProcess:
        """The live replica holding the one open Moderate session."""
        held = [r for r in self.live() if r.metric("star_moderation_sessions") == 1]
        assert len(held) == 1, [r.metric("star_moderation_sessions") for r in self.live()]
        return held[0]

    def direct(self, prompt: str) -> str:
        client = openai.OpenAI(base_url=self.upstream.url + "/v1", api_key=API_KEY, max_retries=0)
        got = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
        return got.choices[0].message.content or ""

    def stop_of(self, prompt: str, answer: str) -> ModerationStop | None:
        """Score's stop on the whole answer, from a live replica."""
        with ScorerClient(self.live()[0].address) as client:
            scores = client.score(ScoreRequest(Conversation.from_pair(prompt, answer), CutSpec()))
        return first_stop(scores.segments, ModerateOptions())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, harmful_chat_dir: Path) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("gateway-replicas")
    replicas = [start_scorer(logs), start_scorer(logs)]
    addresses = ",".join(r.address for r in replicas)
    upstream = upstream_process(harmful_chat_dir, logs, token_delay_ms=40)
    reopening = gateway_process(upstream.url, addresses, logs, "--reopen", "1").launch()
    closing = gateway_process(upstream.url, addresses, logs, "--reopen", "0").launch()
    started = [reopening, closing]
    try:
        started.append(upstream.launch())
        for proc in started:
            proc.wait()
        for replica in replicas:
            replica.wait_serving()
        yield Fleet(replicas, upstream, reopening, closing)
    finally:
        for proc in started:
            proc.stop()
        for replica in replicas:
            replica.stop(10)


@dataclass
class Streamed:
    text: str
    last: Any
    """The last chunk (an openai ChatCompletionChunk)."""
    after_kill_s: float
    """From the kill to the end of the stream (0 without a kill)."""


def stream(gateway: HttpProcess, prompt: str, kill: Fleet | None = None) -> Streamed:
    """Stream `prompt` through `gateway`; with `kill`, SIGKILL the replica holding the session as soon
    as the first text chunk has arrived (hold-back 0: the session has scored a cut by then)."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    text, last, killed_at = "", None, None
    for chunk in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
    ):
        last = chunk
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        if kill is not None and killed_at is None and text:
            kill.holder().kill()
            killed_at = time.monotonic()
    assert last is not None
    return Streamed(text, last, 0.0 if killed_at is None else time.monotonic() - killed_at)


def info(chunk: Any) -> dict[str, Any]:
    return dict((chunk.model_extra or {}).get("star_moderation") or {})


def test_with_reopen_the_stream_survives_its_replica(fleet: Fleet) -> None:
    """The replica holding the session dies mid-answer: the gateway re-opens the session on the other
    replica, replaying the text pushed so far, and the stream ends exactly as with no failure: the
    same text, the same stop (offset, cut and P(safe) as Score gives on the whole answer). New sessions
    then go to the live replica."""
    full = fleet.direct(HARMFUL)
    want = fleet.stop_of(HARMFUL, full)
    assert want is not None and 0 < want.offset < len(full), full
    calm = stream(fleet.reopening, HARMFUL)  # both replicas up: the single-replica answer
    assert calm.text == full[: want.offset] and info(calm.last)["offset"] == want.offset
    trunks = {r.address: r.metric("star_session_trunk_tokens_total") for r in fleet.replicas}
    got = stream(fleet.reopening, HARMFUL, kill=fleet)
    assert len(fleet.live()) == 1
    survivor = fleet.live()[0]
    assert survivor.metric("star_session_trunk_tokens_total") > trunks[survivor.address], "not re-opened"
    assert got.text == calm.text
    assert got.last.choices[0].finish_reason == "content_filter"
    assert info(got.last) == info(calm.last)
    assert got.after_kill_s < KILL_WAIT_S
    before = survivor.metric("star_session_trunk_tokens_total")
    benign = stream(fleet.reopening, BENIGN)
    assert benign.text == fleet.direct(BENIGN) and benign.last.choices[0].finish_reason == "stop"
    assert survivor.metric("star_session_trunk_tokens_total") > before


def test_without_reopen_the_stream_ends_unavailable_never_hangs(fleet: Fleet) -> None:
    """With --reopen 0 (fail closed, the default), the replica holding the session dies mid-answer: the
    client gets what was scored safe so far, then a last chunk with finish_reason content_filter and
    `star_moderation.unavailable`, within a bounded time of the kill."""
    full = fleet.direct(BENIGN)
    got = stream(fleet.closing, BENIGN, kill=fleet)
    assert got.last.choices[0].finish_reason == "content_filter"
    assert info(got.last).get("unavailable") is True, info(got.last)
    assert full.startswith(got.text) and len(got.text) < len(full)
    assert got.after_kill_s < KILL_WAIT_S


def test_a_guardrail_check_whose_replica_died_fails_closed_not_none(
    tmp_path: Path, tiny_guard_dir: Path
) -> None:
    """LiteLLM's guardrail endpoint: the replica holding a response's session dies while a check waits
    for its cuts' scores (the server holds its forwards: tests/gated_scorer.py). The check must fail (the
    endpoint then answers BLOCKED, fail closed), never answer NONE for text nobody scored: a lost stream
    used to end the wait as if every cut had come."""
    from gated_scorer import HOLD_ENV

    from star_client import AsyncScorerClient
    from star_gateway.guardrail_sessions import GuardrailSessions
    from star_gateway.metrics import GatewayMetrics
    from star_testing.waiting import wait_until

    hold = tmp_path / "hold"
    args = ["--guard", str(tiny_guard_dir), "--preset", "llama-guard-3", "--no-warmup"]
    script = str(Path(__file__).with_name("gated_scorer.py"))
    server = ScorerProcess(
        args, tmp_path / "server.log", free_port(), free_port(), env={HOLD_ENV: str(hold)}, script=script
    ).start()
    words = [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
    ]

    async def run() -> tuple[Any, BaseException | None]:
        async with AsyncScorerClient(server.address) as client:
            sessions = GuardrailSessions(client, GatewayMetrics(), idle_s=60, max_sessions=4, wait_s=30)
            conv = Conversation.from_pair("tell me a story", "")
            options = ModerateOptions(every=2, unsafe_below=0.0)
            first = await sessions.check(("call", 0), conv, options, " ".join(words[:5]))
            hold.touch()  # the next cuts are admitted and held, unscored
            full = " ".join(words)
            check = asyncio.ensure_future(sessions.check(("call", 0), conv, options, full))
            entry = sessions.entries[("call", 0)]
            await asyncio.to_thread(wait_until, lambda: entry.session.text == full, 20)
            server.proc.kill()  # while the check waits for the held cuts
            try:
                await asyncio.wait_for(check, 30)
            except BaseException as exc:  # what the endpoint turns into BLOCKED (or a test failure)
                return first, exc
            finally:
                await sessions.close()
            return first, None

    try:
        first, failure = asyncio.run(run())
    finally:
        hold.unlink(missing_ok=True)
        server.stop(10)
    assert first is None  # scored, no stop (unsafe_below 0)
    assert failure is not None and not isinstance(failure, (AssertionError, TimeoutError)), failure
