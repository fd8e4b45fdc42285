"""When a streamed chunk may reach the client: the hold-back window.

The gateway pushes each upstream chunk's text to the scorer at once but forwards the chunk itself only
when all of its text lies within the *release bound*:

- `hold_back_words = H >= 0`: the bound is H whitespace-separated words past the end of the last cut
  scored safe (a word still being written counts as one). H = 0 forwards only text a safe score covers;
  whatever the scorer's latency, the client never sees more than H words past the stop offset.
- `hold_back_words = -1`: no bound; each chunk is forwarded as soon as it has been pushed.

Once the session has ended without a stop, everything is released. Chunks are forwarded whole and as
received (byte for byte), in order; a chunk that straddles the stop offset is cut there
(`stop_release`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from star_contract.stop_rule import StopRule
from star_contract.types import ModerateOptions, ModerationStop, Segment
from star_gateway.config import UNBOUNDED
from star_gateway.sse import Event


def words_end(text: str, start: int, n: int) -> int:
    """The offset after the n-th whitespace-separated word of text[start:] (len(text) if fewer)."""
    i = start
    for _ in range(n):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return len(text)
        while i < len(text) and not text[i].isspace():
            i += 1
    return i


@dataclass(frozen=True)
class Held:
    """A chunk waiting for release; its text is text[start:end] of the response."""

    event: Event
    start: int
    end: int


class ReleaseGate:
    """The chunks of one response, released as the moderation's scores allow."""

    def __init__(self, options: ModerateOptions, hold_back_words: int) -> None:
        self.hold_back_words = hold_back_words
        self.text = ""
        self.released = 0
        """Characters of the response forwarded so far."""
        self._rule = StopRule(options)
        self._pending: deque[Held] = deque()
        self._finished = False

    def add(self, event: Event, text: str) -> None:
        """An upstream chunk adding `text` to the response (possibly '')."""
        start = len(self.text)
        self.text += text
        self._pending.append(Held(event, start, len(self.text)))

    def score(self, segment: Segment) -> None:
        """A cut's score arrived (the server decides stops; the gate only tracks the safe end)."""
        self._rule.observe(segment)

    def finish(self) -> None:
        """The session ended without a stop: everything may go."""
        self._finished = True

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def safe_end(self) -> int:
        return self._rule.safe_end

    def bound(self) -> int:
        """How far into the response the client may read now."""
        if self._finished or self.hold_back_words == UNBOUNDED:
            return len(self.text)
        return words_end(self.text, self.safe_end, self.hold_back_words)

    def release(self) -> list[Event]:
        """The chunks that may go now, in order."""
        bound, out = self.bound(), []
        while self._pending and self._pending[0].end <= bound:
            held = self._pending.popleft()
            out.append(held.event)
            self.released = held.end
        return out

    @property
    def held(self) -> int:
        """Chunks waiting."""
        return len(self._pending)

    def stop_release(self, stop: ModerationStop) -> tuple[list[Event], Held | None]:
        """At a stop: the whole chunks still held that end at or before the stop offset, and the chunk
        that straddles it (to be cut at `stop.offset`), if any. Everything else is dropped."""
        whole: list[Event] = []
        straddling = None
        while self._pending and self._pending[0].start < stop.offset:
            held = self._pending.popleft()
            if held.end <= stop.offset:
                whole.append(held.event)
                self.released = held.end
            else:
                straddling = held
                self.released = stop.offset
                break
        self._pending.clear()
        return whole, straddling
