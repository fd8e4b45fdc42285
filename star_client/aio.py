"""The asyncio scorer client: one channel and one multiplexed ScoreStream per replica."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from star_client.channel import Replica, retry_after
from star_client.config import ClientConfig
from star_client.errors import RETRYABLE, ConnectionLost, RetryableReply, ScorerCallError
from star_client.membership import STARVING_GAP_S, Membership, Resolver, system_resolver
from star_client.moderation import ModerationSession
from star_contract import convert
from star_contract.errors import InvalidRequest
from star_contract.types import Conversation, GuardInfo, ModerateOptions, ScoreRequest, StarScores, Verdict
from star_proto import scorer_pb2 as pb

T = TypeVar("T")


def parse_addresses(addresses: str | Sequence[str]) -> list[str]:
    """`"a:1,b:2"` or `["a:1", "b:2"]` -> `["a:1", "b:2"]`."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    out = [a.strip() for a in items if a.strip()]
    if not out:
        raise ValueError("give at least one scorer address (host:port)")
    return out


class AsyncScorerClient:
    """Calls one or several scorer replicas.

    `score` multiplexes requests over one long-lived ScoreStream per replica, spreads them round-robin
    over the replicas that are up, matches answers by request id, retries RESOURCE_EXHAUSTED and
    UNAVAILABLE with backoff and jitter, and re-sends what a replica that went away left unanswered.
    """

    def __init__(
        self,
        addresses: str | list[str] | None = None,
        config: ClientConfig | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        """`resolver(host, port)` answers for `dns:///` names (default: the system's getaddrinfo)."""
        config = config or ClientConfig()
        if addresses is not None:
            config = replace(config, addresses=tuple(parse_addresses(addresses)))
        if not config.addresses:
            raise ValueError("give at least one scorer address (host:port)")
        self.config = config
        token = config.token()
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._members = Membership(config.addresses, resolver or system_resolver, config.resolve_every_s)
        self._replicas: list[Replica] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._rr = itertools.count()
        self._ids = itertools.count()
        self._window: asyncio.Semaphore | None = None
        self._started = False
        self._closed = False
        self._start_lock: asyncio.Lock | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._rand = random.Random()

    async def __aenter__(self) -> AsyncScorerClient:
        await self._ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self._closed = False
            self._refresh_lock = asyncio.Lock()
            self._window = asyncio.Semaphore(self.config.max_in_flight)
            await self._refresh(starving=True)  # no replica yet: calls wait for one until their deadline
            self._started = True

    async def _refresh(self, starving: bool) -> None:
        """Resolve the `dns:///` names again when due; add replicas that appeared, retire those that
        went away (their outstanding requests get `CLOSE_GRACE_S` to finish, then go elsewhere)."""
        if self._refresh_lock is None or not self._members.due(time.monotonic(), starving):
            return
        async with self._refresh_lock:
            if not self._members.due(time.monotonic(), starving):
                return  # another caller resolved meanwhile
            addresses = await self._members.resolve()
            if addresses is None or self._closed:
                return
            known = {r.address: r for r in self._replicas}
            self._replicas = [known.get(a) or Replica(a, self.config, self._metadata) for a in addresses]
            for gone in set(known) - set(addresses):
                task = asyncio.ensure_future(known[gone].close())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self._replicas]

    # -- public API --
    async def info(self) -> GuardInfo:
        """What the scorer serves (guard, fingerprint, limits)."""
        req = pb.GetInfoRequest()
        resp = await self._unary(lambda r, t: r.stub.GetInfo(req, timeout=t, metadata=r.metadata))
        return convert.info_from_pb(resp)

    async def score(self, request: ScoreRequest, priority: int = 0) -> StarScores:
        """STAR scores of one response; higher `priority` is served first."""
        await self._ensure_started()
        req_pb = convert.score_request_to_pb(request, priority)
        assert self._window is not None
        async with self._window:
            return await self._score_pb(req_pb)

    async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
        """Score many responses, keeping at most `max_in_flight` outstanding; results in input order."""
        tasks = [asyncio.ensure_future(self.score(r, priority)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:
                t.cancel()

    async def judge(
        self, conversations: Sequence[Conversation], p_unsafe_only: bool = False
    ) -> list[Verdict]:
        """Whole-response verdicts, in input order; `p_unsafe_only`: the probabilities alone, without the
        guard's verdict text and categories (about half the work on a local guard)."""
        req = convert.judge_request_to_pb(conversations, p_unsafe_only)
        resp = await self._unary(lambda r, t: r.stub.Judge(req, timeout=t, metadata=r.metadata))
        return [convert.verdict_from_pb(v) for v in resp.verdicts]

    def moderate(
        self, conversation: Conversation, options: ModerateOptions | None = None
    ) -> ModerationSession:
        """A live-moderation session on one replica: `async with client.moderate(conversation) as s:`."""

        holder: list[Replica] = []

        async def open_call(after_loss: bool) -> Any:
            await self._ensure_started()
            if after_loss and holder:
                holder[0].mark_down()  # the replica that lost the session: try the others first
            replica = await self._pick(time.monotonic() + self.config.deadline_s)
            holder[:] = [replica]
            # No deadline on the stream itself: a session lives as long as the answer it moderates
            # (minutes for a long generation); deadline_s bounds the open (ModerationSession) instead.
            return replica.stub.Moderate(metadata=self._metadata)

        return ModerationSession(
            open_call, conversation, options or ModerateOptions(), self.config.deadline_s
        )

    async def close(self) -> None:
        self._closed = True
        for r in self._replicas:
            await r.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        self._replicas = []
        self._started = False

    # -- internals --
    async def _pick(self, deadline: float, tries: _Tries | None = None) -> Replica:
        """The next replica that is up, round-robin; waits for one to come back (or to be found under a
        `dns:///` name) when none is, and raises once none will be before `deadline`."""
        while True:
            if self._closed:
                raise ScorerCallError(grpc.StatusCode.CANCELLED, "the client is closed")
            await self._refresh(starving=False)
            now = time.monotonic()
            n = len(self._replicas)
            start = next(self._rr)
            for k in range(n):
                r = self._replicas[(start + k) % n]
                if r.usable(now):
                    return r
            await self._refresh(starving=True)
            if any(r.usable(time.monotonic()) for r in self._replicas):
                continue
            wake = min((r.down_until for r in self._replicas), default=now + STARVING_GAP_S)
            if self._members.names:
                wake = min(wake, self._members.resolved_at + STARVING_GAP_S)
            if wake >= deadline:
                if tries is not None:
                    raise tries.expired()
                reach = ", ".join(self.config.addresses)
                raise ScorerCallError(grpc.StatusCode.UNAVAILABLE, f"cannot reach {reach}")
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    async def _score_pb(self, req_pb: pb.ScoreRequest) -> StarScores:
        loop = asyncio.get_running_loop()
        tries = _Tries(self.config, self._rand, self.addresses or list(self.config.addresses))
        while True:
            replica = await self._pick(tries.deadline, tries)
            rid = str(next(self._ids))
            fut: asyncio.Future[StarScores] = loop.create_future()
            try:
                await replica.submit(rid, req_pb, fut)
                return await asyncio.wait_for(fut, tries.remaining())
            except ConnectionLost as exc:
                if fut.done() and not fut.cancelled():
                    fut.exception()  # the reader failed it too: retrieved here, re-sent below
                tries.lost(str(exc))  # the replica is marked down; _pick waits for one that is up
            except RetryableReply as exc:
                if exc.code is grpc.StatusCode.UNAVAILABLE:
                    replica.mark_down(exc.retry_after_s)  # loading or draining: try another one
                    tries.refused(exc.code, str(exc), 0.0, backoff=False)
                else:
                    await tries.wait_after(exc.code, str(exc), exc.retry_after_s)
            except ScorerCallError as exc:
                if exc.code is grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequest(exc.details) from None
                raise
            except TimeoutError:
                await replica.cancel(rid)
                raise tries.expired() from None
            except BaseException:
                await asyncio.shield(replica.cancel(rid))
                raise

    async def _unary(self, call: Callable[[Replica, float], Awaitable[T]]) -> T:
        """A unary call with failover over replicas, retried on UNAVAILABLE and RESOURCE_EXHAUSTED until
        the deadline (a replica that is down or loading is skipped until it is expected back)."""
        await self._ensure_started()
        tries = _Tries(self.config, self._rand, self.addresses or list(self.config.addresses))
        while True:
            replica = await self._pick(tries.deadline, tries)
            try:
                return await call(replica, max(0.001, tries.remaining()))
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code is grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequest(details) from None
                if code is grpc.StatusCode.DEADLINE_EXCEEDED and tries.remaining() <= 0:
                    raise tries.expired() from None
                if code not in RETRYABLE:
                    raise ScorerCallError(code, details) from None
                if code is grpc.StatusCode.UNAVAILABLE:
                    replica.mark_down(retry_after(exc))
                    tries.refused(code, f"{replica.address}: {details}", 0.0, backoff=False)
                else:
                    await tries.wait_after(code, details, retry_after(exc))


class _Tries:
    """One call's retry state: its deadline, how many refusals it has seen, the last error.

    Every retryable outcome (a connection lost, UNAVAILABLE, RESOURCE_EXHAUSTED) costs time, never the
    call, until the deadline; `ClientConfig.retries`, when set, also caps the refusals."""

    def __init__(self, config: ClientConfig, rand: random.Random, addresses: Sequence[str]) -> None:
        self.config = config
        self.addresses = ", ".join(addresses)
        self.rand = rand
        self.start = time.monotonic()
        self.deadline = self.start + config.deadline_s
        self.attempts = 0
        self.code: grpc.StatusCode | None = None
        self.last = "no answer within the deadline"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def lost(self, message: str) -> None:
        self.code, self.last = grpc.StatusCode.UNAVAILABLE, message
        if self.remaining() <= 0:
            raise self.expired()

    def refused(self, code: grpc.StatusCode, message: str, retry_after_s: float, backoff: bool) -> float:
        """Count one refusal; the seconds to wait before the next try (raises when none is left)."""
        self.attempts += 1
        self.code, self.last = code, message
        cap = self.config.retries
        if cap is not None and self.attempts > cap:
            raise ScorerCallError(code, f"{message} (gave up after {cap} retries)")
        wait = max(retry_after_s, self.config.backoff(self.attempts, self.rand.random()) if backoff else 0.0)
        if self.remaining() - wait <= 0:
            raise self.expired()
        return wait

    async def wait_after(self, code: grpc.StatusCode, message: str, retry_after_s: float) -> None:
        """A refusal that calls for backing off (overload): sleep, honouring the server's hint."""
        await asyncio.sleep(self.refused(code, message, retry_after_s, backoff=True))

    def expired(self) -> ScorerCallError:
        """The error of a call whose deadline passed: the last status it saw, and for how long."""
        waited = time.monotonic() - self.start
        code = self.code or grpc.StatusCode.DEADLINE_EXCEEDED
        if self.code is None:
            msg = f"no answer within the {self.config.deadline_s:g} s deadline"
        elif code is grpc.StatusCode.UNAVAILABLE:
            msg = f"cannot reach {self.addresses} in {waited:.1f} s "
            msg += f"({self.attempts} retries; last: {self.last})"
        else:
            msg = f"{self.last} (still {code.name} after {waited:.1f} s and {self.attempts} retries)"
        return ScorerCallError(code, msg)
