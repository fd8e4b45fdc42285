"""Server interceptors: bearer-token auth, and exceptions to status codes (with request metrics).

Handlers raise plain exceptions (InvalidRequest, Overloaded, ...); `ErrorInterceptor` turns each into
its status via `status_for` and counts the outcome. `AuthInterceptor` runs inside it and raises
Unauthenticated, so rejected calls are counted too.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from scorer_server.api.decoding import check_request, tolerant
from scorer_server.api.status import Unauthenticated, status_for
from scorer_server.metrics import ServerMetrics

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]
Wrapper = Callable[[Behavior, str], Behavior]
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
"""Methods that need no token: Kubernetes probes carry none."""


def _wrap_handler(
    handler: grpc.RpcMethodHandler | None, method: str, wrap: Wrapper, tolerate_bad_bytes: bool = False
) -> Any:
    if handler is None:
        return None
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for attr, factory in kinds:
        fn = getattr(handler, attr)
        if fn is not None:
            return factory(
                wrap(fn, method),
                request_deserializer=(
                    tolerant(handler.request_deserializer)
                    if tolerate_bad_bytes
                    else handler.request_deserializer
                ),
                response_serializer=handler.response_serializer,
            )
    return handler


Before = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def _around(fn: Behavior, before: Before, after: Any) -> Behavior:
    """Wrap a coroutine or async-generator behavior: `before(ctx)` first, `after(ctx, exc)` at the end
    (exc is None on success; `after` re-raises or aborts)."""
    if inspect.isasyncgenfunction(fn):

        async def gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                await before(context)
                async for item in fn(request, context):
                    yield item
            except BaseException as exc:
                await after(context, exc)
            else:
                await after(context, None)

        return gen

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await before(context)
            result = fn(request, context)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            await after(context, exc)
            return None
        await after(context, None)
        return result

    return call


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions to statuses in one place and counts every RPC by method and final code."""

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        return _wrap_handler(handler, details.method, self._wrap, tolerate_bad_bytes=True)

    def _wrap(self, fn: Behavior, method: str) -> Behavior:
        name = method.rsplit("/", 1)[-1]

        def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return fn(check_request(request), context)

        if inspect.isasyncgenfunction(fn):

            async def checked_gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for item in fn(check_request(request), context):
                    yield item

            inner: Behavior = checked_gen
        else:
            inner = checked

        async def before(context: grpc.aio.ServicerContext) -> None:
            return None

        async def after(context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
            if exc is None:
                self._count(name, "OK")
                return
            if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):  # the caller went away
                self._count(name, "CANCELLED")
                raise exc
            if isinstance(exc, grpc.aio.AbortError):
                self._count(name, _code_name(context))
                raise exc
            status = status_for(exc)
            self._count(name, status.code.name)
            if status.code is grpc.StatusCode.CANCELLED:
                raise exc
            context.set_trailing_metadata(status.trailing_metadata())
            await context.abort(status.code, status.message)

        return _around(inner, before, after)

    def _count(self, method: str, code: str) -> None:
        if self._metrics is not None:
            self._metrics.requests.labels(method, code).inc()


def _code_name(context: grpc.aio.ServicerContext) -> str:
    try:
        code = context.code()
    except Exception:
        return "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` with one of the accepted tokens (health is open)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if details.method.startswith(OPEN_PREFIXES):
            return handler
        return _wrap_handler(handler, details.method, self._wrap)

    def _accepted(self, context: grpc.aio.ServicerContext) -> bool:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                raw = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, token = raw.partition(" ")
                if scheme.lower() != "bearer":
                    return False
                given = token.strip().encode()
                return any(hmac.compare_digest(given, t) for t in self._tokens)
        return False

    def _wrap(self, fn: Behavior, method: str) -> Behavior:
        async def before(context: grpc.aio.ServicerContext) -> None:
            if not self._accepted(context):
                raise Unauthenticated("missing or unknown bearer token; send `authorization: Bearer <token>`")

        async def after(context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
            if exc is not None:
                raise exc

        return _around(fn, before, after)
