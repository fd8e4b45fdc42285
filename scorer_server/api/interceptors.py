"""Server interceptors: bearer-token auth and tenants, and exceptions to status codes (with metrics).

Handlers raise plain exceptions (InvalidRequest, Overloaded, ...); `ErrorInterceptor` turns each into
its status via `status_for` and counts the outcome by method, code and tenant. `AuthInterceptor` runs
inside it: it resolves the bearer token to its tenant (scorer_server/api/tenant.py) or raises
Unauthenticated, so rejected calls are counted too (as tenant `unauthenticated`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from scorer_server.api.decoding import check_request, tolerant
from scorer_server.api.status import Unauthenticated, status_for
from scorer_server.api.tenant import current_tenant, set_tenant
from scorer_server.metrics import ServerMetrics
from scorer_server.tenants import UNAUTHENTICATED, TenantToken

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
            self._count(name, status.code.name, exc)
            if status.code is grpc.StatusCode.CANCELLED:
                raise exc
            context.set_trailing_metadata(status.trailing_metadata())
            await context.abort(status.code, status.message)

        return _around(inner, before, after)

    def _count(self, method: str, code: str, exc: BaseException | None = None) -> None:
        if self._metrics is not None:
            self._metrics.count(method, code, current_tenant(), exc)


def _code_name(context: grpc.aio.ServicerContext) -> str:
    try:
        code = context.code()
    except Exception:
        return "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` with one of the accepted tokens (health is open), and
    makes the token's tenant the RPC's `current_tenant()`.

    Tokens are compared as SHA-256 digests with `hmac.compare_digest`, against every accepted token
    each time: the time taken does not depend on how much of a token was guessed, on its length, or on
    which token matched."""

    def __init__(self, tokens: Sequence[TenantToken]) -> None:
        self._tokens = [(_digest(t.token.encode()), t.tenant) for t in tokens]

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if details.method.startswith(OPEN_PREFIXES):
            return handler
        return _wrap_handler(handler, details.method, self._wrap)

    def _tenant(self, context: grpc.aio.ServicerContext) -> str | None:
        """The tenant of the call's bearer token; None without an accepted one."""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                raw = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, token = raw.partition(" ")
                if scheme.lower() != "bearer":
                    return None
                given = _digest(token.strip().encode())
                found = None
                for digest, tenant in self._tokens:  # no early exit: every token is compared
                    if hmac.compare_digest(given, digest):
                        found = tenant
                return found
        return None

    def _wrap(self, fn: Behavior, method: str) -> Behavior:
        async def before(context: grpc.aio.ServicerContext) -> None:
            tenant = self._tenant(context)
            set_tenant(tenant or UNAUTHENTICATED)
            if tenant is None:
                raise Unauthenticated("missing or unknown bearer token; send `authorization: Bearer <token>`")

        async def after(context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
            if exc is not None:
                raise exc

        return _around(fn, before, after)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()
