"""Shared fixtures: a tiny guard built once per session, and real scorer servers in subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-Guard-shaped guard directory, built once per test session."""
    return save_tiny_guard(tmp_path_factory.mktemp("guard") / "tiny-llama-guard", TinyGuardSpec())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A `star-scorer serve` subprocess on 127.0.0.1."""

    args: list[str]
    port: int
    metrics_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(
        self, timeout: float = 90.0, credentials: grpc.ChannelCredentials | None = None
    ) -> ServerProcess:
        cmd = [sys.executable, "-m", "scorer_server.cli", "serve", *self.args]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        env = {**os.environ, "STAR_THREADS": "1", **self.env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=ROOT)
        self.wait_serving(timeout, credentials)
        return self

    def wait_serving(self, timeout: float, credentials: grpc.ChannelCredentials | None = None) -> None:
        end = time.monotonic() + timeout
        target = self.address
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if credentials is not None:
                    opts = [("grpc.ssl_target_name_override", "localhost")]
                    channel = grpc.secure_channel(target, credentials, options=opts)
                else:
                    channel = grpc.insecure_channel(target)
                with channel:
                    resp = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service="star.v1.ScorerService"), timeout=1.0
                    )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not SERVING within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="session")
def start_server(tiny_guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """`start_server(*extra_args, env=None, credentials=None, port=None)` -> a SERVING ServerProcess;
    every server started this way is stopped at the end of the session (or by the test)."""
    started: list[ServerProcess] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(
        *extra: str,
        env: dict[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        port: int | None = None,
    ) -> ServerProcess:
        args = ["--guard", str(tiny_guard_dir), "--preset", "llama-guard-3", *extra]
        server = ServerProcess(
            args, port or free_port(), free_port(), logs / f"server-{len(started)}.log", env=env or {}
        )
        started.append(server)
        return server.start(credentials=credentials)

    yield start
    for s in started:
        s.stop(10)


@pytest.fixture(scope="session")
def toy_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """One default `star-demo` run (finetuning, evaluation, landscapes), shared by the slow toy-world
    tests: (exit code, report directory)."""
    from trainer_client.toy.demo import main

    out = tmp_path_factory.mktemp("toy-demo") / "report"
    return main(["--out", str(out)]), out
