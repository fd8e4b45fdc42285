"""Exceptions with a meaning for callers, shared by the scorer, the client and the trainer.

The server maps each to one gRPC status in one place (`scorer_server.api.status.status_for`); the
client raises InvalidRequest for a request it can tell is malformed before sending it.
"""


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


class ConfigError(StarError, ValueError):
    """A start-up setting cannot work (guard directory, template, verdict words, ports, TLS files).

    The message names what to change, usually the flag; the command-line tools print it as their one
    `PROG: error: ...` line and exit 2.
    """
