"""Errors the gateway answers with, in OpenAI's error JSON shape:
`{"error": {"message": ..., "type": ..., "param": null, "code": ...}}`."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """A request the gateway answers with `status` and an OpenAI-shaped error body."""

    def __init__(
        self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> GatewayError:
    """400 invalid_request_error: the client's body is malformed."""
    return GatewayError(400, message, "invalid_request_error", "invalid_request", param)


def upstream_unavailable(detail: str) -> GatewayError:
    """502: the upstream could not be reached or broke off."""
    return GatewayError(502, f"the upstream model server is unavailable: {detail}", "upstream_error",
                        "upstream_unavailable")  # fmt: skip


def moderation_unavailable(detail: str) -> GatewayError:
    """503: the scorer could not be reached and the gateway fails closed."""
    return GatewayError(
        503,
        f"moderation is unavailable, so the request was not served (the gateway fails closed): {detail}",
        "moderation_unavailable",
        "moderation_unavailable",
    )


def input_flagged(p_unsafe: float) -> GatewayError:
    """400: input moderation refused the last user message."""
    return GatewayError(
        400,
        f"the last user message was flagged by input moderation (P(unsafe) {p_unsafe:.4f})",
        "invalid_request_error",
        "content_filter",
    )
