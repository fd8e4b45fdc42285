"""Client settings: one frozen object."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientConfig:
    """How the client reaches and retries the scorer."""

    addresses: tuple[str, ...] = ()
    """`host:port` of each replica, or `dns:///name:port` (resolved to every address it has, e.g. a
    Kubernetes headless Service). The client's constructor argument takes precedence when given."""
    resolve_every_s: float = 30.0
    """How often `dns:///` names are resolved again (0: only when no replica is usable), so replicas
    that a scale-up adds get traffic and removed ones are dropped."""
    stream_max_age_s: float = 120.0
    """A replica's ScoreStream older than this takes no new requests: a fresh one is opened and the old
    one ends once answered. With the server's --max-connection-age-s the fresh stream may reach another
    replica behind a ClusterIP Service, so long runs rebalance."""
    deadline_s: float = 120.0
    """Per call, including retries and re-sends after a replica went away. A scorer that is down,
    restarting, loading its guard, draining or overloaded costs the call time up to this deadline,
    never an early failure."""
    max_in_flight: int = 256
    """Requests outstanding at once across all replicas (`score_many` keeps this window full)."""
    retries: int | None = None
    """At most this many retries of one call after the server answered RESOURCE_EXHAUSTED or
    UNAVAILABLE (None: retry until the deadline). Re-sends after a connection loss are always bounded
    by the deadline alone."""
    backoff_s: float = 0.05
    """First retry delay; doubles per retry, with +-50% jitter, up to `backoff_max_s`. A server's
    retry hint is honoured when it is longer."""
    backoff_max_s: float = 2.0
    reconnect_backoff_max_s: float = 1.0
    """Longest wait between reconnect attempts to a replica that went away."""
    max_message_bytes: int = 64 * 1024 * 1024
    tls: bool = False
    """Use TLS (implied by any of the tls_* files)."""
    tls_ca_file: str | None = None
    """CA bundle that signed the server certificate (None: the system roots)."""
    tls_cert_file: str | None = None
    """Client certificate for mutual TLS."""
    tls_key_file: str | None = None
    tls_server_name: str | None = None
    """Override the name checked against the server certificate."""
    auth_token: str | None = None
    """Bearer token sent with every call (see also `auth_token_file` and STAR_AUTH_TOKEN)."""
    auth_token_file: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls or any((self.tls_ca_file, self.tls_cert_file, self.tls_key_file))

    def token(self) -> str | None:
        """The bearer token: explicit, else from the file, else from STAR_AUTH_TOKEN."""
        if self.auth_token:
            return self.auth_token
        if self.auth_token_file:
            with open(self.auth_token_file) as fh:
                return fh.read().strip() or None
        return os.environ.get("STAR_AUTH_TOKEN") or None

    def backoff(self, attempt: int, jitter: float) -> float:
        """Delay before retry number `attempt` (1-based); `jitter` in [0, 1)."""
        base = min(self.backoff_max_s, self.backoff_s * (2 ** (attempt - 1)))
        return base * (0.5 + jitter)
