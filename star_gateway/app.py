"""The gateway's HTTP routes (Starlette): the OpenAI-compatible ones, LiteLLM's guardrail endpoint,
health and metrics. Requests are turned into plain values here and handed to one module per job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from star_client import AsyncScorerClient, ScorerCallError
from star_contract.errors import InvalidRequest
from star_gateway.config import GatewayConfig
from star_gateway.conversation import request_conversation
from star_gateway.errors import (
    GatewayError,
    bad_request,
    error_body,
    input_flagged,
    moderation_unavailable,
)
from star_gateway.guardrail_sessions import GuardrailSessions
from star_gateway.input_check import input_p_unsafe
from star_gateway.litellm_api import GuardrailEndpoint
from star_gateway.metrics import GatewayMetrics
from star_gateway.options import RequestOptions, take_options
from star_gateway.readiness import Readiness
from star_gateway.stream import ModeratedStream, StreamContext
from star_gateway.upstream import Upstream, UpstreamRefused, passed_headers
from star_gateway.whole import moderate_answer

log = logging.getLogger("star.gateway")
SCORER_ERRORS = (ScorerCallError, grpc.RpcError, TimeoutError)
UNMODERATED = {"x-star-moderation": "unavailable"}
"""Header on answers passed on unmoderated because the scorer failed (fail open)."""


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always closes its body iterator, also when the client goes away
    mid-stream (the iterator's cleanup closes the upstream request and the Moderate session)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            closer = getattr(self.body_iterator, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    await closer()


class Gateway:
    """The running gateway: its config, scorer client, upstream client and metrics."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.client = AsyncScorerClient(config=config.client_config())
        self.upstream = Upstream(config.upstream, config.upstream_timeout_s)
        self.sessions = GuardrailSessions(
            self.client,
            self.metrics,
            config.guardrail_idle_s,
            config.guardrail_max_sessions,
            config.scorer_deadline_s,
        )
        self.guardrail = GuardrailEndpoint(config, self.sessions, self.metrics)
        self.readiness = Readiness(self.client, config.ready_timeout_s, config.fail_open)
        self._reaper: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._reaper = asyncio.ensure_future(self.sessions.reaper())
        try:
            yield
        finally:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
            await self.sessions.close()
            await self.upstream.aclose()
            await self.client.close()

    def app(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/beta/litellm_basic_guardrail_api", self.litellm_guardrail, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/healthz", self.health, methods=["GET"]),
            Route("/readyz", self.ready, methods=["GET"]),
        ]
        if self.config.metrics_path:
            routes.append(Route(self.config.metrics_path, self.metrics_page, methods=["GET"]))
        return Starlette(routes=routes, lifespan=self.lifespan)

    # -- routes --
    async def chat(self, request: Request) -> Response:
        return await self._completion(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._completion(request, chat=False)

    async def models(self, request: Request) -> Response:
        try:
            got = await self.upstream.request("GET", "/v1/models", passed_headers(request.headers))
        except GatewayError as exc:
            return JSONResponse(exc.body(), exc.status)
        except UpstreamRefused as exc:
            return Response(exc.body, exc.status, media_type=exc.content_type or None)
        return Response(got.content, got.status_code, media_type=got.headers.get("content-type"))

    async def litellm_guardrail(self, request: Request) -> Response:
        try:
            return JSONResponse(await self.guardrail.answer(await _json_body(request)))
        except GatewayError as exc:
            return JSONResponse(exc.body(), exc.status)
        except InvalidRequest as exc:
            return JSONResponse(error_body(str(exc), "invalid_request_error"), 400)
        except SCORER_ERRORS as exc:
            if self.config.fail_open:
                return JSONResponse({"action": "NONE"}, headers=UNMODERATED)
            reason = f"STAR moderation unavailable (fail closed): {exc}"
            return JSONResponse({"action": "BLOCKED", "blocked_reason": reason})

    async def health(self, request: Request) -> Response:
        """Liveness: the process answers."""
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """Readiness: the scorer answers (or the gateway fails open); 503 otherwise."""
        ready, why = await self.readiness.check()
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "reason": why}, 200 if ready else 503
        )

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    # -- the OpenAI routes --
    async def _completion(self, request: Request, chat: bool) -> Response:
        route = request.url.path
        stream = False
        try:
            body = await _json_body(request)
            if not isinstance(body, dict):
                raise bad_request("the body must be a JSON object")
            stream = bool(body.get("stream"))
            options = take_options(body, self.config)
            headers = passed_headers(request.headers)
            if not options.enabled:
                return await self._unmoderated(route, body, headers, stream, {})
            conversation = request_conversation(body, chat)
            if options.input:
                await self._check_input(conversation)
            if stream:
                return await self._stream(route, body, headers, options, conversation, chat)
            return await self._whole(route, body, headers, options, conversation)
        except GatewayError as exc:
            outcome = {400: "bad_request", 502: "upstream_error", 503: "unavailable"}.get(exc.status, "error")
            if exc.code == "content_filter":
                outcome = "input_flagged"
            self.metrics.requests.labels(route, str(stream).lower(), outcome).inc()
            return JSONResponse(exc.body(), exc.status)
        except UpstreamRefused as exc:
            self.metrics.requests.labels(route, str(stream).lower(), "upstream_error").inc()
            return Response(exc.body, exc.status, media_type=exc.content_type or None)
        except InvalidRequest as exc:
            self.metrics.requests.labels(route, str(stream).lower(), "bad_request").inc()
            return JSONResponse(error_body(f"the scorer refused the conversation: {exc}",
                                           "invalid_request_error"), 400)  # fmt: skip

    async def _check_input(self, conversation: Any) -> None:
        try:
            p_unsafe = await input_p_unsafe(self.client, conversation)
        except SCORER_ERRORS as exc:
            if self.config.fail_open:
                return
            raise moderation_unavailable(str(exc)) from None
        if p_unsafe is not None and p_unsafe > self.config.input_unsafe_above:
            raise input_flagged(p_unsafe)

    async def _stream(
        self, route: str, body: dict[str, Any], headers: dict[str, str], options: RequestOptions,
        conversation: Any, chat: bool,
    ) -> Response:  # fmt: skip
        if body.get("n", 1) != 1:
            raise bad_request("a moderated stream carries one choice: n must be 1", "n")
        session = self.client.moderate(conversation, options.moderate)
        try:
            await session.__aenter__()
        except SCORER_ERRORS as exc:
            if not self.config.fail_open:
                raise moderation_unavailable(str(exc)) from None
            log.warning("scorer unavailable; streaming unmoderated", extra={"error": str(exc)})
            return await self._unmoderated(route, body, headers, True, UNMODERATED)
        try:
            response = await self.upstream.open_stream(route, body, headers)
        except BaseException:
            with contextlib.suppress(BaseException):
                await session.__aexit__(None, None, None)
            raise
        ctx = StreamContext(options, chat, self.config.fail_open, self.config.reopen, self.metrics, route)
        return ClosingStreamingResponse(
            ModeratedStream(session, response, ctx).__aiter__(), media_type="text/event-stream"
        )

    async def _whole(
        self, route: str, body: dict[str, Any], headers: dict[str, str], options: RequestOptions,
        conversation: Any,
    ) -> Response:  # fmt: skip
        got = await self.upstream.request("POST", route, headers, body)
        try:
            answer = got.json()
        except ValueError:
            raise GatewayError(502, "the upstream's answer is not JSON", "upstream_error") from None
        extra: dict[str, str] = {}
        try:
            stopped = await moderate_answer(self.client, conversation, options.moderate, answer)
        except SCORER_ERRORS as exc:
            if not self.config.fail_open:
                raise moderation_unavailable(str(exc)) from None
            stopped, extra = 0, UNMODERATED
        if stopped:
            self.metrics.stopped.labels("content_filter").inc(stopped)
        outcome = "stopped" if stopped else "passed"
        self.metrics.requests.labels(route, "false", outcome).inc()
        return JSONResponse(answer, got.status_code, headers=extra)

    async def _unmoderated(
        self, route: str, body: dict[str, Any], headers: dict[str, str], stream: bool, extra: dict[str, str]
    ) -> Response:
        """Pass a request through without moderation (turned off for it, or the scorer failed open)."""
        self.metrics.requests.labels(route, str(stream).lower(), "unmoderated").inc()
        if not stream:
            got = await self.upstream.request("POST", route, headers, body)
            return Response(got.content, got.status_code, headers=extra, media_type="application/json")
        response = await self.upstream.open_stream(route, body, headers)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for data in response.aiter_raw():
                    yield data
            finally:
                await response.aclose()

        return ClosingStreamingResponse(relay(), headers=extra, media_type="text/event-stream")


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None


def build_app(config: GatewayConfig) -> Starlette:
    """The ASGI app for `config`."""
    return Gateway(config).app()
