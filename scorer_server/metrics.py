"""Prometheus metrics of the scorer, on their own registry, served over HTTP on --metrics-port.

The `tenant` label's values are tenant names from the tokens file (or `anonymous`, `unauthenticated`):
bounded by the operator's configuration, never a string a caller sends.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from scorer_server.errors import LimitReached

_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServerMetrics:
    """The scorer's metrics; also the batcher's observer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("star_queue_depth", "Requests queued or running in the batcher", registry=r)
        self.requests = Counter(
            "star_requests",
            "RPCs and ScoreStream requests by final status and tenant",
            ["method", "code", "tenant"],
            registry=r,
        )
        self.limit_rejections = Counter(
            "star_limit_rejections",
            "Requests and sessions refused RESOURCE_EXHAUSTED, by tenant and the limit (flag) that refused",
            ["tenant", "limit"],
            registry=r,
        )
        self.tenant_pending_tokens = Gauge(
            "star_tenant_pending_tokens",
            "Guard tokens of a tenant's queued or running work",
            ["tenant"],
            registry=r,
        )
        self.tenant_sessions = Gauge(
            "star_tenant_moderation_sessions",
            "Live-moderation sessions a tenant has open",
            ["tenant"],
            registry=r,
        )
        self.batch_size = Histogram("star_batch_size", "Rows per forward", buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "star_batch_tokens", "Padded tokens per forward", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.forward_seconds = Histogram(
            "star_forward_seconds", "Wall time of one forward", buckets=_SECONDS_BUCKETS, registry=r
        )
        self.cuts_scored = Counter("star_cuts_scored", "Cuts whose STAR score was returned", registry=r)
        self.guard_forwards = Counter("star_guard_forwards", "Guard forward passes run", registry=r)
        self.cancelled = Counter(
            "star_requests_dropped", "Requests dropped before completion (deadline or cancel)", registry=r
        )

        self.head_cache_bytes = Gauge(
            "star_head_cache_bytes", "Memory of the cached template-head keys and values", registry=r
        )
        self.head_cache_tokens = Gauge(
            "star_head_cache_tokens", "Tokens in the cached template head", registry=r
        )
        self.head_tokens_reused = Counter(
            "star_head_tokens_reused", "Guard tokens read from the head cache instead of computed", registry=r
        )

        self.sessions_open = Gauge("star_moderation_sessions", "Live-moderation sessions open", registry=r)
        self.session_cache_bytes = Gauge(
            "star_session_cache_bytes",
            "Memory of the keys and values live-moderation sessions keep",
            registry=r,
        )
        self.session_evictions = Counter(
            "star_session_cache_evictions",
            "Session caches dropped for the memory budget (recomputed on their next cut)",
            registry=r,
        )
        self.session_cut_seconds = Histogram(
            "star_moderation_cut_seconds",
            "From the delta that completes a cut to its score",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.session_trunk_tokens = Counter(
            "star_session_trunk_tokens",
            "Guard tokens of sessions' trunks computed (cached for later cuts; recomputed after eviction)",
            registry=r,
        )
        self.session_tail_tokens = Counter(
            "star_session_tail_tokens",
            "Guard tokens of sessions' cut tails computed (template suffix and unsettled response tokens)",
            registry=r,
        )
        self._evictions_seen = 0

    def count(self, method: str, code: str, tenant: str, exc: BaseException | None = None) -> None:
        """One RPC or stream request's outcome; a refusal by a limit also counts under that limit."""
        self.requests.labels(method, code, tenant).inc()
        if isinstance(exc, LimitReached):
            self.limit_rejections.labels(tenant, exc.limit).inc()

    def on_tenant_pending(self, tenant: str, tokens: int) -> None:
        self.tenant_pending_tokens.labels(tenant).set(tokens)

    def on_tenant_sessions(self, tenant: str, open_sessions: int) -> None:
        self.tenant_sessions.labels(tenant).set(open_sessions)

    def on_sessions(self, open_sessions: int, cache_bytes: int, evictions: int) -> None:
        self.sessions_open.set(open_sessions)
        self.session_cache_bytes.set(cache_bytes)
        if evictions > self._evictions_seen:
            self.session_evictions.inc(evictions - self._evictions_seen)
            self._evictions_seen = evictions

    def on_session_cut(self, seconds: float) -> None:
        self.session_cut_seconds.observe(seconds)

    def on_session_tokens(self, trunk: int, tail: int) -> None:
        self.session_trunk_tokens.inc(trunk)
        self.session_tail_tokens.inc(tail)

    def on_head_cache(self, tokens: int, nbytes: int) -> None:
        self.head_cache_tokens.set(tokens)
        self.head_cache_bytes.set(nbytes)

    def on_head_reused(self, tokens: int) -> None:
        self.head_tokens_reused.inc(tokens)

    def on_batch(self, rows: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.batch_tokens.observe(tokens)
        self.forward_seconds.observe(seconds)
        self.guard_forwards.inc()

    def on_queue(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Expose /metrics on `port` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
