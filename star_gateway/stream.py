"""A streamed answer moderated as it is generated: upstream chunks in, a Moderate session beside them,
chunks out to the client as the hold-back window (release.py) allows.

Two readers feed one queue: the upstream's server-sent events and the session's scores. The loop
pushes each chunk's text to the scorer, holds the chunk in the gate, and forwards what the gate
releases. On a stop it forwards what lies before the stop offset (the straddling chunk cut there),
then a `content_filter` chunk and `[DONE]`, and closes the upstream response, which ends the
generation. At the upstream's end it closes the session and forwards the rest once the last cuts are
scored safe. A lost session is re-opened on another replica (`--reopen`); past that, or on any other
scorer failure, the answer ends with a moderation-unavailable chunk (fail closed) or goes on
unmoderated (fail open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from star_client import ModerationLost, ModerationSession
from star_client.streams import chunk_text
from star_contract.types import ModerationStop
from star_gateway.chunks import cut_chunk, final_chunk, stop_info, unavailable_info
from star_gateway.metrics import GatewayMetrics
from star_gateway.options import RequestOptions
from star_gateway.release import ReleaseGate
from star_gateway.sse import DONE, Event, encode, events

log = logging.getLogger("star.gateway")


@dataclass(frozen=True)
class StreamContext:
    """What one moderated stream needs besides its session and upstream response."""

    options: RequestOptions
    chat: bool
    fail_open: bool
    reopen: int
    metrics: GatewayMetrics
    route: str


class _SessionFailed(Exception):
    """The scorer failed this session for good."""


async def _read_upstream(response: httpx.Response, queue: asyncio.Queue[tuple[str, Any]]) -> None:
    try:
        async for event in events(response.aiter_raw()):
            await queue.put(("chunk", (event, time.perf_counter())))
        await queue.put(("upstream_end", None))
    except Exception as exc:  # the upstream broke off mid-stream
        await queue.put(("upstream_error", exc))


async def _read_session(session: ModerationSession, queue: asyncio.Queue[tuple[str, Any]]) -> None:
    try:
        async for item in session:
            await queue.put(("stop" if isinstance(item, ModerationStop) else "segment", item))
        await queue.put(("session_end", None))
    except Exception as exc:
        await queue.put(("session_error", exc))


class ModeratedStream:
    """One streamed answer; iterate it for the bytes to send to the client."""

    def __init__(self, session: ModerationSession, response: httpx.Response, ctx: StreamContext) -> None:
        self.session: ModerationSession | None = session
        self.response = response
        self.ctx = ctx
        self.gate = ReleaseGate(ctx.options.moderate, ctx.options.hold_back_words)
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.arrived: dict[int, float] = {}
        self.template: dict[str, Any] | None = None
        self.outcome = "client_gone"
        self._tasks: list[asyncio.Task[None]] = []
        self._reopened = 0
        self._recovered: list[BaseException] = []
        self._done_event: Event | None = None
        self._upstream_over = False
        self._just_added: int | None = None
        self._pushes: list[tuple[int, float]] = []
        """(response length after the push, when it was sent), for the scorer's round trip."""
        self._pushed = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.ctx.metrics.sessions.labels("stream").inc()
        self._tasks = [asyncio.ensure_future(_read_upstream(self.response, self.queue))]
        self._watch_session()
        try:
            async for data in self._run():
                yield data
        finally:
            await self._cleanup()

    def _watch_session(self) -> None:
        if self.session is not None:
            self._tasks.append(asyncio.ensure_future(_read_session(self.session, self.queue)))

    async def _run(self) -> AsyncIterator[bytes]:
        while True:
            kind, item = await self.queue.get()
            if kind == "chunk":
                event, arrived = item
                if event.done:
                    self._done_event = event
                    continue
                data = event.json()
                if isinstance(data, dict) and self.template is None:
                    self.template = data
                text = chunk_text(data) if isinstance(data, dict) else ""
                self.arrived[id(event)] = arrived
                self.gate.add(event, text)
                self._just_added = id(event)
                if text and self.session is not None:
                    try:
                        await self._push(text)
                        self._pushes.append((len(self.gate.text), time.perf_counter()))
                    except _SessionFailed as exc:
                        async for out in self._failed(str(exc)):
                            yield out
                        return
            elif kind == "segment":
                self.gate.score(item)
                self._round_trip(item.end)
            elif kind == "stop":
                async for out in self._stopped(item):
                    yield out
                return
            elif kind == "session_end":
                self.gate.finish()
            elif kind == "session_error":
                try:
                    await self._recover(item)
                except _SessionFailed as exc:
                    async for out in self._failed(str(exc)):
                        yield out
                    return
            elif kind in ("upstream_end", "upstream_error"):
                if kind == "upstream_error":
                    log.warning("upstream broke off mid-stream", extra={"error": str(item)})
                self._upstream_over = True
                if self.session is None:
                    self.gate.finish()
                else:
                    self._tasks.append(asyncio.ensure_future(self._close_session()))
            for out in self._released():
                yield out
            if self._upstream_over and self.gate.finished and self.gate.held == 0:
                self.outcome = "passed"
                yield self._done_event.raw if self._done_event is not None else encode(DONE)
                return

    async def _push(self, text: str) -> None:
        assert self.session is not None
        while True:
            try:
                await self.session.push(text)
                return
            except ModerationLost as exc:
                await self._recover(exc)
                return  # the replay pushed this text too
            except Exception as exc:
                raise _SessionFailed(f"{type(exc).__name__}: {exc}") from None

    async def _close_session(self) -> None:
        session = self.session
        if session is None:
            return
        try:
            await session.close()
        except ModerationLost as exc:
            await self.queue.put(("session_error", exc))
        except Exception as exc:
            await self.queue.put(("session_error", exc))

    async def _recover(self, exc: BaseException) -> None:
        """After a session error: re-open on another replica while allowed, else _SessionFailed."""
        session = self.session
        if session is None or any(e is exc for e in self._recovered):
            return  # the push and the reader both saw this loss: one re-open
        self._recovered.append(exc)
        if isinstance(exc, ModerationLost) and self._reopened < self.ctx.reopen:
            self._reopened += 1
            try:
                await session.reopen()
            except Exception as again:
                raise _SessionFailed(f"re-opening the session failed: {again}") from None
            self._watch_session()
            return
        raise _SessionFailed(f"{type(exc).__name__}: {exc}")

    def _released(self) -> list[bytes]:
        now = time.perf_counter()
        out = []
        for event in self.gate.release():
            arrived = self.arrived.pop(id(event), now)
            self.ctx.metrics.added.observe(now - arrived)
            if id(event) == self._just_added:
                self.ctx.metrics.own.observe(now - arrived)
            out.append(event.raw)
        self._just_added = None
        return out

    def _round_trip(self, cut_end: int) -> None:
        """Observe the scorer's round trip for the cut ending at `cut_end`: from the first push that
        took the response past it (a word cut is final once the next word has begun)."""
        while self._pushed < len(self._pushes) and self._pushes[self._pushed][0] <= cut_end:
            self._pushed += 1
        if self._pushed < len(self._pushes):
            self.ctx.metrics.scorer_rtt.observe(time.perf_counter() - self._pushes[self._pushed][1])

    async def _stopped(self, stop: ModerationStop) -> AsyncIterator[bytes]:
        whole, straddling = self.gate.stop_release(stop)
        for event in whole:
            yield event.raw
        if straddling is not None and isinstance(data := straddling.event.json(), dict):
            yield encode(cut_chunk(data, stop.offset - straddling.start))
        self.outcome = "stopped"
        self.ctx.metrics.stopped.labels("content_filter").inc()
        yield encode(final_chunk(self.template, self.ctx.chat, stop_info(stop)))
        yield encode(DONE)

    async def _failed(self, reason: str) -> AsyncIterator[bytes]:
        log.warning("moderation failed mid-stream", extra={"reason": reason, "fail_open": self.ctx.fail_open})
        if self.ctx.fail_open:
            self.session = None  # the rest passes unmoderated
            self.gate.finish()
            for out in self._released():
                yield out
            async for out in self._run():
                yield out
            return
        self.outcome = "unavailable"
        self.ctx.metrics.stopped.labels("unavailable").inc()
        yield encode(final_chunk(self.template, self.ctx.chat, unavailable_info(reason)))
        yield encode(DONE)

    async def _cleanup(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.response.aclose()  # closes the upstream connection: generation stops there
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.session is not None:
            with contextlib.suppress(BaseException):
                await self.session.__aexit__(None, None, None)
        self.ctx.metrics.sessions.labels("stream").dec()
        self.ctx.metrics.requests.labels(self.ctx.route, "true", self.outcome).inc()
