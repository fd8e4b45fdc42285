"""Exceptions with a meaning for callers; the server maps each to one gRPC status in one place."""


class StarError(Exception):
    """Base class for errors the scorer reports to callers."""


class InvalidRequest(StarError, ValueError):
    """The request is malformed; the message says which field and how to fix it."""


class Overloaded(StarError):
    """The work queue is full; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(StarError):
    """The guard is not loaded yet, or the server is shutting down."""
