"""Server-sent events as OpenAI-compatible servers stream them: split a byte stream into events, each
kept as the exact bytes received (so the gateway forwards them unchanged) with its `data` parsed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"
_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")


@dataclass(frozen=True)
class Event:
    """One event: `raw` as received (separator included); `data` its data lines joined ('' if none)."""

    raw: bytes
    data: str

    @property
    def done(self) -> bool:
        return self.data.strip() == DONE

    def json(self) -> Any:
        """The parsed data (None for [DONE], comments and data that is not JSON)."""
        if not self.data or self.done:
            return None
        try:
            return json.loads(self.data)
        except ValueError:
            return None


def parse_event(raw: bytes) -> Event:
    lines = raw.decode("utf-8", errors="replace").splitlines()
    data = [ln[5:].removeprefix(" ") for ln in lines if ln.startswith("data:")]
    return Event(raw, "\n".join(data))


async def events(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """The events of a byte stream, whatever its network chunking (a trailing partial event too)."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        while True:
            cut = min((i + len(s) for s in _SEPARATORS if (i := buf.find(s)) >= 0), default=-1)
            if cut < 0:
                break
            yield parse_event(buf[:cut])
            buf = buf[cut:]
    if buf.strip():
        yield parse_event(buf)


def encode(payload: Any) -> bytes:
    """One `data:` event carrying `payload` as JSON (or the literal [DONE])."""
    text = payload if payload == DONE else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
