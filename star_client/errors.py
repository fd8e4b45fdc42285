"""Errors the client raises. Malformed requests raise `scorer_server.errors.InvalidRequest`."""

from __future__ import annotations

import grpc

from star_contract.errors import StarError

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class ScorerCallError(StarError):
    """A call that failed for good: `code` is the final gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.details = message


class RetryableReply(Exception):
    """The server answered with a retryable status (internal to the client)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class ConnectionLost(Exception):
    """The stream carrying a request went away before its answer (internal; the call is re-sent)."""
