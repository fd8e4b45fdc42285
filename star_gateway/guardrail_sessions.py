"""Moderate sessions for callers that resend the whole answer so far on every check (LiteLLM's generic
guardrail): one session per (call id, choice), fed only the part of each text that is new.

Each call's text must extend the text the session has seen; then only the new suffix is pushed, so a
response checked at every one of its n chunks costs O(n) guard work in all, not O(n^2). A text that
does not extend it (an edited or restarted answer) closes the session and opens a new one on the whole
text. A call whose text is unchanged after some text was pushed is taken as the last check: the session is
closed, so the last cut, at the very end, is scored before the answer is given (LiteLLM 1.108.7 makes no
such call after a stream: see docs/gateway.md). Sessions nobody calls for `idle_s` are closed by `reap`,
and at most `max_sessions` are open (the least recently used closes first).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from star_client import AsyncScorerClient, ModerationSession
from star_contract.stop_rule import StopRule
from star_contract.types import Conversation, CutKind, ModerateOptions, ModerationStop
from star_gateway.config import UNBOUNDED
from star_gateway.metrics import GatewayMetrics
from star_gateway.release import words_end


def final_word_cuts(text: str, every: int) -> int:
    """How many word cuts of `text` the scorer has made final: a cut after every `every`-th word,
    final once the next word has begun."""
    words = len(text.split())
    return max(0, words - 1) // every


@dataclass
class Entry:
    """One open session and what it has seen."""

    session: ModerationSession
    options: ModerateOptions
    text: str = ""
    rule: StopRule | None = None
    """The stop rule over the segments seen so far (`seen`): a stop the server's own stop message may
    not have brought yet (the firing cut's segment and the stop come as two replies)."""
    seen: int = 0
    local_stop: ModerationStop | None = None
    used: float = field(default_factory=time.monotonic)
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


Key = tuple[str, int]


def _stop(entry: Entry) -> ModerationStop | None:
    """The session's stop: the server's, or the shared stop rule's over the segments already received
    (the same stop, known as soon as the firing cut's score is in)."""
    session = entry.session
    if session.stop is not None:
        return session.stop
    if entry.rule is None:
        entry.rule = StopRule(entry.options)
    while entry.local_stop is None and entry.seen < len(session.segments):
        entry.local_stop = entry.rule.observe(session.segments[entry.seen])
        entry.seen += 1
    return entry.local_stop


class GuardrailSessions:
    """The open sessions of the guardrail endpoint, keyed by (litellm_call_id, choice index)."""

    def __init__(
        self,
        client: AsyncScorerClient,
        metrics: GatewayMetrics,
        idle_s: float,
        max_sessions: int,
        wait_s: float,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self.wait_s = wait_s
        self.entries: OrderedDict[Key, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    async def check(
        self, key: Key, conversation: Conversation, options: ModerateOptions, text: str
    ) -> ModerationStop | None:
        """Score `text`, the whole answer so far, and return the session's stop (None: no stop so far).
        Scorer errors propagate."""
        entry = self.entries.get(key)
        if entry is not None and (
            entry.options != options
            or (not text.startswith(entry.text))
            or (entry.closed and text != entry.text)
        ):
            await self._drop(key)
            entry = None
        if entry is None:
            entry = await self._open(key, conversation, options)
        self.entries.move_to_end(key)
        entry.used = time.monotonic()
        async with entry.lock:
            session = entry.session
            if _stop(entry) is not None or entry.closed:
                return _stop(entry)
            new = text[len(entry.text) :]
            if new:
                entry.text = text
                self.metrics.guardrail_pushed.inc(len(new))
                await session.push(new)
                await self._wait_for_cuts(entry)
            elif entry.text:
                entry.closed = True  # the repeated full text: the stream is over
                await session.close()
            entry.used = time.monotonic()  # idle from the end of its last call, not the start
            return _stop(entry)

    def held_chars(self, key: Key, hold_back_words: int) -> int:
        """How many trailing characters of the session's text the caller should withhold from its client
        for now (LiteLLM's `stream_holdback_chars`): those past the release bound, `hold_back_words`
        words beyond the end of the last cut scored safe (star_gateway/release.py's rule). 0 once the
        session has ended, or with no bound (-1)."""
        entry = self.entries.get(key)
        if entry is None or entry.closed or hold_back_words == UNBOUNDED:
            return 0
        safe_end = entry.rule.safe_end if entry.rule is not None else 0
        return len(entry.text) - words_end(entry.text, safe_end, hold_back_words)

    async def _wait_for_cuts(self, entry: Entry) -> None:
        """Until the scorer has answered for the cuts this text made final (or stopped); word cuts only:
        for guard-token cuts the answer uses the scores that have arrived."""
        session = entry.session
        if entry.options.kind is not CutKind.WORDS:
            return
        want = final_word_cuts(entry.text, entry.options.every)
        deadline = time.monotonic() + self.wait_s
        while len(session.segments) < want and _stop(entry) is None and not session.complete.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no score for {want - len(session.segments)} cut(s) in {self.wait_s:g} s")
            await asyncio.sleep(0.002)
        if len(session.segments) < want and _stop(entry) is None:
            session.raise_for_failure()  # the stream ended early: a lost replica is no "NONE"

    async def _open(self, key: Key, conversation: Conversation, options: ModerateOptions) -> Entry:
        while len(self.entries) >= self.max_sessions:
            await self._drop(next(iter(self.entries)))
        session = self.client.moderate(conversation, options)
        await session.__aenter__()
        self.metrics.sessions.labels("guardrail").inc()
        entry = Entry(session, options)
        self.entries[key] = entry
        return entry

    async def _drop(self, key: Key) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        self.metrics.sessions.labels("guardrail").dec()
        with contextlib.suppress(BaseException):
            await entry.session.__aexit__(None, None, None)

    async def reap(self, now: float | None = None) -> int:
        """Close the sessions idle for `idle_s`; how many were closed."""
        now = time.monotonic() if now is None else now
        # a session a call is using is never idle, however long its scores take
        idle = [k for k, e in self.entries.items() if now - e.used >= self.idle_s and not e.lock.locked()]
        for key in idle:
            await self._drop(key)
        return len(idle)

    async def reaper(self) -> None:
        """Reap forever, a few times per idle period (cancel it to stop)."""
        while True:
            await asyncio.sleep(max(0.05, min(self.idle_s / 4, 5.0)))
            await self.reap()

    async def close(self) -> None:
        for key in list(self.entries):
            await self._drop(key)
