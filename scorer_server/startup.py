"""Start-up checks of `star-scorer serve` that turn OS and gRPC failures into actionable ConfigErrors.

gRPC reports a port it cannot bind as a bare RuntimeError (after printing its own C++ log line), and
Prometheus' HTTP server as an OSError without the port; both are checked here first, with the flag to
change in the message.
"""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

import grpc

from star_contract.errors import ConfigError, StarError

log = logging.getLogger("star.server")


def check_port_free(host: str, port: int, flag: str) -> None:
    """Raise ConfigError if nothing can listen on host:port (in use, or not an address of this host)."""
    if port == 0:
        return
    bind_host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: unknown host ({exc.strerror}); fix --host"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use (another scorer?); choose a free one with "
                    f"{flag}" + (" (0 turns metrics off)" if flag == "--metrics-port" else "")
                ) from None
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}); change {flag} or --host"
            ) from None


def read_tls(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials | None:
    """Server credentials from PEM files, or None without TLS; unreadable or invalid files are named."""
    if not cert:
        return None
    pems: dict[str, bytes] = {}
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if not path:
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {flag} {path} ({exc.strerror})") from None
        if b"-----BEGIN " not in data:
            raise ConfigError(f"{flag} {path} is not a PEM file (no '-----BEGIN' block)")
        pems[flag] = data
    return grpc.ssl_server_credentials(
        [(pems["--tls-key"], pems["--tls-cert"])],
        root_certificates=pems.get("--tls-client-ca"),
        require_client_auth="--tls-client-ca" in pems,
    )


def as_start_error(exc: BaseException, guard: str) -> StarError:
    """The error a failed backend start ends the process with: ConfigErrors as they are, anything else
    wrapped with the guard directory (the traceback goes to the debug log)."""
    if isinstance(exc, StarError):
        return exc
    log.debug("guard start-up failed", exc_info=exc)
    detail = " ".join(str(exc).split())[:300]
    return ConfigError(f"the guard in {guard} failed to start ({type(exc).__name__}: {detail})")
