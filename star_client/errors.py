"""Errors the client raises.

A request the server refuses as malformed (INVALID_ARGUMENT) raises `star_contract.errors.InvalidRequest`
(also exported as `star_client.InvalidRequest`) from `score`, `score_many`, `judge` and `info`, as does a
conversation the client cannot encode, before anything is sent; any other final status raises
`ScorerCallError`. A moderation session raises the gRPC error itself (`grpc.aio.AioRpcError`, with its
`code()` and `details()`), or `star_client.moderation.ModerationLost` when its replica goes away.
"""

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
