"""Input moderation: the last user message judged before the upstream is called, as the guard judges a
prompt (Judge on the conversation up to that message: the guard's own prompt classification)."""

from __future__ import annotations

from star_client import AsyncScorerClient
from star_contract.types import Conversation


async def input_p_unsafe(client: AsyncScorerClient, conversation: Conversation) -> float | None:
    """The guard's P(unsafe) for the last user message (None when the request has none)."""
    messages = conversation.messages[:-1]  # without the empty answer
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            if not messages[i].content.strip():
                return None
            verdicts = await client.judge([Conversation(messages[: i + 1])])
            return verdicts[0].p_unsafe
    return None
