"""The OpenAI-compatible upstream, reached with httpx: the caller's API key and OpenAI headers pass
through; an upstream that cannot be reached is a 502; an upstream's own error answer (unknown model,
bad parameters) is passed back to the client as it came."""

from __future__ import annotations

import json
from typing import Any

import httpx

from star_gateway.errors import upstream_unavailable

PASSED_HEADERS = ("authorization", "openai-organization", "openai-project")
"""Request headers forwarded upstream (besides any `x-...` header)."""


class UpstreamRefused(Exception):
    """The upstream answered with an error status: `status`, `body` and `content_type` go back as they
    came."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type


def passed_headers(headers: Any) -> dict[str, str]:
    """The caller's headers that go upstream: the API key, OpenAI's and `x-` headers."""
    return {k: v for k, v in headers.items() if k.lower() in PASSED_HEADERS or k.lower().startswith("x-")}


class Upstream:
    """One httpx client for the gateway's life."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """POST `body` and return the streaming response once its status is in; the caller closes it
        (`aclose()`), which closes the connection and so ends the generation upstream."""
        request = self.client.build_request("POST", path, content=json.dumps(body), headers=_json(headers))
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise upstream_unavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            try:
                data = await response.aread()
            finally:
                await response.aclose()
            raise UpstreamRefused(response.status_code, data, response.headers.get("content-type", ""))
        return response

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None = None
    ) -> httpx.Response:
        """A whole request (errors from the upstream raise UpstreamRefused)."""
        content = json.dumps(body) if body is not None else None
        try:
            response = await self.client.request(method, path, content=content, headers=_json(headers))
        except httpx.HTTPError as exc:
            raise upstream_unavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise UpstreamRefused(
                response.status_code, response.content, response.headers.get("content-type", "")
            )
        return response


def _json(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "content-type": "application/json"}
