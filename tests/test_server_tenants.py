"""Tenants on a real `star-scorer serve` (one bearer token = one tenant): what one tenant can reach of
another's work, per-tenant limits against one flooding tenant, and the `tenant` metric label.

The server runs under tests/gated_scorer.py with a hold file: while the file exists no forward runs, so
admitted work stays pending (counted in the metrics) until the test lets it go. Every wait is on an event
(an answer, a metric), never on a clock. Limits: each tenant may hold one session and one request's
tokens (--tenant-max-sessions 1, --tenant-max-pending-tokens 1: its lone request is admitted, nothing
more), while the server-wide limits (--max-sessions 2, --max-queue 3) are small enough that, without
the per-tenant ones, one tenant alone would exhaust them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gated_scorer import HOLD_ENV

from star_contract import convert
from star_contract.types import Conversation, CutSpec, ModerateOptions, ScoreRequest
from star_proto import scorer_pb2 as pb
from star_proto import scorer_pb2_grpc as pb_grpc
from star_testing.scorer_process import ScorerProcess, free_port
from star_testing.waiting import wait_until

GATED = str(Path(__file__).with_name("gated_scorer.py"))
TOKENS = {"alpha": "alpha-SECRET-1", "beta": "beta-SECRET-2"}
BARE = "gamma-SECRET-3"
"""Listed without a name: its tenant is t- and 8 hex digits of its SHA-256."""
REQ = convert.score_request_to_pb(ScoreRequest(Conversation.from_pair("q", "one two three four"), CutSpec()))
OK, EXHAUSTED = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def server(tiny_guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    d = tmp_path_factory.mktemp("tenants")
    (d / "tokens").write_text("# tenants\n" + "".join(f"{n}:{t}\n" for n, t in TOKENS.items()) + BARE + "\n")
    args = [
        "--guard",
        str(tiny_guard_dir),
        "--preset",
        "llama-guard-3",
        "--auth-tokens-file",
        str(d / "tokens"),
    ]
    args += ["--tenant-max-sessions", "1", "--max-sessions", "2"]
    args += ["--tenant-max-pending-tokens", "1", "--max-queue", "3", "--max-wait-ms", "1"]
    srv = ScorerProcess(
        args, d / "server.log", free_port(), free_port(), env={HOLD_ENV: str(d / "hold")}, script=GATED
    )
    srv.hold = d / "hold"  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.hold.unlink(missing_ok=True)  # type: ignore[attr-defined]
    srv.stop()


def auth(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS.get(tenant, tenant)}"),)


class Stream:
    """One tenant's ScoreStream in a thread: `send` a message, `close` the sending side; `answers` fill
    as they arrive."""

    def __init__(self, address: str, tenant: str) -> None:
        self._out: queue.Queue[pb.ScoreStreamRequest | None] = queue.Queue()
        self.answers: list[pb.ScoreStreamResponse] = []
        self._channel = grpc.insecure_channel(address)
        stub = pb_grpc.ScorerServiceStub(self._channel)
        self._thread = threading.Thread(target=self._run, args=(stub, tenant))
        self._thread.start()

    def _run(self, stub: pb_grpc.ScorerServiceStub, tenant: str) -> None:
        requests = iter(self._out.get, None)
        self.answers.extend(stub.ScoreStream(requests, metadata=auth(tenant), timeout=60))

    def send(self, rid: str, cancel: bool = False) -> None:
        self._out.put(
            pb.ScoreStreamRequest(request_id=rid, cancel=True)
            if cancel
            else pb.ScoreStreamRequest(request_id=rid, request=REQ)
        )

    def close(self) -> list[pb.ScoreStreamResponse]:
        self._out.put(None)
        self._thread.join(60)
        self._channel.close()
        return self.answers

    def completed(self) -> list[str]:
        return [a.request_id for a in self.answers if a.HasField("result") and a.result.complete]

    def errors(self) -> list[pb.Error]:
        return [a.error for a in self.answers if a.HasField("error")]


def pending(server: Any, tenant: str) -> float:
    return server.metric("star_tenant_pending_tokens", tenant=tenant)


def rejected(server: Any, tenant: str, limit: str | None = None) -> float:
    labels = {"tenant": tenant} | ({"limit": limit} if limit else {})
    return server.metric("star_limit_rejections_total", **labels)


def test_a_tenant_cannot_cancel_another_s_request_and_ids_do_not_collide(server: Any) -> None:
    """alpha's request r1 is held pending; beta sends `cancel r1` and then its own r1 on its stream.
    beta's r1 is admitted (so its cancel was read before it), and once forwards run both r1s complete:
    the cancel did not reach alpha's request, and the same id on two tenants' streams is no conflict."""
    server.hold.touch()
    a, b = Stream(server.address, "alpha"), Stream(server.address, "beta")
    try:
        a.send("r1")
        wait_until(lambda: pending(server, "alpha") > 0, what="alpha's r1 admitted")
        b.send("r1", cancel=True)
        b.send("r1")
        wait_until(lambda: pending(server, "beta") > 0, what="beta's r1 admitted, after its cancel")
    finally:
        server.hold.unlink()
    b.close()
    wait_until(lambda: a.completed(), what="alpha's r1 scored")
    a.close()
    assert a.completed() == ["r1"] and a.errors() == []
    assert b.completed() == ["r1"] and b.errors() == []


def test_a_flooding_tenant_meets_its_own_limit_and_the_other_tenant_none(server: Any) -> None:
    """alpha sends 5 requests while forwards are held: its first is admitted, the other 4 are refused by
    alpha's own limit. Without that limit alpha would take all 3 places of --max-queue and beta's request
    would be refused; with it, beta's is admitted and both tenants' admitted work completes."""
    before = {t: rejected(server, t) for t in ("alpha", "beta")}
    server.hold.touch()
    a, b = Stream(server.address, "alpha"), Stream(server.address, "beta")
    try:
        for i in range(5):
            a.send(f"a{i}")
        wait_until(lambda: len(a.errors()) == 4, what="alpha's 4 refusals")
        b.send("b0")
        wait_until(lambda: pending(server, "beta") > 0 or b.errors(), what="beta's request admitted")
        assert b.errors() == []
    finally:
        server.hold.unlink()
    a.close(), b.close()
    assert len(a.completed()) == 1 and b.completed() == ["b0"] and b.errors() == []
    for err in a.errors():
        assert err.code == EXHAUSTED.value[0] and err.retry_after_seconds > 0
        assert "tenant alpha holds" in err.message and "--tenant-max-pending-tokens" in err.message
    assert rejected(server, "alpha", "tenant_max_pending_tokens") - before["alpha"] == 4
    assert rejected(server, "alpha") - before["alpha"] == 4 and rejected(server, "beta") == before["beta"]
    assert server.metric("star_requests_total", tenant="alpha", code="RESOURCE_EXHAUSTED") >= 4
    assert server.metric("star_requests_total", tenant="beta", code="RESOURCE_EXHAUSTED") == 0


class Session:
    """One tenant's Moderate call; `opened()` is True once the server accepted the `open`."""

    def __init__(self, address: str, tenant: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._out: queue.Queue[pb.ModerateRequest | None] = queue.Queue()
        never_stops = ModerateOptions(every=1, unsafe_below=0.0)
        opening = convert.moderate_open_to_pb(Conversation.from_pair("q", ""), never_stops)
        self._out.put(pb.ModerateRequest(open=opening))
        stub = pb_grpc.ScorerServiceStub(self._channel)
        self.call = stub.Moderate(iter(self._out.get, None), metadata=auth(tenant), timeout=60)

    def opened(self) -> bool:
        return dict(self.call.initial_metadata()).get(convert.SESSION_OPEN_KEY) == "1"

    def push(self, delta: str) -> pb.ModerateResponse:
        self._out.put(pb.ModerateRequest(delta=delta))
        return next(self.call)

    def close(self) -> None:
        self._out.put(None)
        for _ in self.call:
            pass
        self._channel.close()


def test_a_tenant_at_its_session_limit_leaves_the_server_s_sessions_to_others(server: Any) -> None:
    """--max-sessions 2: alpha's second session would take the last one and beta would be refused;
    alpha's limit of 1 refuses alpha's second instead, and beta's session opens and scores."""
    first = Session(server.address, "alpha")
    assert first.opened()
    second = Session(server.address, "alpha")
    with pytest.raises(grpc.RpcError) as err:
        next(second.call)
    assert err.value.code() is EXHAUSTED and "--tenant-max-sessions" in (err.value.details() or "")
    assert dict(err.value.trailing_metadata() or ()).get("retry-after-ms")
    other = Session(server.address, "beta")
    assert other.opened()
    assert other.push("Mix the flour.").HasField("segment")
    assert server.metric("star_tenant_moderation_sessions", tenant="alpha") == 1
    assert server.metric("star_tenant_moderation_sessions", tenant="beta") == 1
    assert rejected(server, "alpha", "tenant_max_sessions") == 1 and rejected(server, "beta") == 0
    first.close(), other.close()
    wait_until(lambda: server.metric("star_moderation_sessions") == 0, what="sessions closed")
    assert server.metric("star_tenant_moderation_sessions", tenant="alpha") == 0


def test_metrics_label_tenants_by_configured_names_only_and_never_show_a_token(server: Any) -> None:
    """Each caller's calls are counted under its own tenant (also when tenants call at once); a bare
    token's tenant is its derived name; a refused caller is `unauthenticated`, whatever it sent."""
    from scorer_server.tenants import derived_name

    gamma = derived_name(BARE)

    def info(token_of: str, n: int) -> None:
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.ScorerServiceStub(ch)
            for _ in range(n):
                stub.GetInfo(pb.GetInfoRequest(), metadata=auth(token_of), timeout=30)

    before = {
        t: server.metric("star_requests_total", method="GetInfo", tenant=t) for t in ("alpha", "beta", gamma)
    }
    threads = [threading.Thread(target=info, args=a) for a in (("alpha", 7), ("beta", 5), (BARE, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    counts = {t: server.metric("star_requests_total", method="GetInfo", tenant=t) - before[t] for t in before}
    assert counts == {"alpha": 7, "beta": 5, gamma: 3}
    with pytest.raises(grpc.RpcError) as err:
        info("made-up-label", 1)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert server.metric("star_requests_total", code="UNAUTHENTICATED", tenant="unauthenticated") >= 1
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    labels = {
        s.labels["tenant"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if "tenant" in s.labels
    }
    assert labels <= {"alpha", "beta", gamma, "anonymous", "unauthenticated"}, labels
    assert {"alpha", "beta", gamma, "unauthenticated"} <= labels
    for secret in [*TOKENS.values(), BARE, "made-up-label"]:
        assert secret not in text and secret not in server.log_path.read_text()
