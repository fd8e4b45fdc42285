"""The OpenAI-shaped pieces the gateway writes itself: a chunk cut at the stop, the final
`content_filter` chunk and its `star_moderation` field, and the same for whole (non-streamed) answers.

The extension field, on the final chunk (streaming) or on the answer and its choice (not streaming):

    "star_moderation": {"stopped": true, "offset": 114, "cut": 137, "p_safe": 0.1027}
    "star_moderation": {"stopped": true, "unavailable": true, "reason": "..."}   (fail closed)

`offset` is where the unsafe stretch begins (the text the client got ends there, or at most the
hold-back window past it), `cut` the end of the cut that fired the rule, `p_safe` its score.
"""

from __future__ import annotations

import copy
from typing import Any

from star_contract.types import ModerationStop
from star_gateway.options import FIELD

CONTENT_FILTER = "content_filter"


def stop_info(stop: ModerationStop) -> dict[str, Any]:
    return {"stopped": True, "offset": stop.offset, "cut": stop.cut, "p_safe": stop.p_safe}


def unavailable_info(reason: str) -> dict[str, Any]:
    return {"stopped": True, "unavailable": True, "reason": reason}


def _choice0(chunk: dict[str, Any]) -> dict[str, Any] | None:
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and (choice.get("index") or 0) == 0:
            return choice
    return None


def cut_chunk(chunk: dict[str, Any], keep: int) -> dict[str, Any]:
    """A copy of a streamed chunk whose text keeps only its first `keep` characters."""
    out = copy.deepcopy(chunk)
    choice = _choice0(out)
    if choice is not None:
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            delta["content"] = delta["content"][:keep]
        elif isinstance(choice.get("text"), str):
            choice["text"] = choice["text"][:keep]
        choice["finish_reason"] = None
    return out


def final_chunk(template: dict[str, Any] | None, chat: bool, info: dict[str, Any]) -> dict[str, Any]:
    """The last chunk of a stopped stream: no text, `finish_reason: content_filter`, and `info` in the
    `star_moderation` field; id, model and created copied from the stream's chunks."""
    base = {k: v for k, v in (template or {}).items() if k in ("id", "object", "created", "model")}
    base.setdefault("object", "chat.completion.chunk" if chat else "text_completion")
    choice: dict[str, Any] = {"index": 0, "finish_reason": CONTENT_FILTER, "logprobs": None}
    if chat:
        choice["delta"] = {}
    else:
        choice["text"] = ""
    return {**base, "choices": [choice], FIELD: info}


def filter_choice(choice: dict[str, Any], keep: int, info: dict[str, Any]) -> None:
    """Cut a whole answer's choice to its first `keep` characters, in place, as filtered content."""
    message = choice.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        message["content"] = message["content"][:keep]
    elif isinstance(choice.get("text"), str):
        choice["text"] = choice["text"][:keep]
    choice["finish_reason"] = CONTENT_FILTER
    choice[FIELD] = info


def choice_text(choice: dict[str, Any]) -> str:
    """The text of a whole answer's choice (chat message content or completion text)."""
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""
