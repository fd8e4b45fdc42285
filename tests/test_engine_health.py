"""Health of a scorer on a remote engine follows the engine: NOT_SERVING while no engine answers,
SERVING again once one does, without a restart of ours.

The engine here is a stand-in HTTP server process (Python's http.server) on the engine port: what the
scorer's watch needs from a real vLLM or TGI is only that something answers GET /health, and that a
killed process stops answering. The real-vLLM contract tests (issue 12) cover scoring against it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from star_testing.scorer_process import free_port


def engine(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    return proc


def status(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return (
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        )


def wait_for(address: str, want: int, timeout_s: float = 15.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if status(address) == want:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"health did not become {want} within {timeout_s} s")


def test_health_follows_the_remote_engine(start_server: Any) -> None:
    port = free_port()
    eng = engine(port)
    try:
        srv = start_server(
            "--backend",
            "vllm",
            "--remote-url",
            f"http://127.0.0.1:{port}",
            "--remote-health-interval-s",
            "0.3",
        )
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        assert status(srv.address) == serving
        eng.kill()
        eng.wait(10)
        assert wait_for(srv.address, not_serving) < 10
        eng = engine(port)  # the engine comes back on its port
        assert wait_for(srv.address, serving) < 10
        srv.stop()
    finally:
        eng.kill()
        eng.wait(10)
