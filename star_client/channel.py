"""Channels and the long-lived ScoreStream to one scorer replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from star_client.config import ClientConfig
from star_client.errors import ConnectionLost, RetryableReply, ScorerCallError
from star_contract.convert import scores_from_parts
from star_proto import scorer_pb2 as pb
from star_proto import scorer_pb2_grpc as pb_grpc

STREAM_METHOD = "/star.v1.ScorerService/ScoreStream"
CLOSE_GRACE_S = 2.0
"""How long `Replica.close` waits for the server to end the stream before cancelling it."""
FIRST_RECONNECT_S = 0.05
PROBE_CONNECT_S = 0.2
"""How long the first request to a replica that was down waits for its channel to connect: a replica
back from a restart is used at once, not failed by a call that raced the reconnection and sent away for
another backoff period (a replica still down costs that request this long, once per backoff period)."""
_MAX_DOUBLINGS = 30
"""Past this many doublings the cap always wins; bounding the exponent keeps the float finite."""


def reconnect_delay(failures: int, cap_s: float) -> float:
    """Seconds a replica stays marked down after `failures` failures in a row: doubling, capped."""
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    return float(min(cap_s, FIRST_RECONNECT_S * (2**doublings)))


def channel_options(config: ClientConfig) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", int(config.reconnect_backoff_max_s * 1000)),
        ("grpc.enable_retries", 0),
    ]
    if config.tls_server_name:
        opts.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return opts


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as fh:
        return fh.read()


def make_channel(address: str, config: ClientConfig) -> grpc.aio.Channel:
    """An aio channel to one address, TLS or plaintext as configured."""
    if config.uses_tls:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(config.tls_ca_file),
            private_key=_read(config.tls_key_file),
            certificate_chain=_read(config.tls_cert_file),
        )
        return grpc.aio.secure_channel(address, creds, options=channel_options(config))
    return grpc.aio.insecure_channel(address, options=channel_options(config))


@dataclass
class Pending:
    """One request waiting for its answer on a stream."""

    future: asyncio.Future[Any]
    parts: list[pb.ScoreResponse] = field(default_factory=list)


@dataclass(eq=False)
class Stream:
    """One ScoreStream call: the requests it carries and its reader."""

    call: Any
    opened_at: float
    pending: dict[str, Pending] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    retiring: bool = False
    """Takes no new requests; half-closed once what it carries is answered."""


class Replica:
    """One scorer address: its channel, stub and one long-lived ScoreStream multiplexing many requests.

    A stream older than `ClientConfig.stream_max_age_s` takes no new requests: the next one opens a fresh
    stream and the old one is half-closed once its answers are in (the server then ends it). A server
    that limits its connections' age (`--max-connection-age-s`) has by then told the channel to connect
    anew, so behind a ClusterIP Service or an L4 proxy the fresh stream may land on another replica:
    long runs spread over the fleet without losing a request."""

    def __init__(self, address: str, config: ClientConfig, metadata: Sequence[tuple[str, str]]) -> None:
        self.address = address
        self.config = config
        self.metadata = tuple(metadata)
        self.channel = make_channel(address, config)
        self.stub = pb_grpc.ScorerServiceStub(self.channel)
        self.down_until = 0.0
        self.failures = 0
        self.streams_opened = 0
        self._stream: Stream | None = None
        self._streams: set[Stream] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def pending(self) -> dict[str, Pending]:
        """Every request outstanding on this replica, over all its streams."""
        return {rid: p for st in self._streams for rid, p in st.pending.items()}

    def usable(self, now: float) -> bool:
        return not self._closed and now >= self.down_until

    async def submit(self, request_id: str, request: pb.ScoreRequest, future: asyncio.Future[Any]) -> None:
        """Send one request on the current stream (opening one if needed); the answer resolves `future`."""
        async with self._lock:
            st = self._stream
            now = time.monotonic()
            if st is not None and now - st.opened_at >= self.config.stream_max_age_s:
                self._retire(st)
                st = None
            if st is None:
                if self.failures:  # a probe of a replica that was down: let its channel connect first
                    try:
                        await asyncio.wait_for(self.channel.channel_ready(), PROBE_CONNECT_S)
                    except TimeoutError as exc:
                        self.mark_down()
                        raise ConnectionLost(f"{self.address}: not connected") from exc
                st = self._stream = self._open()
            st.pending[request_id] = Pending(future)
            try:
                await st.call.write(pb.ScoreStreamRequest(request_id=request_id, request=request))
            except Exception as exc:  # the stream died under us; the reader fails everything pending
                st.pending.pop(request_id, None)
                self.mark_down()
                raise ConnectionLost(f"{self.address}: {exc}") from exc

    async def cancel(self, request_id: str) -> None:
        """Tell the server to drop a request (best effort) and forget it here."""
        st = next((x for x in self._streams if request_id in x.pending), None)
        if st is None:
            return
        del st.pending[request_id]
        with contextlib.suppress(Exception):
            async with self._lock:
                if not st.call.done():
                    await st.call.write(pb.ScoreStreamRequest(request_id=request_id, cancel=True))
        self._maybe_finish(st)

    def _open(self) -> Stream:
        st = Stream(self.stub.ScoreStream(metadata=self.metadata or None), time.monotonic())
        st.reader = asyncio.get_running_loop().create_task(self._read(st))
        self._streams.add(st)
        self.streams_opened += 1
        return st

    def _retire(self, st: Stream) -> None:
        st.retiring = True
        if self._stream is st:
            self._stream = None
        self._maybe_finish(st)

    def _maybe_finish(self, st: Stream) -> None:
        """Half-close a retiring stream once it carries nothing."""
        if st.retiring and not st.pending and not st.call.done():
            asyncio.get_running_loop().create_task(self._half_close(st))

    async def _half_close(self, st: Stream) -> None:
        with contextlib.suppress(Exception):
            async with self._lock:  # not while a request is being written
                await st.call.done_writing()

    async def _read(self, st: Stream) -> None:
        reason = "the server closed the stream"
        hint = 0.0
        try:
            async for resp in st.call:
                self._deliver(st, resp)
        except asyncio.CancelledError:
            reason = "the client closed"
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
            hint = retry_after(exc)
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                self._end(st, ScorerCallError(exc.code(), exc.details() or ""))
                return
        if not (st.retiring and not st.pending):  # a stream we did not end ourselves: the replica broke
            self.mark_down(hint)
        self._end(st, ConnectionLost(f"{self.address}: {reason}"))

    def _end(self, st: Stream, exc: Exception) -> None:
        """Forget a stream that ended; what it still carried fails with `exc` (and is re-sent)."""
        if self._stream is st:
            self._stream = None
        self._streams.discard(st)
        pending, st.pending = st.pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(exc)

    def _deliver(self, st: Stream, resp: pb.ScoreStreamResponse) -> None:
        p = st.pending.get(resp.request_id)
        if p is None:
            return  # cancelled or re-sent elsewhere
        self.failures = 0
        if resp.HasField("error"):
            del st.pending[resp.request_id]
            self._maybe_finish(st)
            err = resp.error
            code = _code(err.code)
            if p.future.done():
                return
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                p.future.set_exception(RetryableReply(code, err.message, err.retry_after_seconds))
            else:
                p.future.set_exception(ScorerCallError(code, err.message))
            return
        p.parts.append(resp.result)
        if resp.result.complete:
            del st.pending[resp.request_id]
            self._maybe_finish(st)
            if not p.future.done():
                p.future.set_result(scores_from_parts(p.parts))

    def mark_down(self, retry_after_s: float = 0.0) -> None:
        """Take this replica out of rotation: for the doubling reconnect delay, or for the server's
        retry hint when that is longer (a replica loading its guard or draining says how long)."""
        self.failures += 1
        delay = max(reconnect_delay(self.failures, self.config.reconnect_backoff_max_s), retry_after_s)
        self.down_until = max(self.down_until, time.monotonic() + delay)

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """End every stream and close the channel.

        Each stream is half-closed and the server ends it (after answering what is outstanding), so gRPC
        receives the call's status before we return. Cancelling it instead would leave gRPC's own status
        task waiting on the core: when the caller's loop stops right after (the blocking client's does),
        that task is destroyed pending and the late completion hits a closed loop. A server that does not
        end a stream within `grace_s` gets it cancelled.
        """
        self._closed = True
        streams = list(self._streams)
        for st in streams:
            st.retiring = True
        self._stream = None
        if streams:
            await asyncio.gather(*(self._finish(st, grace_s) for st in streams))
        await self.channel.close()

    async def _finish(self, st: Stream, grace_s: float) -> None:
        reader = st.reader
        if reader is None:
            return
        if not reader.done():
            try:
                await asyncio.wait_for(self._end_stream(st, reader), grace_s)
            except Exception:  # timed out, or the stream broke: cancel below
                pass
            finally:
                if not reader.done():
                    st.call.cancel()
                    reader.cancel()
        with contextlib.suppress(BaseException):
            await reader

    async def _end_stream(self, st: Stream, reader: asyncio.Task[None]) -> None:
        async with self._lock:  # not while a request is being written
            await st.call.done_writing()
        await asyncio.shield(reader)


def retry_after(exc: grpc.aio.AioRpcError) -> float:
    """The server's retry hint (trailing metadata `retry-after-ms`) in seconds; 0 without one."""
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return max(0.0, float(value) / 1000.0)
            except (TypeError, ValueError):
                return 0.0
    return 0.0


def _code(value: int) -> grpc.StatusCode:
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c
    return grpc.StatusCode.UNKNOWN
