"""A scoring backend whose forwards run on a remote engine fleet: one request per cut.

The scorer keeps the guard's tokenizer and template (no weights): it plans the cuts, renders the guard
prompt of every cut exactly as the local engine does, and asks the engine for the log-probabilities of
the two verdict tokens at the next position. P(safe) = sigmoid((logprob_safe - logprob_unsafe) / T):
log-probs are the logits minus one shared log-normaliser, so their difference is the logit difference
the local engine uses. The engine's prefix cache makes the per-cut requests of one response cheap.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from scorer_server.backends.base import ScorePart, Session
from scorer_server.backends.http import Dispatcher, RetryPolicy
from scorer_server.backends.prompts import PromptGuard
from scorer_server.engine.prepare import prepare
from scorer_server.guards.loader import describe_guard
from scorer_server.guards.verdict import classes_p_safe, read_verdict, safe_mask
from scorer_server.limits import Limits
from scorer_server.tenants import ANONYMOUS
from star_contract.errors import InvalidRequest, NotReady
from star_contract.types import (
    Convention,
    Conversation,
    GuardInfo,
    ModerateOptions,
    ScoreRequest,
    Segment,
    Verdict,
)


@dataclass(frozen=True)
class RemoteConfig:
    """Where a remote backend sends its forwards and how hard it may push."""

    urls: tuple[str, ...]
    """Engine base URLs (e.g. http://vllm-0:8000); requests rotate over them."""
    max_concurrency: int = 64
    """Requests in flight to the whole fleet at once (an asyncio.Semaphore)."""
    timeout_s: float = 60.0
    """Per-request timeout."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_after_s: float = 1.0
    """The retry hint callers get (UNAVAILABLE) when the engine cannot be reached."""
    model: str | None = None
    """The served model name (vLLM's --served-model-name); None lets the engine use its only model."""
    limits: Limits = field(default_factory=Limits)
    cache_salt: str = "request"
    """'request': each Score request's prompts carry their own random salt for the engine's prefix
    cache (docs/security.md); 'off': none."""


@dataclass(frozen=True)
class Readout:
    """What one engine request returns."""

    logprobs: tuple[float, ...]
    """The verdict classes' log-probs at the first generated position (in `preset.classes` order)."""
    text: str = ""
    """Generated text (Judge only)."""


class RemoteBackend(ABC):
    """Shared planning, fan-out and cancellation; subclasses speak one engine's HTTP API."""

    kind = "remote"

    def __init__(self, guard: PromptGuard, config: RemoteConfig) -> None:
        self.guard = guard
        self.config = config
        self.dispatcher = Dispatcher(
            list(config.urls), config.max_concurrency, config.retry, retry_after_s=config.retry_after_s
        )
        self._started = False

    # -- subclass hooks --
    @abstractmethod
    async def _open(self) -> None:
        """Create HTTP sessions."""

    @abstractmethod
    async def _close(self) -> None:
        """Release HTTP sessions."""

    @abstractmethod
    async def _readout(self, url: str, prompt: str, max_new_tokens: int, salt: str | None = None) -> Readout:
        """One request: the verdict classes' log-probs after `prompt` (and the decoded text when
        `max_new_tokens` > 1). `salt` keys the engine's prefix cache where it has one (vLLM's
        cache_salt): only prompts with the same salt share cached blocks. Raises RemoteOverloaded for a
        busy engine, ConnectionError when unreachable, RemoteEngineError for an unusable answer."""

    def _salt(self) -> str | None:
        """A fresh salt for one Score request or one Judge conversation (None with cache_salt 'off')."""
        return secrets.token_hex(16) if self.config.cache_salt == "request" else None

    # -- ScoringBackend --
    def info(self) -> GuardInfo:
        return describe_guard(
            self.guard,
            self.kind,
            max_conversation_tokens=self.config.limits.max_conversation_tokens,
            max_cuts=self.config.limits.max_cuts,
        )

    async def reachable(self) -> bool:
        """Whether any engine answers HTTP (GET /health, which vLLM and TGI both serve; any answer below
        500 counts: the server is there). The server's engine watch turns health on this."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for url in self.config.urls:
                try:
                    async with session.get(url.rstrip("/") + "/health") as resp:
                        if resp.status < 500:
                            return True
                except (aiohttp.ClientError, TimeoutError, OSError):
                    continue
        return False

    async def start(self) -> None:
        await self._open()
        self._started = True

    async def stop(self, grace_s: float) -> None:
        self._started = False
        await self._close()

    def prompts(self, request: ScoreRequest) -> tuple[list[int], list[str]]:
        """The cuts of a request and the rendered guard prompt of each."""
        if request.convention is Convention.PUBLISHED:
            raise InvalidRequest(
                "the published STAR convention needs the whole vocabulary's logits at each verdict "
                "position, which remote engines do not return; serve it with --backend local"
            )
        g = self.guard
        prep = prepare(request, g.template, g.tokenizer, g.encode, self.config.limits)
        return prep.cuts, prep.texts

    async def score(
        self, request: ScoreRequest, priority: int = 0, tenant: str = ANONYMOUS
    ) -> AsyncIterator[ScorePart]:
        """Yield segments as their requests finish (each part sorted by offset). `priority` and `tenant`
        are not used: the engine fleet's own scheduler orders the requests."""
        if not self._started:
            raise NotReady("the remote backend is not started")
        cuts, texts = self.prompts(request)
        t = request.temperature
        safe = safe_mask(self.guard.preset, request.safe_classes) if request.safe_classes else ()
        safe = safe or self.guard.safe_classes
        salt = self._salt()  # the cuts of one response share the engine's cache, other requests do not
        tasks = {
            asyncio.ensure_future(
                self.dispatcher.call(functools.partial(self._readout, prompt=p, max_new_tokens=1, salt=salt))
            ): end
            for end, p in zip(cuts, texts, strict=True)
        }
        pending = set(tasks)
        count = 0
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                ready = sorted((tasks[d], d.result().logprobs) for d in done)
                segments = tuple(Segment(end=end, p_safe=classes_p_safe(lp, safe, t)) for end, lp in ready)
                count += 1
                last = not pending
                yield ScorePart(segments, count - 1, count if last else 0, last)
        finally:
            for task in pending:
                task.cancel()
            # Retrieve every outcome, so a failure beside the one raised is not reported as unhandled.
            await asyncio.gather(*tasks, return_exceptions=True)

    def open_session(
        self, conversation: Conversation, options: ModerateOptions, tenant: str = ANONYMOUS
    ) -> Session:
        raise InvalidRequest(
            "live moderation keeps the guard's keys and values between deltas, which remote engines do "
            "not expose; serve it with --backend local"
        )

    async def judge(self, conversations: list[Conversation], decode: bool = True) -> list[Verdict]:
        if not self._started:
            raise NotReady("the remote backend is not started")
        preset = self.guard.preset
        steps = max(1, preset.judge_max_new_tokens) if decode else 1  # 1: the verdict's log-probs only
        prompts = [self.guard.template.render(c) for c in conversations]
        for i, p in enumerate(prompts):
            self.config.limits.check_tokens(len(self.guard.encode(p)), f"conversations[{i}]")
        outs = await asyncio.gather(
            *(
                self.dispatcher.call(
                    functools.partial(self._readout, prompt=p, max_new_tokens=steps, salt=self._salt())
                )
                for p in prompts
            )
        )
        safe = self.guard.safe_classes
        return [
            read_verdict(classes_p_safe(out.logprobs, safe), out.text if decode else "", preset)
            for out in outs
        ]
