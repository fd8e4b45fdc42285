"""Exceptions to gRPC status codes: the one place this mapping lives."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from scorer_server.errors import EngineUnavailable
from star_contract.errors import InvalidRequest, NotReady, Overloaded, StarError

log = logging.getLogger("star.api")


class Unauthenticated(StarError):
    """No bearer token, or one the server does not accept."""


@dataclass(frozen=True)
class Status:
    """What a caller is told about a failure."""

    code: grpc.StatusCode
    message: str
    retry_after_s: float = 0.0

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after_s > 0:
            return (("retry-after-ms", str(int(self.retry_after_s * 1000))),)
        return ()


def status_for(exc: BaseException) -> Status:
    """The status a caller sees for `exc`; unexpected errors are logged and reported as INTERNAL
    without internals."""
    if isinstance(exc, InvalidRequest):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, Overloaded):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_s)
    if isinstance(exc, EngineUnavailable):
        return Status(grpc.StatusCode.UNAVAILABLE, str(exc), exc.retry_after_s)
    if isinstance(exc, NotReady):
        return Status(grpc.StatusCode.UNAVAILABLE, str(exc), 0.5)
    if isinstance(exc, Unauthenticated):
        return Status(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    if isinstance(exc, asyncio.CancelledError):
        return Status(grpc.StatusCode.CANCELLED, "cancelled")
    if isinstance(exc, TimeoutError):
        return Status(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "the work did not finish in time")
    if type(exc).__name__ == "OutOfMemoryError":
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, "the guard ran out of memory on this request", 1.0)
    log.error("internal error", exc_info=exc)
    return Status(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log")
