"""Backpressure, deadlines and graceful shutdown against a server with a tiny queue and a long wait."""

from __future__ import annotations

import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from star_client import ClientConfig, ScorerClient
from star_contract import convert
from star_contract.types import Conversation, CutSpec, ScoreRequest
from star_proto import scorer_pb2 as pb
from star_proto import scorer_pb2_grpc as pb_grpc
from star_testing.waiting import wait_until

REQ = ScoreRequest(Conversation.from_pair("q", "one two three four five six"), CutSpec())


@pytest.fixture(scope="module")
def server(start_server: Any) -> Iterator[Any]:
    srv = start_server("--max-queue", "3", "--max-wait-ms", "400", "--grace-s", "20")
    yield srv
    srv.stop()


def metric(server: Any, name: str, labels: str = "") -> float:
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    pattern = re.escape(name) + (r"\{" + labels + r"\}" if labels else "") + r" ([0-9.e+]+)"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


def stream(address: str, n: int, prefix: str) -> tuple[list[pb.ScoreStreamResponse], threading.Thread]:
    """Send n requests on one ScoreStream in a thread; the list fills with the answers."""
    out: list[pb.ScoreStreamResponse] = []
    msg = convert.score_request_to_pb(REQ)

    def run() -> None:
        with grpc.insecure_channel(address) as ch:
            reqs = [pb.ScoreStreamRequest(request_id=f"{prefix}{i}", request=msg) for i in range(n)]
            out.extend(pb_grpc.ScorerServiceStub(ch).ScoreStream(iter(reqs), timeout=60))

    t = threading.Thread(target=run)
    t.start()
    return out, t


def test_full_queue_answers_resource_exhausted_and_the_client_retries(server: Any) -> None:
    out, t = stream(server.address, 10, "r")
    t.join(60)
    errors = [r.error for r in out if r.HasField("error")]
    done = [r for r in out if r.HasField("result") and r.result.complete]
    assert errors and all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for e in errors)
    assert all(e.retry_after_seconds > 0 for e in errors)
    assert len(done) + len(errors) == 10 and len(done) >= 3
    exhausted = {"code": "RESOURCE_EXHAUSTED", "method": "ScoreStreamRequest", "tenant": "anonymous"}
    before = server.metric("star_requests_total", **exhausted)
    cfg = ClientConfig(retries=50, backoff_s=0.05, backoff_max_s=0.3, deadline_s=60)
    with ScorerClient(server.address, cfg) as client:
        scores = client.score_many([REQ] * 12)
    assert len(scores) == 12 and all(len(s.segments) == 2 for s in scores)
    after = server.metric("star_requests_total", **exhausted)
    assert after > before, "the client should have met RESOURCE_EXHAUSTED and retried through it"


def test_deadline_shorter_than_the_work_is_dropped_before_the_model(server: Any) -> None:
    """A request whose deadline passes while it waits in the queue (max wait 400 ms, deadline 100 ms)
    never reaches the model: the forwards and rows after it are exactly those of the request behind it."""

    def depth_is_zero() -> bool:
        return metric(server, "star_queue_depth") == 0

    wait_until(depth_is_zero, what="the previous test's work to leave the queue")
    msg = convert.score_request_to_pb(REQ)
    with grpc.insecure_channel(server.address) as ch:
        score = pb_grpc.ScorerServiceStub(ch).Score
        # what one such request costs the model, measured alone
        forwards, rows = metric(server, "star_guard_forwards_total"), metric(server, "star_batch_size_sum")
        list(score(msg, timeout=30))
        one_forwards = metric(server, "star_guard_forwards_total") - forwards
        one_rows = metric(server, "star_batch_size_sum") - rows
        assert one_forwards >= 1 and one_rows >= 1
        forwards, rows = metric(server, "star_guard_forwards_total"), metric(server, "star_batch_size_sum")
        with pytest.raises(grpc.RpcError) as err:
            list(score(msg, timeout=0.1))
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # the expired request leaves the queue (an event on the gauge, not a clock) ...
        wait_until(depth_is_zero, what="the expired request to leave the queue")
        # ... and a request sent behind it costs what it costs alone: had the expired one stayed queued,
        # it would have shared this request's forward (more rows) or had its own (more forwards)
        list(score(msg, timeout=30))
    assert metric(server, "star_guard_forwards_total") - forwards == one_forwards
    assert metric(server, "star_batch_size_sum") - rows == one_rows
    assert metric(server, "star_queue_depth") == 0


def test_sigterm_drains_in_flight_work(start_server: Any) -> None:
    """Queued work is finished after SIGTERM, and health says NOT_SERVING while it is. The server is
    its own, with queued requests waiting 3 s for company: they are surely still queued at SIGTERM and
    still unanswered when health flips (waited on through the queue gauge and health, not sleeps)."""
    srv = start_server("--max-wait-ms", "3000", "--grace-s", "20")
    out, t = stream(srv.address, 3, "d")
    wait_until(lambda: metric(srv, "star_queue_depth") == 3, what="three queued requests")
    srv.signal(signal.SIGTERM)

    def health() -> int:
        with grpc.insecure_channel(srv.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status)

    wait_until(lambda: health() == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
    assert out == [], "the queued requests should still be in flight when health flips"
    t.join(30)
    assert sorted(r.request_id for r in out if r.HasField("result") and r.result.complete) == [
        "d0",
        "d1",
        "d2",
    ]
    assert srv.proc.wait(30) == 0
