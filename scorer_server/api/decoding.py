"""Request bytes that do not parse: INVALID_ARGUMENT with a plain message, never UNKNOWN / INTERNAL.

gRPC turns an exception in a request deserializer into UNKNOWN (unary) or INTERNAL (streams), with
protobuf's internals in the message and a traceback in the log. The deserializer here returns a
`Malformed` marker instead, and the error interceptor raises InvalidRequest when a handler would
receive one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from star_contract.errors import InvalidRequest


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request message whose bytes did not parse."""

    reason: str

    def error(self) -> InvalidRequest:
        return InvalidRequest(f"the request message is not valid protobuf for this method: {self.reason}")


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize`, returning Malformed instead of raising on corrupt wire format or bad UTF-8."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, UnicodeDecodeError, ...: all mean "not this message"
            reason = (
                "invalid UTF-8 in a string field" if isinstance(exc, UnicodeError) else "corrupt wire format"
            )
            return Malformed(reason)

    return parse


def check_request(request: Any) -> Any:
    """A unary request as is (raises InvalidRequest for Malformed); a request stream wrapped so that a
    Malformed message raises InvalidRequest where the handler reads it."""
    if isinstance(request, Malformed):
        raise request.error()
    if hasattr(request, "__aiter__"):
        return _checked_stream(request)
    return request


async def _checked_stream(messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for msg in messages:
        if isinstance(msg, Malformed):
            raise msg.error()
        yield msg
