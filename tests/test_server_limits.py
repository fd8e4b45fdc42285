"""Backpressure, deadlines and graceful shutdown against a server with a tiny queue and a long wait."""

from __future__ import annotations

import re
import signal
import threading
import time
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
    before = metric(server, "star_requests_total", 'code="RESOURCE_EXHAUSTED",method="ScoreStreamRequest"')
    cfg = ClientConfig(retries=50, backoff_s=0.05, backoff_max_s=0.3, deadline_s=60)
    with ScorerClient(server.address, cfg) as client:
        scores = client.score_many([REQ] * 12)
    assert len(scores) == 12 and all(len(s.segments) == 2 for s in scores)
    after = metric(server, "star_requests_total", 'code="RESOURCE_EXHAUSTED",method="ScoreStreamRequest"')
    assert after > before, "the client should have met RESOURCE_EXHAUSTED and retried through it"


def test_deadline_shorter_than_the_work_is_dropped_before_the_model(server: Any) -> None:
    time.sleep(0.5)
    forwards = metric(server, "star_guard_forwards_total")
    with grpc.insecure_channel(server.address) as ch, pytest.raises(grpc.RpcError) as err:
        list(pb_grpc.ScorerServiceStub(ch).Score(convert.score_request_to_pb(REQ), timeout=0.1))
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.8)  # longer than max-wait: the work would have run by now
    assert metric(server, "star_guard_forwards_total") == forwards
    assert metric(server, "star_queue_depth") == 0


def test_sigterm_drains_in_flight_work(server: Any) -> None:
    out, t = stream(server.address, 3, "d")
    time.sleep(0.15)  # queued, waiting for company (max wait 400 ms)
    server.signal(signal.SIGTERM)
    time.sleep(0.05)
    with grpc.insecure_channel(server.address) as ch:
        status = (
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
        )
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    t.join(30)
    assert sorted(r.request_id for r in out if r.HasField("result") and r.result.complete) == [
        "d0",
        "d1",
        "d2",
    ]
    assert server.proc.wait(30) == 0
