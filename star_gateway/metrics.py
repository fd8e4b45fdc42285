"""The gateway's Prometheus metrics, served at `--metrics-path` on its own HTTP port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
FINE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.5,
)
"""For the gateway's own time per chunk and the scorer's round trip (benchmarks/gateway.py reads them)."""


class GatewayMetrics:
    """One registry per gateway (so several can live in one process, as in the tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "star_gateway_requests", "requests by route, streaming, and outcome "
            "(passed, stopped, unavailable, input_flagged, upstream_error, bad_request, client_gone)",
            ["route", "stream", "outcome"], registry=r,
        )  # fmt: skip
        self.stopped = Counter(
            "star_gateway_stopped_responses",
            "answers ended by moderation: content_filter (the stop rule fired) or unavailable (fail closed)",
            ["reason"],
            registry=r,
        )
        self.added = Histogram(
            "star_gateway_chunk_added_seconds",
            "time from a chunk's arrival from the upstream to its forwarding to the client (includes the "
            "hold-back wait for its score)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.own = Histogram(
            "star_gateway_chunk_own_seconds",
            "the gateway's own time for a chunk forwarded without waiting for a score (hold-back -1, or a "
            "chunk with no text): from its arrival from the upstream to its handing to the HTTP server",
            buckets=FINE_BUCKETS,
            registry=r,
        )
        self.scorer_rtt = Histogram(
            "star_gateway_scorer_roundtrip_seconds",
            "from the push that made a cut final (its next word began) to the arrival of the cut's score",
            buckets=FINE_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge(
            "star_gateway_sessions", "Moderate sessions open: stream (OpenAI routes) or guardrail (LiteLLM)",
            ["kind"], registry=r,
        )  # fmt: skip
        self.guardrail_calls = Counter(
            "star_gateway_guardrail_calls", "LiteLLM guardrail calls by input_type and action",
            ["input_type", "action"], registry=r,
        )  # fmt: skip
        self.guardrail_pushed = Counter(
            "star_gateway_guardrail_pushed_chars",
            "characters pushed to the scorer by the LiteLLM endpoint (only the new part of each text)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
