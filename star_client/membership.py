"""Which replicas the client talks to: fixed `host:port` addresses plus whatever `dns:///name:port` names
resolve to now (a Kubernetes headless Service answers with one address per ready pod).

Names are resolved again every `ClientConfig.resolve_every_s`, and sooner (at most once a second) when no
replica is usable, so replicas the autoscaler adds get traffic and removed ones are dropped. A failed or
empty answer keeps the replicas already known: a DNS hiccup or a Service briefly without ready pods
must not empty the client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`resolver(host, port)` -> the IP addresses the name has now."""

STARVING_GAP_S = 1.0
"""Shortest time between two resolutions made because no replica was usable."""

log = logging.getLogger("star.client")


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` has, from the operating system's resolver (getaddrinfo)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(i[4][0]) for i in infos})


def dns_name(address: str) -> tuple[str, int] | None:
    """(host, port) of `dns:///host:port` (or `dns:host:port`); None for a plain `host:port`."""
    if not address.startswith("dns:"):
        return None
    hostport = address.split("///", 1)[-1] if "///" in address else address[4:]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected dns:///HOST:PORT, not {address!r}")
    return host, int(port)


def host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Membership:
    """The current address list of a client's replicas, and when to resolve its names again."""

    def __init__(self, addresses: Sequence[str], resolver: Resolver, every_s: float) -> None:
        self.addresses = list(addresses)
        self.names = [n for n in map(dns_name, self.addresses) if n is not None]
        self.resolver = resolver
        self.every_s = every_s
        self.resolved_at = float("-inf")
        self.resolutions = 0
        """How many times the names were resolved (for tests and logs)."""

    def due(self, now: float, starving: bool) -> bool:
        """Whether to resolve again: periodically, or sooner when no replica is usable."""
        if self.resolutions == 0:
            return True  # the first time, fixed addresses too
        if not self.names:
            return False
        gap = STARVING_GAP_S if starving else self.every_s
        return gap > 0 and now - self.resolved_at >= gap

    async def resolve(self) -> list[str] | None:
        """Every address now, in a stable order; None when a name could not be resolved or none has an
        address (the caller keeps what it has)."""
        self.resolved_at = time.monotonic()
        self.resolutions += 1
        out: list[str] = []
        found = False
        for a in self.addresses:
            name = dns_name(a)
            if name is None:
                out.append(a)
                continue
            host, port = name
            try:
                ips = await self.resolver(host, port)
            except OSError as exc:
                log.warning("cannot resolve %s (%s); keeping the replicas known", a, exc)
                return None
            found = found or bool(ips)
            out.extend(host_port(ip, port) for ip in ips)
        if self.names and not found:
            log.warning("%s resolved to no address; keeping the replicas known", ", ".join(self.addresses))
            return None
        return list(dict.fromkeys(out))
