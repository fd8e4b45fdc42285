"""Live moderation from the client side: one Moderate stream per response being generated.

async with client.moderate(conversation) as session:
    async for text in session.guard(completion_chunks):   # stops at the guard's stop
        send_to_user(text)
print(session.stop)                                         # None, or where it stopped

Callers that drive the stream themselves `push(text)` and `close()`, and read each cut's score (and the
stop) as it arrives with `async for event in session`.

A session lives on one replica. When that replica goes away the session raises one `ModerationLost`
(UNAVAILABLE); `reopen()` opens it again on another replica and replays the text pushed so far. The
guard's scores are deterministic, so the replayed session goes on exactly where the lost one was: cuts
already delivered are not delivered again. `guard(chunks, reopen=N)` does that by itself up to N times.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from star_client.errors import ScorerCallError
from star_client.streams import chunk_text
from star_contract import convert
from star_contract.convert import SESSION_OPEN_KEY
from star_contract.types import Conversation, ModerateOptions, ModerationStop, Segment
from star_proto import scorer_pb2 as pb

T = TypeVar("T")
OpenCall = Callable[[bool], Awaitable[Any]]
"""`open_call(after_loss)`: a new Moderate call on a replica (after a loss, not the one that failed)."""


class ModerationLost(ScorerCallError):
    """The replica holding a live-moderation session went away; `session.reopen()` replays it elsewhere."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


