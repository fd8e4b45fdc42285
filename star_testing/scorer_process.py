"""A real `star-scorer serve` subprocess on 127.0.0.1, for tests and benchmarks: start it, wait until
its gRPC health check says SERVING, stop it with SIGTERM (then SIGKILL past the grace)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from star_testing import fork_server

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "star.v1.ScorerService"
SERVING = 1
"""grpc.health.v1.HealthCheckResponse.SERVING."""


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, never the same one twice in a process.

    Under pytest-xdist the workers are separate processes picking ports at the same time: worker k of
    n only takes ports p with p // 2 equal to k modulo n, so two workers never hand out the same port (a
    server of one cannot take the port another worker's test is about to use, or expects to be dead).
    Not p itself modulo n: Linux hands out ports of one parity to bind(port 0)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker[2:]) % count if worker.startswith("gw") and worker[2:].isdigit() else 0
    for _ in range(10_000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if (port // 2) % count == index and port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass
class ScorerProcess:
    """`star-scorer serve *args --host host --port port --metrics-port metrics_port`."""

    args: list[str]
    log_path: Path
    port: int = field(default_factory=free_port)
    metrics_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    """Added to this process's environment (STAR_THREADS defaults to 1)."""
    host: str = "127.0.0.1"
    """Any loopback address (127.0.0.0/8): replicas on 127.0.0.2, 127.0.0.3, ... share one port, as the
    pods behind a headless Service do."""
    script: str | None = None
    """A Python file to run instead of `python -m scorer_server.cli`: a test harness around the real CLI
    (tests/gated_scorer.py)."""
    fresh: bool = False
    """Start a new interpreter even where the test suite's fork server could fork it."""
    preexec_fn: Callable[[], None] | None = None
    """Run in the child before the scorer starts (e.g. CPU pinning); implies a fresh interpreter."""
    proc: fork_server.Process | None = None
    """subprocess.Popen, or a child of the test suite's fork server (star_testing.fork_server)."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def launch(self) -> ScorerProcess:
        """Start the process and return at once (see `wait_serving`)."""
        entry = [self.script] if self.script else ["-m", "scorer_server.cli"]
        cmd = [sys.executable, *entry, "serve", *self.args]
        cmd += ["--host", self.host, "--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        env = {**os.environ, "STAR_THREADS": "1", **self.env}
        with self.log_path.open("ab") as log:
            if self.preexec_fn is None:
                self.proc = fork_server.popen(
                    cmd, stdout=log, stderr=log, env=env, cwd=ROOT, fresh=self.fresh
                )
            else:
                self.proc = subprocess.Popen(
                    cmd, stdout=log, stderr=log, env=env, cwd=ROOT, preexec_fn=self.preexec_fn
                )
        return self

    def start(self, timeout: float = 90.0, credentials: object | None = None) -> ScorerProcess:
        """Start the process and wait until it is SERVING."""
        self.launch()
        self.wait_serving(timeout, credentials)
        return self

    def wait_serving(self, timeout: float = 90.0, credentials: object | None = None) -> None:
        """Poll the health check until SERVING; RuntimeError if the process exits, TimeoutError after
        `timeout` s. `credentials` are grpc.ChannelCredentials for a TLS server (name 'localhost')."""
        self._wait_health(lambda status: status == SERVING, "SERVING", timeout, credentials)

    def wait_listening(self, timeout: float = 90.0) -> None:
        """Poll until the health check answers at all (NOT_SERVING while the guard loads)."""
        self._wait_health(lambda status: status is not None, "listening", timeout, None)

    def health(self, credentials: object | None = None) -> int | None:
        """The health status of SERVICE (a grpc.health.v1 enum value), or None when nothing answers."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        if credentials is not None:
            opts = [("grpc.ssl_target_name_override", "localhost")]
            channel = grpc.secure_channel(self.address, credentials, options=opts)
        else:
            channel = grpc.insecure_channel(self.address)
        try:
            with channel:
                resp = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=1.0
                )
                return int(resp.status)
        except grpc.RpcError:
            return None

    def _wait_health(
        self, done: Callable[[int | None], bool], what: str, timeout: float, credentials: object | None
    ) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if done(self.health(credentials)):
                return
            time.sleep(0.05)
        raise TimeoutError(f"server not {what} within {timeout}s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` (e.g. `star_requests_total`) whose labels include
        `labels`, read from the server's /metrics (0 when there is none)."""
        return page_metric(f"http://127.0.0.1:{self.metrics_port}/metrics", name, **labels)

    def log(self) -> str:
        """The last 4000 characters of the server's log."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; the exit code (None if never started)."""
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


def page_metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels` on the Prometheus page at `url`."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
