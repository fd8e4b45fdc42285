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

from star_client.channel import Replica, reconnect_delay
from star_client.config import ClientConfig
from star_client.errors import RETRYABLE, ConnectionLost, RetryableReply, ScorerCallError
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


async def resolve(addresses: list[str]) -> list[str]:
    """Expand `dns:///name:port` into one `ip:port` per address the name has (headless Services)."""
    loop = asyncio.get_running_loop()
    out: list[str] = []
    for a in addresses:
        if not a.startswith("dns:"):
            out.append(a)
            continue
        hostport = a.split("///", 1)[-1] if "///" in a else a[4:]
        host, _, port = hostport.rpartition(":")
        infos = await loop.getaddrinfo(host, int(port), type=0, proto=6)
        ips = sorted({str(i[4][0]) for i in infos})
        out.extend(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips)
    return out


class AsyncScorerClient:
    """Calls one or several scorer replicas.

    `score` multiplexes requests over one long-lived ScoreStream per replica, spreads them round-robin
    over the replicas that are up, matches answers by request id, retries RESOURCE_EXHAUSTED and
    UNAVAILABLE with backoff and jitter, and re-sends what a replica that went away left unanswered.
    """

    def __init__(self, addresses: str | list[str] | None = None, config: ClientConfig | None = None) -> None:
        config = config or ClientConfig()
        if addresses is not None:
            config = replace(config, addresses=tuple(parse_addresses(addresses)))
        if not config.addresses:
            raise ValueError("give at least one scorer address (host:port)")
        self.config = config
        token = config.token()
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._replicas: list[Replica] = []
        self._rr = itertools.count()
        self._ids = itertools.count()
        self._window: asyncio.Semaphore | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
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
            addresses = await resolve(list(self.config.addresses))
            if not addresses:
                raise ValueError(f"no addresses found for {self.config.addresses}")
            self._replicas = [Replica(a, self.config, self._metadata) for a in addresses]
            self._window = asyncio.Semaphore(self.config.max_in_flight)
            self._started = True

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

    async def judge(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        """Whole-response verdicts, in input order."""
        req = convert.judge_request_to_pb(conversations)
        resp = await self._unary(lambda r, t: r.stub.Judge(req, timeout=t, metadata=r.metadata))
        return [convert.verdict_from_pb(v) for v in resp.verdicts]

    def moderate(
        self, conversation: Conversation, options: ModerateOptions | None = None
    ) -> ModerationSession:
        """A live-moderation session on one replica: `async with client.moderate(conversation) as s:`."""

        async def open_call() -> Any:
            await self._ensure_started()
            replica = await self._pick(time.monotonic() + self.config.deadline_s)
            return replica.stub.Moderate(metadata=self._metadata, timeout=self.config.deadline_s)

        return ModerationSession(open_call, conversation, options or ModerateOptions())

    async def close(self) -> None:
        for r in self._replicas:
            await r.close()
        self._replicas = []
        self._started = False

    # -- internals --
    def _unreachable(self) -> str:
        return "cannot reach " + ", ".join(r.address for r in self._replicas)

    async def _pick(self, deadline: float) -> Replica:
        """The next replica that is up, round-robin; waits for one to come back when none is."""
        while True:
            now = time.monotonic()
            n = len(self._replicas)
            start = next(self._rr)
            for k in range(n):
                r = self._replicas[(start + k) % n]
                if r.usable(now):
                    return r
            if not self._replicas:
                raise ScorerCallError(grpc.StatusCode.CANCELLED, "the client is closed")
            wake = min(r.down_until for r in self._replicas)
            if wake >= deadline:
                raise ScorerCallError(grpc.StatusCode.UNAVAILABLE, self._unreachable())
            await asyncio.sleep(max(0.0, wake - now))

    async def _score_pb(self, req_pb: pb.ScoreRequest) -> StarScores:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.config.deadline_s
        attempt = 0
        last = "no attempt finished"
        lost = False  # whether the last attempt ended with the connection gone
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if lost:
                    raise ScorerCallError(grpc.StatusCode.UNAVAILABLE, f"{self._unreachable()} ({last})")
                raise ScorerCallError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline passed ({last})")
            replica = await self._pick(deadline)
            rid = str(next(self._ids))
            fut: asyncio.Future[StarScores] = loop.create_future()
            try:
                await replica.submit(rid, req_pb, fut)
                return await asyncio.wait_for(fut, deadline - time.monotonic())
            except ConnectionLost as exc:
                last, lost = str(exc), True
                continue
            except RetryableReply as exc:
                attempt += 1
                last = f"{exc.code.name}: {exc}"
                if attempt > self.config.retries:
                    raise ScorerCallError(exc.code, str(exc)) from None
                await asyncio.sleep(max(exc.retry_after_s, self.config.backoff(attempt, self._rand.random())))
            except ScorerCallError as exc:
                if exc.code is grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequest(exc.details) from None
                raise
            except TimeoutError:
                await replica.cancel(rid)
                msg = f"no answer within the deadline ({last})"
                raise ScorerCallError(grpc.StatusCode.DEADLINE_EXCEEDED, msg) from None
            except BaseException:
                await asyncio.shield(replica.cancel(rid))
                raise

    async def _unary(self, call: Callable[[Replica, float], Awaitable[T]]) -> T:
        """A unary call with failover over replicas and retries on retryable statuses."""
        await self._ensure_started()
        deadline = time.monotonic() + self.config.deadline_s
        attempt = 0
        while True:
            replica = await self._pick(deadline)
            try:
                return await call(replica, max(0.001, deadline - time.monotonic()))
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code is grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequest(exc.details() or "") from None
                if code not in RETRYABLE:
                    raise ScorerCallError(code, exc.details() or "") from None
                attempt += 1
                if code is grpc.StatusCode.UNAVAILABLE:
                    replica.failures += 1
                    replica.down_until = time.monotonic() + reconnect_delay(
                        replica.failures, self.config.reconnect_backoff_max_s
                    )
                if attempt > self.config.retries + len(self._replicas) or time.monotonic() >= deadline:
                    raise ScorerCallError(code, exc.details() or "") from None
                await asyncio.sleep(_retry_after(exc) or self.config.backoff(attempt, self._rand.random()))


def _retry_after(exc: grpc.aio.AioRpcError) -> float:
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return float(value) / 1000.0
            except (TypeError, ValueError):
                return 0.0
    return 0.0
