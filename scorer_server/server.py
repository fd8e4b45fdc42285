"""The gRPC server: wiring, health, reflection, TLS, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from scorer_server.api.interceptors import AuthInterceptor, ErrorInterceptor
from scorer_server.api.servicer import ScorerServicer
from scorer_server.backends.base import ScoringBackend
from scorer_server.config import ServerConfig
from scorer_server.metrics import ServerMetrics
from scorer_server.startup import as_start_error, check_port_free, read_tls
from scorer_server.watchdog import EngineWatch, Watchdog
from star_contract.errors import ConfigError
from star_contract.logs import log_json_to_stderr
from star_proto import scorer_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ScorerService"].full_name
log = logging.getLogger("star.server")


def setup_logging(level: str) -> None:
    """JSON lines on stderr (star_contract.logs), the libraries' chatter quieted."""
    log_json_to_stderr(level)
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep stderr one JSON object per line: libraries' own progress bars off, their warnings through
    the JSON handler (transformers writes "Loading weights" bars and warnings to stderr itself)."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.captureWarnings(True)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def build_backend(config: ServerConfig, metrics: ServerMetrics) -> ScoringBackend:
    """The local engine behind the batcher, or a remote engine fleet; each gets its part of `config`."""
    guard = config.guard.guard_config()
    if config.remote.backend == "local":
        from scorer_server.backends.local import LocalBackend, LocalBackendConfig

        local = LocalBackendConfig(guard, config.batching, config.limits, config.tenants)
        return LocalBackend(local, observer=metrics)
    from scorer_server.backends import build_remote_backend
    from scorer_server.backends.remote import RemoteConfig

    remote = config.remote
    engines = RemoteConfig(
        urls=remote.urls,
        max_concurrency=remote.max_concurrency,
        limits=config.limits,
        cache_salt=remote.cache_salt,
    )
    return build_remote_backend(remote.backend, guard, engines)


class ScorerServer:
    """One scorer process: `await run()` serves until SIGTERM/SIGINT, then drains."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.backend = build_backend(config, self.metrics)
        self.servicer = ScorerServicer(
            self.backend,
            config.limits,
            self.metrics,
            config.network.max_message_bytes,
            config.batching.session_idle_s,
        )
        self.health = health_aio.HealthServicer()
        self._stop = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []
        self.server: grpc.aio.Server | None = None
        self.port = config.network.port

    async def _open(self) -> None:
        """Check the ports and TLS files, then bind and start the gRPC server (NOT_SERVING)."""
        config = self.config.network
        creds = read_tls(config.tls_cert, config.tls_key, config.tls_client_ca)
        check_port_free(config.host, config.port, "--port")
        if config.metrics_port:
            check_port_free("0.0.0.0", config.metrics_port, "--metrics-port")
        interceptors: list[Any] = [ErrorInterceptor(self.metrics)]
        if config.auth_tokens:
            interceptors.append(AuthInterceptor(config.auth_tokens))
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
        if config.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000)),
            ]
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        from star_proto import scorer_pb2_grpc as pb_grpc

        pb_grpc.add_ScorerServiceServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, reflection.SERVICE_NAME, "grpc.health.v1.Health"), self.server
        )
        address = f"{config.host}:{config.port}"
        try:
            self.port = (
                self.server.add_secure_port(address, creds)
                if creds
                else self.server.add_insecure_port(address)
            )
        except RuntimeError:
            raise ConfigError(f"cannot listen on {address}; change --port or --host") from None
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if config.metrics_port:
            try:
                self.metrics.serve(config.metrics_port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on port {config.metrics_port} ({exc.strerror}); choose a free "
                    "one with --metrics-port (0 turns metrics off)"
                ) from None

    async def _set_health(self, status: Any) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain. A start-up failure stops everything it started and
        raises a StarError whose message says what to change."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._open()
            log.info(
                "listening",
                extra={
                    "port": self.port,
                    "tls": self.config.network.tls,
                    "auth": bool(self.config.network.auth_tokens),
                    "tenants": [t.tenant for t in self.config.network.auth_tokens],  # names only
                },
            )
            warning = self.config.network.auth_warning()
            if warning:
                log.warning(warning)
            started = await self._start_backend()
        except BaseException as exc:
            await self._abort()
            if isinstance(exc, Exception):
                raise as_start_error(exc, self.config.guard.path) from None
            raise
        if started:
            await self._stop.wait()
        await self.shutdown()
        return 0

    async def _start_backend(self) -> bool:
        """Load the guard (health answers NOT_SERVING meanwhile); False if a stop came first."""
        t0 = time.monotonic()
        start = asyncio.create_task(self.backend.start())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            return False
        stop.cancel()
        start.result()  # a load failure ends the process with its message
        self.servicer.ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._start_watchdog()
        info = self.backend.info()
        log.info(
            "serving",
            extra={
                "guard": info.name,
                "fingerprint": info.fingerprint,
                "load_s": round(time.monotonic() - t0, 2),
            },
        )
        return True

    def _start_watchdog(self) -> None:
        """Health follows progress (local engine) and reachability (remote engines)."""

        async def set_serving(serving: bool) -> None:
            s = health_pb2.HealthCheckResponse
            await self._set_health(s.SERVING if serving else s.NOT_SERVING)

        def draining() -> bool:
            return self.servicer.draining

        stalled = getattr(self.backend, "stalled_s", None)
        if stalled is not None and self.config.process.watchdog_s > 0:
            dog = Watchdog(stalled, self.config.process.watchdog_s, set_serving, draining)
            self._watchers.append(asyncio.create_task(dog.run(), name="star-watchdog"))
        reachable = getattr(self.backend, "reachable", None)
        if reachable is not None and self.config.remote.health_interval_s > 0:
            watch = EngineWatch(reachable, self.config.remote.health_interval_s, set_serving, draining)
            self._watchers.append(asyncio.create_task(watch.run(), name="star-engine-watch"))

    async def _abort(self) -> None:
        """Release what a failed start opened, so the process exits without gRPC's shutdown noise."""
        await self.backend.stop(0.0)
        if self.server is not None:
            await self.server.stop(None)

    async def shutdown(self) -> None:
        """NOT_SERVING at once, refuse new work, finish in-flight work within the grace period."""
        grace = self.config.process.grace_s
        t0 = time.monotonic()
        log.info("draining", extra={"grace_s": grace})
        for task in self._watchers:
            task.cancel()
        await self.health.enter_graceful_shutdown()
        self.servicer.begin_drain()
        idle = await self.servicer.wait_idle(grace)
        left = max(0.0, grace - (time.monotonic() - t0))
        await self.backend.stop(left)
        if self.server is not None:
            await self.server.stop(min(left, 1.0))
        log.info("stopped", extra={"drained": idle, "seconds": round(time.monotonic() - t0, 2)})


async def serve(config: ServerConfig) -> int:
    return await ScorerServer(config).run()
