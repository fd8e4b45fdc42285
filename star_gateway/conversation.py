"""What the guard sees of a request: the conversation before the answer, from an OpenAI body."""

from __future__ import annotations

from typing import Any

from star_contract.types import Conversation, Message
from star_gateway.errors import bad_request

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""OpenAI roles -> the guard's; tool and function messages are left out (no guard template has them)."""


def content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def chat_conversation(messages: Any) -> Conversation:
    """The chat's messages with an empty assistant answer after them (400 when they are malformed)."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a role", "messages")
        role = _ROLES.get(m["role"])
        if role is not None:
            out.append(Message(role, content_text(m.get("content"))))
    return Conversation((*out, Message("assistant", "")))


def completion_conversation(prompt: Any) -> Conversation:
    """A completion prompt as the user's turn, with an empty answer."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("prompt must be a string (one prompt per moderated request)", "prompt")
    return Conversation.from_pair(prompt, "")


def request_conversation(body: dict[str, Any], chat: bool) -> Conversation:
    return chat_conversation(body.get("messages")) if chat else completion_conversation(body.get("prompt"))


def last_user_text(conversation: Conversation) -> str | None:
    for m in reversed(conversation.messages):
        if m.role == "user":
            return m.content
    return None
