"""The calling tenant of the RPC being served, set by `AuthInterceptor` and read by the servicer.

A context variable: grpc.aio serves each RPC in its own asyncio task, whose context is a copy taken when
the task starts, so a value set while serving one RPC is never seen by another. The interceptor sets it
inside the RPC's own handler coroutine (before the servicer method runs, in the same task); tasks the
servicer starts for that RPC (ScoreStream's per-request tasks) copy it. Without auth nothing sets it and
every call is the tenant `anonymous`.
"""

from __future__ import annotations

from contextvars import ContextVar

from scorer_server.tenants import ANONYMOUS

_TENANT: ContextVar[str] = ContextVar("star_tenant", default=ANONYMOUS)


def current_tenant() -> str:
    """The tenant of the RPC this code serves (`anonymous` without auth)."""
    return _TENANT.get()


def set_tenant(name: str) -> None:
    """Record the caller's tenant for the rest of this RPC (AuthInterceptor only)."""
    _TENANT.set(name)
