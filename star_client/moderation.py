"""Live moderation from the client side: one Moderate stream per response being generated.

async with client.moderate(conversation) as session:
    async for text in session.guard(completion_chunks):   # stops at the guard's stop
        send_to_user(text)
print(session.stop)                                         # None, or where it stopped

Callers that drive the stream themselves `push(text)` and `close()`, and read each cut's score (and the
stop) as it arrives with `async for event in session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from star_client.streams import chunk_text
from star_contract import convert
from star_contract.convert import SESSION_OPEN_KEY
from star_contract.types import Conversation, ModerateOptions, ModerationStop, Segment
from star_proto import scorer_pb2 as pb

T = TypeVar("T")


class ModerationSession:
    """An open Moderate stream: `push` text as it is generated, read `segments` and `stop` as the
    server scores each cut, `close` when the response is complete."""

    def __init__(
        self, open_call: Callable[[], Awaitable[Any]], conversation: Conversation, options: ModerateOptions
    ) -> None:
        self._open_call = open_call
        self._call: Any = None
        self._open = pb.ModerateRequest(open=convert.moderate_open_to_pb(conversation, options))
        self.segments: list[Segment] = []
        self.stop: ModerationStop | None = None
        self.complete = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._writing = True
        self._events: asyncio.Queue[Segment | ModerationStop | None] = asyncio.Queue()

    async def __aenter__(self) -> ModerationSession:
        self._call = await self._open_call()
        await self._call.write(self._open)
        self._reader = asyncio.ensure_future(self._read())
        # The server answers the open with its initial metadata, or refuses it with a status (invalid
        # options, RESOURCE_EXHAUSTED at --max-sessions). Waiting here raises that status itself:
        # deltas written into a call the server has already ended fail in grpc with an INTERNAL error
        # that replaces the server's status.
        metadata = await self._call.initial_metadata()
        if SESSION_OPEN_KEY not in dict(metadata or ()):
            await self._reader  # the call ended without opening: its status
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._call is not None and not self.complete.is_set():
            self._call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def push(self, text: str) -> None:
        """Send the next characters of the response (ignored once the session has stopped)."""
        if self._writing and not self.complete.is_set():
            await self._send(self._call.write, pb.ModerateRequest(delta=text))

    async def close(self) -> None:
        """The response is complete: wait for the last cut's score (and a stop it may fire)."""
        if self._writing and not self.complete.is_set():
            self._writing = False
            await self._send(self._call.write, pb.ModerateRequest(close=pb.ModerateClose()))
            await self._send(self._call.done_writing)
        await self.complete.wait()
        if self._reader is not None:
            await self._reader  # re-raises a failed stream

    async def guard(self, chunks: AsyncIterable[T]) -> AsyncIterator[T]:
        """Pass `chunks` through unchanged, pushing the text of each to the guard, and end as soon as the
        server has stopped the session; at the end of `chunks`, close the session.

        `chunks` is the stream the caller already has: text, or the chunk objects (or parsed JSON) of an
        OpenAI-compatible streaming completion from vLLM, TGI, the `openai` SDK or huggingface_hub (see
        `star_client.streams.chunk_text`). On a stop the stream is closed (`aclose()` / `close()`
        where it has one), which ends the generation upstream. Text already passed before the stop
        arrived stays passed: the stop is as early as the guard's latency allows."""
        async for chunk in chunks:
            if self.stop is not None:
                await _close(chunks)
                return
            if text := chunk_text(chunk):
                await self.push(text)
            yield chunk
        if self.stop is None:
            await self.close()

    async def _send(self, write: Callable[..., Awaitable[Any]], *msg: Any) -> None:
        """A write on the stream. When the server has already ended it (an error it answered, or a stop
        that raced the write), the write fails with a transport error: raise the server's own status
        instead, or nothing when the session simply ended."""
        try:
            await write(*msg)
        except Exception:
            if self._reader is not None:
                await self._reader  # re-raises the server's error, if the stream ended with one
            if self.complete.is_set():
                return
            raise

    async def __aiter__(self) -> AsyncIterator[Segment | ModerationStop]:
        """Each cut's Segment as the server scores it, then the ModerationStop if the rule fired; ends
        with the stream (one reader: events are handed out once)."""
        while (event := await self._events.get()) is not None:
            yield event

    async def _read(self) -> None:
        try:
            async for reply in self._call:
                if reply.HasField("segment"):
                    segment = Segment(reply.segment.end, reply.segment.p_safe)
                    self.segments.append(segment)
                    self._events.put_nowait(segment)
                if reply.HasField("stop"):
                    s = reply.stop
                    self.stop = ModerationStop(s.offset, s.cut, s.p_safe)
                    self._events.put_nowait(self.stop)
                if reply.complete:
                    break
        finally:
            self.complete.set()
            self._events.put_nowait(None)


async def _close(stream: Any) -> None:
    """Close a stream the caller handed in (async generators' aclose, the openai SDK's close)."""
    closer = getattr(stream, "aclose", None) or getattr(stream, "close", None)
    if closer is not None:
        result = closer()
        if inspect.isawaitable(result):
            await result
