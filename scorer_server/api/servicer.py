"""The ScorerService servicer: decode and validate at the edge, call the backend, encode results.

Every RPC works for the caller's tenant (`current_tenant()`, set by the AuthInterceptor), handed to the
backend explicitly. Nothing a caller names is looked up beyond its own call: ScoreStream's request ids
live in a table of that one stream (a `cancel` can only reach a request sent on the same stream), and a
Moderate session is the call itself, so no tenant can address, cancel or even detect another's request
or session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from scorer_server.api.status import status_for
from scorer_server.api.tenant import current_tenant
from scorer_server.api.validation import validate_conversation, validate_judge, validate_score_request
from scorer_server.backends.base import ScoringBackend
from scorer_server.limits import Limits
from scorer_server.metrics import ServerMetrics
from star_contract import convert
from star_contract.errors import InvalidRequest, NotReady
from star_contract.stop_rule import StopRule
from star_contract.types import ScoreRequest, Segment
from star_proto import scorer_pb2 as pb
from star_proto import scorer_pb2_grpc as pb_grpc

log = logging.getLogger("star.api")
STREAM_REQUEST = "ScoreStreamRequest"
"""The `method` label of per-request outcomes inside ScoreStream."""


class ScorerServicer(pb_grpc.ScorerServiceServicer):
    """star.v1.ScorerService over a ScoringBackend."""

    def __init__(
        self,
        backend: ScoringBackend,
        limits: Limits,
        metrics: ServerMetrics,
        max_message_bytes: int,
        session_idle_s: float = 120.0,
    ) -> None:
        self.backend = backend
        self.session_idle_s = session_idle_s
        self.limits = limits
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.ready = False
        self.draining = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle --
    def _check_ready(self) -> None:
        if self.draining:
            raise NotReady("the scorer is shutting down; retry on another replica")
        if not self.ready:
            raise NotReady("the guard is still loading; retry shortly")

    def begin_drain(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (or `timeout`); True if idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _enter(self) -> None:
        self._active += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    # -- RPCs --
    async def GetInfo(self, request: pb.GetInfoRequest, context: Any) -> pb.GetInfoResponse:
        self._check_ready()
        return convert.info_to_pb(self.backend.info(), self.max_message_bytes)

    async def Judge(self, request: pb.JudgeRequest, context: Any) -> pb.JudgeResponse:
        self._check_ready()
        conversations = convert.judge_request_from_pb(request)
        validate_judge(conversations, self.limits)
        self._enter()
        try:
            verdicts = await self.backend.judge(conversations, decode=not request.p_unsafe_only)
        finally:
            self._leave()
        return pb.JudgeResponse(verdicts=[convert.verdict_to_pb(v) for v in verdicts])

    async def Score(self, request: pb.ScoreRequest, context: Any) -> AsyncIterator[pb.ScoreResponse]:
        self._check_ready()
        req, priority = self._decode(request)
        self._enter()
        try:
            async for part in self._parts(req, priority, current_tenant()):
                yield part
        finally:
            self._leave()

    async def ScoreStream(
        self, request_iterator: AsyncIterator[pb.ScoreStreamRequest], context: Any
    ) -> AsyncIterator[pb.ScoreStreamResponse]:
        self._check_ready()
        tenant = current_tenant()
        out: asyncio.Queue[pb.ScoreStreamResponse | None] = asyncio.Queue()
        tasks: dict[str, asyncio.Task[None]] = {}  # this stream's own requests, by the caller's ids

        async def one(rid: str, msg: pb.ScoreRequest) -> None:
            self._enter()
            try:
                self._check_ready()
                req, priority = self._decode(msg)
                async for part in self._parts(req, priority, tenant):
                    out.put_nowait(pb.ScoreStreamResponse(request_id=rid, result=part))
                self._count("OK", tenant)
            except asyncio.CancelledError:
                self.metrics.cancelled.inc()
                self._count("CANCELLED", tenant)
                raise
            except Exception as exc:
                status = status_for(exc)
                self._count(status.code.name, tenant, exc)
                err = pb.Error(code=status.code.value[0], message=status.message)
                err.retry_after_seconds = status.retry_after_s
                out.put_nowait(pb.ScoreStreamResponse(request_id=rid, error=err))
            finally:
                tasks.pop(rid, None)
                self._leave()

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    if msg.cancel:
                        task = tasks.pop(msg.request_id, None)
                        if task is not None:
                            task.cancel()
                        continue
                    if msg.request_id in tasks:
                        err = pb.Error(
                            code=grpc.StatusCode.ALREADY_EXISTS.value[0],
                            message=f"request_id {msg.request_id!r} is already outstanding on this stream; "
                            "this duplicate was not scheduled, the first request's responses follow",
                        )
                        self._count("ALREADY_EXISTS", tenant)
                        out.put_nowait(pb.ScoreStreamResponse(request_id=msg.request_id, error=err))
                        continue
                    tasks[msg.request_id] = asyncio.create_task(one(msg.request_id, msg.request))
                # The caller finished sending: finish what is outstanding, then end the stream.
                while tasks:
                    await asyncio.gather(*list(tasks.values()), return_exceptions=True)
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                yield item
            await reader
        finally:
            reader.cancel()
            for task in list(tasks.values()):
                task.cancel()

    async def Moderate(
        self, request_iterator: AsyncIterator[pb.ModerateRequest], context: Any
    ) -> AsyncIterator[pb.ModerateResponse]:
        self._check_ready()
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("kind") != "open":
            raise InvalidRequest("the first Moderate message must be `open` (the conversation so far)")
        conversation, options = convert.moderate_open_from_pb(first.open)
        validate_conversation(conversation, self.limits, "open.conversation")
        session = self.backend.open_session(conversation, options, current_tenant())
        # The session is open: say so before any score, so a client can tell a refused open (its status
        # arrives instead) from one that was accepted before it streams deltas into it.
        await context.send_initial_metadata(((convert.SESSION_OPEN_KEY, "1"),))
        rule = StopRule(options)
        self._enter()
        try:
            while (msg := await self._next_message(requests)) is not None:
                kind = msg.WhichOneof("kind")
                if kind not in ("delta", "close"):
                    raise InvalidRequest("after `open`, send `delta` messages and then `close`")
                segments = await (session.push(msg.delta) if kind == "delta" else session.close())
                async for out in self._moderated(segments, rule):
                    yield out
                    if out.complete:
                        return
                if kind == "close":
                    break
            else:  # the caller ended the stream without `close`: the response is complete
                async for out in self._moderated(await session.close(), rule):
                    yield out
                    if out.complete:
                        return
            yield pb.ModerateResponse(complete=True)
        finally:
            session.release()
            self._leave()

    async def _next_message(self, requests: AsyncIterator[pb.ModerateRequest]) -> pb.ModerateRequest | None:
        """The session's next message, None at the end of the stream; an idle session is closed."""
        try:
            return await asyncio.wait_for(anext(requests), self.session_idle_s)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise TimeoutError(
                f"no message on this moderation session for {self.session_idle_s:g} s (--session-idle-s); "
                "it is closed"
            ) from None

    async def _moderated(self, segments: list[Segment], rule: StopRule) -> AsyncIterator[pb.ModerateResponse]:
        """Each new cut's score, then the stop (complete = true) if the rule fires on it."""
        for seg in segments:
            self.metrics.cuts_scored.inc()
            yield pb.ModerateResponse(segment=convert.segment_to_pb(seg))
            stop = rule.observe(seg)
            if stop is not None:
                yield pb.ModerateResponse(stop=convert.stop_to_pb(stop), complete=True)
                return

    # -- helpers --
    def _decode(self, msg: pb.ScoreRequest) -> tuple[ScoreRequest, int]:
        req, priority = convert.score_request_from_pb(msg)
        validate_score_request(req, self.limits)
        return req, priority

    async def _parts(self, req: ScoreRequest, priority: int, tenant: str) -> AsyncIterator[pb.ScoreResponse]:
        """The backend's parts as ScoreResponses; the last one carries complete = true."""
        async for p in self.backend.score(req, priority, tenant):
            self.metrics.cuts_scored.inc(len(p.segments))
            yield convert.score_part_to_pb(p.segments, p.part, p.parts, p.last, p.guard_tokens)

    def _count(self, code: str, tenant: str, exc: BaseException | None = None) -> None:
        self.metrics.count(STREAM_REQUEST, code, tenant, exc)