class ModerationSession:
    """An open Moderate stream: `push` text as it is generated, read `segments` and `stop` as the
    server scores each cut, `close` when the response is complete."""

    def __init__(
        self,
        open_call: OpenCall,
        conversation: Conversation,
        options: ModerateOptions,
        deadline_s: float = 120.0,
    ) -> None:
        self._open_call = open_call
        self._deadline_s = deadline_s
        self._opened = False
        self._call: Any = None
        self._open = pb.ModerateRequest(open=convert.moderate_open_to_pb(conversation, options))
        self.segments: list[Segment] = []
        self.stop: ModerationStop | None = None
        self.complete = asyncio.Event()
        self.text = ""
        """Everything pushed so far (what `reopen` replays)."""
        self.reopened = 0
        """How often the session was re-opened on another replica."""
        self._reader: asyncio.Task[None] | None = None
        self._writing = True
        self._lost: ModerationLost | None = None
        self._events: asyncio.Queue[Segment | ModerationStop | ModerationLost | None] = asyncio.Queue()

    async def __aenter__(self) -> ModerationSession:
        await self._start(after_loss=False)
        return self

    async def _start(self, after_loss: bool) -> None:
        """Open the session on a replica; a replica that cannot take it (down, loading, draining) is
        passed over for another until `deadline_s` has gone by."""
        deadline = time.monotonic() + self._deadline_s
        failed = after_loss
        while True:
            self._call = await self._open_call(failed)
            try:
                await self._handshake()
                return
            except grpc.aio.AioRpcError as exc:
                if self._reader is not None:  # ended with the same status: collect it
                    with contextlib.suppress(BaseException):
                        await self._reader
                passable = self._broken(exc) or exc.code() is grpc.StatusCode.INTERNAL
                if not passable or time.monotonic() >= deadline:
                    raise
                failed = True

    async def _handshake(self) -> None:
        self._opened = False
        await self._call.write(self._open)
        self._reader = asyncio.ensure_future(self._read(self._call))
        # The server answers the open with its initial metadata, or refuses it with a status (invalid
        # options, RESOURCE_EXHAUSTED at --max-sessions). Waiting here raises that status itself:
        # deltas written into a call the server has already ended fail in grpc with an INTERNAL error
        # that replaces the server's status. The stream has no deadline of its own (a session lasts as
        # long as its answer), so the open is bounded here.
        try:
            metadata = await asyncio.wait_for(self._call.initial_metadata(), self._deadline_s)
        except TimeoutError:
            self._call.cancel()
            raise TimeoutError(
                f"the scorer did not open the moderation session in {self._deadline_s:g} s"
            ) from None
        if SESSION_OPEN_KEY not in dict(metadata or ()):
            await self._reader  # the call ended without opening: its status
            raise RuntimeError("the server ended a Moderate call without opening it or saying why")

    async def reopen(self) -> None:
        """After a `ModerationLost`: open the session on another replica and replay the text pushed so
        far (and the close, if it was sent). Cuts already delivered are not delivered again."""
        if self._lost is None:
            raise RuntimeError("reopen() is for a session whose replica went away")
        self._lost = None
        if self._reader is not None:  # the lost stream's reader ended with the loss: collect it
            with contextlib.suppress(BaseException):
                await self._reader
        self.complete.clear()
        self.reopened += 1
        await self._start(after_loss=True)
        if self.text:
            await self._send(self._call.write, pb.ModerateRequest(delta=self.text))
        if not self._writing:
            await self._send(self._call.write, pb.ModerateRequest(close=pb.ModerateClose()))
            await self._send(self._call.done_writing)

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if self._call is not None and not self.complete.is_set():
            self._call.cancel()
        if self._reader is not None:
            try:
                await self._reader
            except (asyncio.CancelledError, ModerationLost):
                pass
            except grpc.aio.AioRpcError:
                # the body's own exception (if any) is what the caller must see, not the cancelled call's
                if self._lost is None and exc_type is None:
                    raise

    def raise_for_failure(self) -> None:
        """Raise what ended the session early, if anything did: `ModerationLost` when its replica went
        away, or the status the server ended the stream with."""
        if self._lost is not None:
            raise self._lost
        reader = self._reader
        if reader is not None and reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]

    async def push(self, text: str) -> None:
        """Send the next characters of the response (ignored once the session has stopped; raises
        `ModerationLost` while the session's replica is gone)."""
        if self._lost is not None:
            raise self._lost
        if self._writing and not self.complete.is_set():
            self.text += text
            await self._send(self._call.write, pb.ModerateRequest(delta=text))

    async def close(self) -> None:
        """The response is complete: wait for the last cut's score (and a stop it may fire)."""
        if self._writing and not self.complete.is_set():
            self._writing = False
            await self._send(self._call.write, pb.ModerateRequest(close=pb.ModerateClose()))
            await self._send(self._call.done_writing)
        await self.complete.wait()
        if self._lost is not None:
            raise self._lost
        if self._reader is not None:
            await self._reader  # re-raises a failed stream

    async def guard(self, chunks: AsyncIterable[T], reopen: int = 0) -> AsyncIterator[T]:
        """Pass `chunks` through unchanged, pushing the text of each to the guard, and end as soon as the
        server has stopped the session; at the end of `chunks`, close the session.

        `chunks` is the stream the caller already has: text, or the chunk objects (or parsed JSON) of an
        OpenAI-compatible streaming completion from vLLM, TGI, the `openai` SDK or huggingface_hub (see
        `star_client.streams.chunk_text`). On a stop the stream is closed (`aclose()` / `close()`
        where it has one), which ends the generation upstream. Text already passed before the stop
        arrived stays passed: the stop is as early as the guard's latency allows. When the session's
        replica goes away it is re-opened elsewhere (the text so far replayed) up to `reopen` times;
        past that `ModerationLost` is raised."""
        async for chunk in chunks:
            if self.stop is not None:
                await _close(chunks)
                return
            if text := chunk_text(chunk):
                await self._surviving(reopen, self.text + text)
            yield chunk
        if self.stop is None:
            await self._surviving(reopen, None)

    async def _surviving(self, reopen: int, target: str | None) -> None:
        """Push until `self.text` is `target` (None: close), re-opening the session after a lost
        replica while `reopen` allows. What reached `self.text` before a loss is replayed by `reopen`."""
        while True:
            try:
                if target is None:
                    await self.close()
                elif rest := target[len(self.text) :]:
                    await self.push(rest)
                return
            except ModerationLost:
                if self.reopened >= reopen:
                    raise
                await self.reopen()
                if self.stop is not None:
                    return  # the replay reached the stop

    async def _send(self, write: Callable[..., Awaitable[Any]], *msg: Any) -> None:
        """A write on the stream. When the server has already ended it (an error it answered, or a stop
        that raced the write), the write fails with a transport error: raise the server's own status
        instead, or nothing when the session simply ended."""
        try:
            await write(*msg)
        except Exception:
            if self._reader is not None:
                try:
                    await self._reader  # re-raises the server's error, if the stream ended with one
                except grpc.aio.AioRpcError as exc:
                    # A replica that dies under a write leaves grpc's local INTERNAL status in place of
                    # UNAVAILABLE: the stream broke, the server said nothing.
                    if exc.code() is grpc.StatusCode.INTERNAL and self._lost is None:
                        raise self._mark_lost(exc) from None
                    raise
            if self.complete.is_set():
                return
            raise

    async def __aiter__(self) -> AsyncIterator[Segment | ModerationStop]:
        """Each cut's Segment as the server scores it, then the ModerationStop if the rule fired; ends
        with the stream (one reader: events are handed out once). Raises `ModerationLost` when the
        replica goes away; iterate again after `reopen()` for the rest."""
        while (event := await self._events.get()) is not None:
            if isinstance(event, ModerationLost):
                raise event
            yield event

    def _broken(self, exc: grpc.aio.AioRpcError) -> bool:
        """Whether the call ended because its replica or the connection to it went away: UNAVAILABLE, or
        DEADLINE_EXCEEDED (the stream has no deadline: that is grpc's 'Stream removed' when the
        transport drops the stream under it)."""
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    def _mark_lost(self, exc: grpc.aio.AioRpcError) -> ModerationLost:
        self._lost = ModerationLost(
            f"the replica holding this moderation session went away ({exc.code().name}: {exc.details()}); "
            f"reopen() replays the {len(self.text)} characters pushed so far on another replica"
        )
        self._events.put_nowait(self._lost)
        return self._lost

    async def _read(self, call: Any) -> None:
        replayed = len(self.segments)  # after a reopen the first cuts come again: deliver them once
        seen = 0
        try:
            metadata = await call.initial_metadata()
            self._opened = SESSION_OPEN_KEY in dict(metadata or ())
            async for reply in call:
                if reply.HasField("segment"):
                    seen += 1
                    if seen > replayed:
                        segment = Segment(reply.segment.end, reply.segment.p_safe)
                        self.segments.append(segment)
                        self._events.put_nowait(segment)
                if reply.HasField("stop"):
                    self.stop = convert.stop_from_pb(reply.stop)
                    self._events.put_nowait(self.stop)
                if reply.complete:
                    break
        except grpc.aio.AioRpcError as exc:
            if not self._broken(exc) or not self._opened:
                raise  # a refused open is _start's to handle
            raise self._mark_lost(exc) from None
        finally:
            # A call that never opened ends nothing: _start tries another replica or raises its status.
            if self._opened:
                self.complete.set()
                if self._lost is None:
                    self._events.put_nowait(None)


async def _close(stream: Any) -> None:
    """Close a stream the caller handed in (async generators' aclose, the openai SDK's close)."""
    closer = getattr(stream, "aclose", None) or getattr(stream, "close", None)
    if closer is not None:
        result = closer()
        if inspect.isawaitable(result):
            await result
